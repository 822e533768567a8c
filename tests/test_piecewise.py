"""The exact piecewise-affine flow against independent truths (numpy and scipy only)."""

import functools

import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.optimize

from implicit_flow.exact._piecewise import (
    _first_crossing,
    _Piece,
    piecewise_affine_flow,
)


_HORIZON = 200.0
_N_RANDOM = 24


def _reference(x, y, v, hidden0, ts, *, bias, negative_slope, mean, sliding):
    """Integrates the flow with DOP853, restarting at every kink crossing (an event).

    It stops at `_HORIZON`, where the field points into a kink from both sides, or
    where the speed falls below 1e-12 (later kink events would be rounding noise).

    Args:
        sliding: must be "stop", as it is for the flows it checks.

    Returns:
        (flat states at `ts` up to where it stopped, the time where it stopped, the
        flat state there (at the horizon: the limit of the last affine piece), how it
        stopped: "horizon", "sliding" or "converged").
    """
    assert sliding == "stop"
    xa = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    scale = 1 / len(y) if mean else 1.0

    def jac(active):  # d f(x_i) / d theta on the pattern's linear extension
        slopes = np.where(active, 1.0, negative_slope) * v
        return (slopes[:, :, None] * xa[:, None, :]).reshape(len(y), -1)

    def field(theta, active):
        return -scale * jac(active).T @ (jac(active) @ theta - y)

    def z_at(theta):
        return xa @ theta.reshape(hidden0.shape).T

    def event(fun, direction):
        fun.terminal, fun.direction = True, direction
        return fun

    theta, t, active = hidden0.ravel(), 0.0, xa @ hidden0.T > 0
    out, shift = np.full((len(ts), theta.size), np.nan), np.zeros(active.shape)
    while True:
        events = [
            event(lambda t, th, i=i, j=j, s=shift[i, j]: z_at(th)[i, j] - s, 1 - 2 * a)
            for (i, j), a in np.ndenumerate(active)
        ]
        speed = lambda t, th, a=active: np.linalg.norm(field(th, a)) - 1e-12
        sol = scipy.integrate.solve_ivp(
            lambda t, th, a=active: field(th, a),
            (t, _HORIZON),
            theta,
            method="DOP853",
            rtol=1e-13,
            atol=1e-14,
            events=[*events, event(speed, -1)],
            dense_output=True,
        )
        inside = (ts >= t) & (ts <= sol.t[-1])
        if inside.any():
            out[inside] = sol.sol(ts[inside]).T
        t, theta = sol.t[-1], sol.y[:, -1]
        if sol.status != 1:  # jump to the limit of the last, affine piece
            limit = theta - np.linalg.pinv(jac(active)) @ (jac(active) @ theta - y)
            return out, t, limit, "horizon"
        if sol.t_events[-1].size:
            return out, t, theta, "converged"
        hit = np.array([e.size > 0 for e in sol.t_events[:-1]]).reshape(active.shape)
        active = active ^ hit
        dz = z_at(field(theta, active))
        if np.any(hit & ~np.where(active, dz > 0, dz < 0)):
            return out, t, theta, "sliding"
        # A crossed z_ij restarts at ~0, where an event's root search would find the
        # start itself: its event fires 1e-13 past the kink instead.
        shift = np.where(hit, z_at(theta) - np.where(active, 1e-13, -1e-13), 0.0)


@functools.cache
def _random_case(seed):
    """Small single neurons and fixed-output nets, teacher or random labels."""
    rng = np.random.default_rng(seed)
    m = 1 if seed % 2 == 0 else int(rng.integers(2, 4))
    d, n = int(rng.choice([2, 5])), int(rng.integers(3, 7))
    bias, mean = seed % 3 != 0, seed % 5 == 0
    alpha = 0.0 if seed % 4 else 0.2
    x = rng.normal(size=(n, d))
    v = np.ones(1) if m == 1 else rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 1.5, m)
    hidden0 = rng.normal(size=(m, d + bias))
    if seed % 3 == 0:  # teacher labels from a network of the same shape
        y = np.maximum(x @ rng.normal(size=(d, m)), 0.0) @ v
    else:  # random labels, a few of them negative
        y = rng.normal(1.5, 1.0, size=n)
    # The reference stops at sliding modes, so these flows do too (the Filippov
    # continuation is checked in test_sliding_exact.py).
    args = dict(bias=bias, negative_slope=alpha, mean=mean, sliding="stop")
    return x, y, v, hidden0, args, piecewise_affine_flow(x, y, v, hidden0, **args)


@pytest.mark.parametrize("seed", range(_N_RANDOM))
def test_matches_scipy(seed):
    x, y, v, hidden0, args, flow = _random_case(seed)
    ts = np.concatenate([np.geomspace(1e-3, _HORIZON, 25), flow.switch_times])
    ref, t_end, theta_end, how = _reference(x, y, v, hidden0, ts, **args)
    assert (how == "sliding") == (flow.status == "sliding")
    keep = ts < min(t_end, flow.t_final) - 1e-6
    mine = flow.at(ts).reshape(len(ts), -1)
    np.testing.assert_allclose(mine[keep], ref[keep], rtol=0, atol=1e-8)
    if how == "sliding":
        assert flow.t_final == pytest.approx(t_end, rel=1e-8, abs=1e-8)
    if flow.status == "converged":  # sign pattern of the limit = last piece's
        xa = np.hstack([x, np.ones((len(x), 1))]) if args["bias"] else x
        z = xa @ flow.hidden.T
        assert np.all(((z > 0) == flow.patterns[-1]) | (np.abs(z) < 1e-9))
    if flow.status == "converged" or how == "sliding":
        np.testing.assert_allclose(flow.hidden.ravel(), theta_end, rtol=0, atol=1e-8)


def test_random_cases_switch_converge_and_slide():
    flows = [_random_case(seed)[-1] for seed in range(_N_RANDOM)]
    assert sum(len(f.switch_times) > 0 for f in flows) >= 10
    assert sum(f.status == "converged" for f in flows) >= 8
    assert sum(f.status == "sliding" for f in flows) >= 5


def test_mean_loss_rescales_time_by_n():
    x, y, v, hidden0, args, flow = _random_case(4)
    mean = piecewise_affine_flow(x, y, v, hidden0, **{**args, "mean": True})
    assert not args["mean"] and len(flow.switch_times) > 0
    np.testing.assert_allclose(
        mean.switch_times, len(y) * flow.switch_times, rtol=1e-12
    )
    ts = np.geomspace(1e-3, 10.0, 20)
    np.testing.assert_allclose(mean.at(len(y) * ts), flow.at(ts), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean.hidden, flow.hidden, rtol=0, atol=1e-12)
    assert mean.loss == pytest.approx(flow.loss / len(y), rel=1e-9, abs=1e-20)


def _theorem3(gamma, alpha, **kwargs):
    x = np.array([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]])
    y = alpha * np.array([16.0, 18.0, 0.0])
    return x, piecewise_affine_flow(
        x, y, np.ones(1), np.zeros((1, 3)), bias=False, **kwargs
    )


@pytest.mark.parametrize(
    "gamma, s_range, t1_range",
    [
        (0.0, (0.0, 0.0), None),
        (1.0, (-0.045, -0.035), (0.169, 0.17)),
        (2.0, (-0.12, -0.10), (0.138, 0.139)),
        (5.0, (-0.22, -0.20), (0.086, 0.087)),
    ],
)
def test_paper_theorem3(gamma, s_range, t1_range):
    limits = []
    for alpha in (1.0, 3.0):
        x, flow = _theorem3(gamma, alpha)
        assert flow.status == "converged"
        assert flow.loss < 1e-20 * alpha**2
        np.testing.assert_allclose(
            flow.hidden[0, :2], alpha * np.array([5.0, -1.0]), atol=1e-12
        )
        s = flow.hidden[0, 2] / alpha
        assert s_range[0] - 1e-14 <= s <= s_range[1] + 1e-14
        limits.append(s)
        t1 = flow.switch_times[0] if t1_range else np.inf
        if t1_range:
            assert len(flow.switch_times) == 1 and t1_range[0] < t1 < t1_range[1]
        # Phase 1: linear regression on all three rows, in closed form.
        target = alpha * np.array([5.0, -1.0, 1.0])
        ts = np.linspace(0.0, min(t1, 1.0), 15)
        closed = np.stack(
            [target - scipy.linalg.expm(-t * x.T @ x) @ target for t in ts]
        )
        np.testing.assert_allclose(
            flow.at(ts)[:, 0], closed, rtol=0, atol=1e-12 * alpha
        )
        if t1_range:  # t1 is the zero of <x_3, w(t)>; then w_3 is frozen
            assert abs(x[2] @ closed[-1]) < 1e-12 * alpha
            later = flow.at(t1 + np.geomspace(1e-3, 1e3, 20))[:, 0, 2]
            np.testing.assert_allclose(later, closed[-1, 2], rtol=0, atol=1e-13 * alpha)
            assert flow.hidden[0, 2] == pytest.approx(closed[-1, 2], abs=1e-13 * alpha)
    assert limits[0] == pytest.approx(limits[1], abs=1e-13)


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_paper_zero_derivative_at_zero_is_stationary(alpha):
    _, flow = _theorem3(5.0, alpha, grad_at_zero=0.0)
    assert flow.status == "converged" and flow.t_final == np.inf
    assert np.all(flow.hidden == 0.0)
    assert np.all(flow.at(np.array([0.0, 1.0, np.inf])) == 0.0)
    assert flow.loss == pytest.approx(290.0 * alpha**2, rel=1e-15)
    assert flow.grad_norm == 0.0


def test_piece_limit_stops_at_the_first_switch():
    _, flow = _theorem3(1.0, 1.0, max_pieces=1)
    _, full = _theorem3(1.0, 1.0)
    assert flow.status == "piece_limit" and len(flow.patterns) == 1
    assert flow.t_final == full.switch_times[0]
    np.testing.assert_allclose(
        flow.hidden, full.at(flow.t_final)[0], rtol=0, atol=1e-15
    )
    assert np.isnan(flow.at(np.array([flow.t_final * 1.01]))).all()


@pytest.mark.parametrize("bias", [False, True])
def test_linear_limit_is_projection_of_start(bias):
    rng = np.random.default_rng(7)
    n, d = 4, 7
    x, y, hidden0 = (
        rng.normal(size=(n, d)),
        rng.normal(size=n),
        rng.normal(size=(1, d + bias)),
    )
    flow = piecewise_affine_flow(
        x, y, np.ones(1), hidden0, bias=bias, negative_slope=1.0
    )
    xa = np.hstack([x, np.ones((n, 1))]) if bias else x
    expected = hidden0[0] + np.linalg.pinv(xa) @ (y - xa @ hidden0[0])
    assert flow.status == "converged" and flow.loss < 1e-20
    np.testing.assert_allclose(flow.hidden[0], expected, rtol=0, atol=1e-10)


def test_sliding_mode():
    # z_1 = <x_1, w> with label -5 is pulled to 0 from the active side, while x_2, still
    # underfit, pushes z_1 up on the inactive side: the field points into z_1 = 0.
    x, y = np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([-5.0, 2.0])
    hidden0 = np.array([[1.0, 0.5]])
    flow = piecewise_affine_flow(x, y, np.ones(1), hidden0, bias=False, sliding="stop")
    assert flow.status == "sliding" and len(flow.switch_times) == 0
    ts = np.array([0.0, 0.5 * flow.t_final, flow.t_final])
    ref, t_end, theta_end, how = _reference(
        x,
        y,
        np.ones(1),
        hidden0,
        ts,
        bias=False,
        negative_slope=0.0,
        mean=False,
        sliding="stop",
    )
    assert how == "sliding"
    assert flow.t_final == pytest.approx(t_end, rel=0, abs=1e-8)
    np.testing.assert_allclose(flow.at(ts)[:, 0], ref, rtol=0, atol=1e-8)
    w = flow.hidden[0]
    assert abs(x[0] @ w) < 1e-12
    resid = x @ w - y
    from_active = -(resid[0] * x[0] + resid[1] * x[1]) @ x[0]
    from_inactive = -(resid[1] * x[1]) @ x[0]
    assert from_active < -1.0 and from_inactive > 1.0
    assert np.isnan(flow.at(np.array([2 * flow.t_final]))).all()


@pytest.mark.parametrize("depth", [1e-3, 1e-6, 1e-9])
def test_near_tangent_dip_is_caught(depth):
    # z(t) = 1 - a (1 - e^{-t}) - (b / 2)(1 - e^{-2t}) dips to -depth at e^{-t} = -a / b
    # and recovers: for small depths no point of the search grid sees z < 0.
    a = -2.0
    z = lambda t, b: 1 - a * (1 - np.exp(-t)) - b / 2 * (1 - np.exp(-2 * t))
    b = scipy.optimize.brentq(lambda b: z(np.log(-b / a), b) + depth, 4.5, 5.9)
    vecs = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2)
    piece = _Piece(
        0.0, np.array([1.0, 0.0]), np.array([1.0, 2.0]), vecs, [a, b] / vecs[0]
    )
    tau, hit = _first_crossing(
        piece, np.eye(1, 2), np.ones((1, 1), bool), np.zeros((1, 1), bool)
    )
    root = scipy.optimize.brentq(z, 0.0, np.log(-b / a), args=(b,), xtol=1e-15)
    assert hit.all() and tau == pytest.approx(root, abs=1e-10)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(x=np.ones(3)), "x"),
        (dict(x=np.array([[1.0, np.nan]] * 3)), "x"),
        (dict(y=np.ones(4)), "y"),
        (dict(y=np.array([1.0, np.inf, 0.0])), "y"),
        (dict(out_weight=np.ones((1, 1))), "out_weight"),
        (dict(hidden0=np.ones((1, 3))), "hidden0"),
        (dict(hidden0=np.ones((2, 2))), "hidden0"),
        (dict(negative_slope=-0.1), "negative_slope"),
        (dict(negative_slope=1.5), "negative_slope"),
        (dict(grad_at_zero=np.nan), "grad_at_zero"),
    ],
)
def test_bad_input_raises(change, name):
    kwargs = dict(
        x=np.ones((3, 2)), y=np.ones(3), out_weight=np.ones(1), hidden0=np.ones((1, 2))
    )
    kwargs.update(change)
    with pytest.raises(ValueError, match=f"^{name} "):
        piecewise_affine_flow(bias=False, **kwargs)


@pytest.mark.parametrize("seed", range(_N_RANDOM))
def test_filippov_matches_stop_until_it_stops(seed):
    x, y, v, hidden0, args, stop = _random_case(seed)
    full = piecewise_affine_flow(x, y, v, hidden0, **{**args, "sliding": "filippov"})
    assert full.status == "converged"
    k = len(stop.switch_times)
    np.testing.assert_allclose(full.switch_times[:k], stop.switch_times, rtol=1e-12)
    ts = np.linspace(0.0, min(stop.t_final, 50.0), 25)
    np.testing.assert_allclose(full.at(ts), stop.at(ts), rtol=0, atol=1e-12)
    if stop.status == "converged":
        assert len(full.switch_times) == k and not any(f.any() for f in full.faces)
        np.testing.assert_allclose(full.hidden, stop.hidden, rtol=0, atol=1e-12)
    else:  # "stop" stopped where the field pointed back into a kink surface
        t = full.switch_times[k]
        assert t == pytest.approx(stop.t_final, rel=1e-12)
        if not full.faces[k + 1].any():
            # It was no sliding mode but a ReLU neuron dying on its kink: the
            # crossed entry's neuron has no active input left and stays frozen.
            crossed = (full.patterns[k] ^ full.patterns[k + 1]).any(axis=0)
            assert crossed.any() and not full.patterns[k + 1][:, crossed].any()
            assert args["negative_slope"] == 0.0
            later = full.at(np.array([t, t + 1e-3]))[:, crossed]
            np.testing.assert_array_equal(later[0], later[1])
