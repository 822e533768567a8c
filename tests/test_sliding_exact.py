"""Exact sliding (Filippov) flows against hand-derived and numerical truths (issue #4).

Truths, each independent of the module: closed forms derived by hand; an
event-driven DOP853 integration of the Filippov field with its own multiplier
formula (least squares on the tangency conditions) and its own box QP at events
(`scipy.optimize.lsq_linear`, BVLS); and gradient descent with tiny steps, which
converges to the Filippov flow at first order.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.optimize

from implicit_flow.exact._piecewise import piecewise_affine_flow


_HORIZON = 1e4
# The first 24 seeds of `_random_case` whose flow slides (has a face), leaving out
# faces of rank p (a neuron pinned at w_j = 0), which the reference cannot sort.
_SLIDING_SEEDS = (0, 5, 7, 13, 14, 15, 17, 19, 21, 26, 27, 28, 29, 30, 31, 32, 33)
_SLIDING_SEEDS += (34, 35, 36, 38, 39, 41, 43)
# The first 10 seeds after those whose faces hold two or more entries at once.
_STACKED_SEEDS = (52, 55, 81, 83, 85, 97, 99, 103, 107, 109)


# --- hand-derived cases -------------------------------------------------------------


def _hand_case():
    # x_1 = (1, 0), label -1; x_2 = (1, 1), label 5; start w = (0.5, 4.5).
    return np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([-1.0, 5.0])


def _phase(a, c, w0, t):
    """The affine flow w' = -(A w - c) from w0, in closed form (A invertible)."""
    lam, vecs = np.linalg.eigh(a)
    star = np.linalg.solve(a, c)
    return star + vecs @ (np.exp(-lam * t) * (vecs.T @ (w0 - star)))


def test_hand_case_slides_on_w1_zero_to_its_limit():
    # Phase 1, both points active: w' = -(A w - c), A = [[2, 1], [1, 1]], c = (4, 5),
    # so w(t) = w* + e^{-tA}(w0 - w*) with w* = (-1, 6), until w_1 = 0 at t_in.
    # On w_1 = 0: from above w_1' = 4 - w_2 < 0, from below (x_1 inactive)
    # w_1' = 5 - w_2 > 0 while 4 < w_2 < 5: a sliding mode. Its multiplier keeps
    # w_1' = -(a r_1 + r_2) = 0 with r_1 = 1, r_2 = w_2 - 5: a = 5 - w_2. The
    # tangential motion is w_2' = -r_2 = 5 - w_2 (x_1 has no second coordinate),
    # so w_2(t) = 5 - (5 - w_2(t_in)) e^{-(t - t_in)} and a = (5 - w_2(t_in))
    # e^{-(t - t_in)} decays to the bound 0 only as t -> inf: no exit in finite
    # time, and the limit (0, 5) lies on the face, with loss r_1^2 / 2 = 1/2.
    x, y = _hand_case()
    w0 = np.array([0.5, 4.5])
    np.testing.assert_array_equal(x.T @ x, [[2.0, 1.0], [1.0, 1.0]])
    np.testing.assert_array_equal(x.T @ y, [4.0, 5.0])
    phase1 = lambda t: _phase(x.T @ x, x.T @ y, w0, t)
    t_in = scipy.optimize.brentq(lambda t: phase1(t)[0], 0.0, 5.0, xtol=1e-15)
    w2_in = phase1(t_in)[1]
    assert 4.0 < w2_in < 5.0

    flow = piecewise_affine_flow(x, y, np.ones(1), w0[None, :], bias=False)
    assert flow.status == "converged" and flow.t_final == np.inf
    assert flow.switch_times == pytest.approx([t_in], abs=1e-13)
    assert [f.tolist() for f in flow.faces] == [[[False], [False]], [[True], [False]]]
    assert [p.tolist() for p in flow.patterns] == [[[True], [True]], [[False], [True]]]
    np.testing.assert_allclose(flow.hidden[0], [0.0, 5.0], rtol=0, atol=1e-13)
    assert flow.loss == pytest.approx(0.5, abs=1e-13)
    assert flow.grad_norm < 1e-13

    ts = np.linspace(0.0, t_in, 7)
    np.testing.assert_allclose(
        flow.at(ts)[:, 0], np.stack([phase1(t) for t in ts]), rtol=0, atol=1e-13
    )
    ts = t_in + np.geomspace(1e-3, 30.0, 15)
    on_face = np.stack([np.zeros_like(ts), 5 - (5 - w2_in) * np.exp(-(ts - t_in))], 1)
    np.testing.assert_allclose(flow.at(ts)[:, 0], on_face, rtol=0, atol=1e-13)

    stop = piecewise_affine_flow(
        x, y, np.ones(1), w0[None, :], bias=False, sliding="stop"
    )
    assert stop.status == "sliding" and stop.t_final == pytest.approx(t_in, abs=1e-13)
    assert len(stop.faces) == 1 and not stop.faces[0].any()


@pytest.mark.parametrize("y3", [1.0, 6.0])
def test_hand_cases_with_an_exit(y3):
    # x_3 = (0, 1), label y3, active throughout, does not touch w_1' = -(a r_1 + r_2)
    # but moves w_2 along the face w_1 = 0: there r_1 = 1, a = 5 - w_2 and
    # w_2' = -(r_2 + r_3) = (5 + y3) - 2 w_2, so w_2 -> (5 + y3) / 2 =: s.
    # y3 = 1: s = 3, a rises to 1 at w_2 = 4, and z_1 leaves to the active side.
    # y3 = 6: s = 5.5, a falls to 0 at w_2 = 5, and z_1 leaves to the inactive side.
    # Exit time t_in + ln((w_2(t_in) - s) / (bound - s)) / 2, then an affine piece
    # with a full-rank A: the limit is its least-squares solution.
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    y = np.array([-1.0, 5.0, y3])
    w0 = np.array([0.05, 4.6]) if y3 == 1.0 else np.array([0.5, 4.0])
    s, bound, up = (5 + y3) / 2, (4.0 if y3 == 1.0 else 5.0), y3 == 1.0
    t_in = scipy.optimize.brentq(
        lambda t: _phase(x.T @ x, x.T @ y, w0, t)[0],
        0.0,
        0.2 if up else 1.0,
        xtol=1e-15,
    )
    w2_in = _phase(x.T @ x, x.T @ y, w0, t_in)[1]
    assert 4.0 < w2_in < 5.0  # the field points into w_1 = 0 from both sides
    t_out = t_in + 0.5 * np.log((w2_in - s) / (bound - s))
    last = x if up else x[1:]  # the points active after the exit
    limit = np.linalg.solve(last.T @ last, last.T @ y[-len(last) :])

    flow = piecewise_affine_flow(x, y, np.ones(1), w0[None, :], bias=False)
    assert flow.status == "converged"
    np.testing.assert_allclose(flow.switch_times, [t_in, t_out], rtol=0, atol=1e-12)
    assert [f[:, 0].tolist() for f in flow.faces] == [
        [False] * 3,
        [True, False, False],
        [False] * 3,
    ]
    assert flow.patterns[-1][:, 0].tolist() == [up, True, True]
    np.testing.assert_allclose(flow.hidden[0], limit, rtol=0, atol=1e-12)
    ts = np.linspace(t_in, t_out, 9)
    face = np.stack([np.zeros(9), s + (w2_in - s) * np.exp(-2 * (ts - t_in))], 1)
    np.testing.assert_allclose(flow.at(ts)[:, 0], face, rtol=0, atol=1e-12)
    ts = t_out + np.geomspace(1e-3, 30.0, 12)
    after = np.stack(
        [
            _phase(last.T @ last, last.T @ y[-len(last) :], np.array([0.0, bound]), t)
            for t in ts - t_out
        ]
    )
    np.testing.assert_allclose(flow.at(ts)[:, 0], after, rtol=0, atol=1e-12)
    assert np.all(np.sign(flow.at(ts)[:, 0, 0]) == (1 if up else -1))  # exit's side


def test_twin_neurons_slide_together():
    # Two copies of the hand-case neuron with v = (1/2, 1/2): by symmetry each
    # neuron moves at half speed, f is unchanged, so both enter w_1 = 0 at 2 t_in
    # (one event, two face entries in different neurons) and both reach (0, 5).
    x, y = _hand_case()
    w0 = np.array([[0.5, 4.5], [0.5, 4.5]])
    single = piecewise_affine_flow(x, y, np.ones(1), w0[:1], bias=False)
    twins = piecewise_affine_flow(x, y, np.full(2, 0.5), w0, bias=False)
    assert twins.status == "converged"
    np.testing.assert_allclose(twins.switch_times, 2 * single.switch_times, rtol=1e-12)
    assert twins.faces[-1].tolist() == [[True, True], [False, False]]
    np.testing.assert_allclose(twins.hidden, [[0.0, 5.0]] * 2, rtol=0, atol=1e-12)
    ts = np.geomspace(1e-3, 50.0, 20)
    np.testing.assert_allclose(
        twins.at(2 * ts), np.repeat(single.at(ts), 2, axis=1), rtol=0, atol=1e-12
    )


def test_a_neuron_with_zero_output_weight_is_frozen():
    # v_j = 0 makes neuron j's gradient vanish: it never moves (never slides), and
    # the rest is the flow without it.
    x, y = _hand_case()
    w0 = np.array([[0.5, 4.5], [-0.3, 0.2]])
    alone = piecewise_affine_flow(x, y, np.ones(1), w0[:1], bias=False)
    flow = piecewise_affine_flow(x, y, np.array([1.0, 0.0]), w0, bias=False)
    np.testing.assert_allclose(flow.switch_times, alone.switch_times, rtol=1e-12)
    np.testing.assert_allclose(flow.hidden, [alone.hidden[0], w0[1]], atol=1e-12)
    assert not any(f[:, 1].any() for f in flow.faces)


def test_stop_and_filippov_agree_until_the_entry():
    x, y = _hand_case()
    w0 = np.array([[0.5, 4.5]])
    stop = piecewise_affine_flow(x, y, np.ones(1), w0, bias=False, sliding="stop")
    full = piecewise_affine_flow(x, y, np.ones(1), w0, bias=False)
    assert stop.t_final == full.switch_times[0]
    ts = np.linspace(0.0, stop.t_final, 11)
    # the same pieces; at the entry one path lands on the kink exactly, the other
    # within rounding (1.1e-16 on an AVX2 machine)
    np.testing.assert_allclose(stop.at(ts), full.at(ts), rtol=1e-15, atol=1e-15)
    with pytest.raises(ValueError, match="^sliding "):
        piecewise_affine_flow(x, y, np.ones(1), w0, bias=False, sliding="chatter")


# --- an independent event-driven reference ------------------------------------------


def _filippov_reference(x, y, v, hidden0, ts, *, bias, negative_slope, mean):
    """Event-driven DOP853 integration of the Filippov field.

    Off the faces the field is the pattern's gradient; on a face F it is
    -(g_F + N mu) with mu from the tangency conditions N^T (g_F + N mu) = 0 (least
    squares), N the face normals, and the slopes a = mu / rho in [alpha, 1].
    Events: an off-face z_ij crossing zero, a face slope reaching alpha or 1. At an
    event the entries at zero are re-sorted by the minimal-norm element of the
    Clarke set over the convex kinks (BVLS on the slopes a in [alpha, 1]); concave
    kinks are crossed; exits keep their side.

    Returns:
        (flat states at `ts` (NaN past the end), event times, the flat limit, the
        faces (n, m) of each segment).
    """
    alpha = negative_slope
    xa = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    n, (m, p) = len(y), hidden0.shape
    scale = 1 / n if mean else 1.0

    def block(i, j):  # x_i in neuron j's block of theta
        out = np.zeros((m, p))
        out[j] = xa[i]
        return out.ravel()

    def z_of(theta):
        return xa @ theta.reshape(m, p).T

    def resid(theta, active):
        z = z_of(theta)
        return (np.where(active, z, alpha * z)) @ v - y

    def parts(theta, active, free):
        """(g_fixed, U): the gradient is g_fixed + U a, a the slopes on `free`."""
        r = resid(theta, active)
        slopes = np.where(active, 1.0, alpha)
        g = sum(
            scale * r[i] * v[j] * slopes[i, j] * block(i, j)
            for i in range(n)
            for j in range(m)
            if not free[i, j]
        )
        cols = [scale * r[i] * v[j] * block(i, j) for i, j in np.argwhere(free)]
        return g + np.zeros(m * p), np.array(cols).reshape(-1, m * p).T

    def normals(face):
        return (
            np.array([block(i, j) for i, j in np.argwhere(face)]).reshape(-1, m * p).T
        )

    def multipliers(theta, active, face):
        """(mu, rho): a_ij r_i v_j / n^k and its bound r_i v_j / n^k, per face entry.

        In mu = a rho (not a) the tangency conditions stay well posed where a
        fitted point's residual tends to 0 on a face.
        """
        g, _ = parts(theta, active, face)
        nn = normals(face)
        r = resid(theta, active)
        rho = np.array([scale * r[i] * v[j] for i, j in np.argwhere(face)])
        return np.linalg.lstsq(nn.T @ nn, -nn.T @ g, rcond=None)[0], rho

    def field(theta, active, face):
        g, _ = parts(theta, active, face)
        if face.any():
            g = g + normals(face) @ multipliers(theta, active, face)[0]
        return -g

    def bound_gap(th, k, lower):  # mu - alpha rho, or rho - mu (+ 1e-9: state error)
        mu, rho = multipliers(th, active, face)
        return 1e-9 + (mu[k] - alpha * rho[k] if lower else rho[k] - mu[k])

    def project(theta, face):
        if not face.any():
            return theta
        nn = normals(face)
        return theta - nn @ np.linalg.solve(nn.T @ nn, nn.T @ theta)

    def event(fun, direction):
        fun.terminal, fun.direction = True, direction
        return fun

    theta, t = hidden0.ravel().astype(float), 0.0
    active, face = z_of(theta) > 0, np.zeros((n, m), bool)
    shift = np.zeros((n, m))
    out = np.full((len(ts), theta.size), np.nan)
    times, faces = [], [face]
    while True:
        off = [(i, j) for (i, j), f in np.ndenumerate(face) if not f]
        on = [tuple(e) for e in np.argwhere(face)]
        events = [
            event(
                lambda t, th, i=i, j=j, s=shift[i, j]: z_of(th)[i, j] - s,
                -1.0 if active[i, j] else 1.0,
            )
            for i, j in off
        ]
        for k in range(len(on)):
            events.append(event(lambda t, th, k=k: bound_gap(th, k, True), -1.0))
            events.append(event(lambda t, th, k=k: bound_gap(th, k, False), -1.0))
        speed = lambda t, th, a=active, f=face: np.linalg.norm(field(th, a, f)) - 1e-9
        events.append(event(speed, -1.0))
        sol = scipy.integrate.solve_ivp(
            lambda t, th, a=active, f=face: field(th, a, f),
            (t, _HORIZON),
            theta,
            method="DOP853",
            rtol=1e-12,
            atol=1e-14,
            events=events,
            dense_output=True,
        )
        inside = (ts >= t) & (ts <= sol.t[-1])
        if inside.any():
            out[inside] = sol.sol(ts[inside]).T
        t, theta = sol.t[-1], sol.y[:, -1]
        # Events within ~1e-9 of zero at the stop fire together (simultaneous).
        fired = [
            e.size > 0 or (s == 0 and abs(fun(t, theta)) < 1e-9)
            for e, fun, s in zip(
                sol.t_events[:-1],
                events[:-1],
                [shift[i, j] for i, j in off] + [0.0] * (2 * len(on)),
                strict=True,
            )
        ]
        # A multiplier bound reached where rho ~ 0 (a point fitted on its kink, at
        # the limit) is rounding noise of mu / rho, not an exit.
        rho = multipliers(theta, active, face)[1] if on else np.zeros(0)
        noise = not any(fired[: len(off)]) and all(
            abs(rho[k // 2]) < 1e-8 for k, f in enumerate(fired[len(off) :]) if f
        )
        if sol.status != 1 or sol.t_events[-1].size or noise:  # the last piece's limit
            slopes = np.where(active, 1.0, alpha)
            jac = ((slopes * v)[:, :, None] * xa[:, None, :]).reshape(n, -1)
            proj = np.eye(m * p)
            if face.any():
                nn = normals(face)
                proj -= nn @ np.linalg.solve(nn.T @ nn, nn.T)
            limit = theta - np.linalg.pinv(jac @ proj, rcond=1e-10) @ (jac @ theta - y)
            out[ts > t] = limit  # at most (speed / curvature) away: ~1e-10
            return out, np.array(times), limit, faces
        before = face, active
        exits = [k for k, f in enumerate(fired[len(off) :]) if f]
        if exits and not any(fired[: len(off)]):
            # The offset delays an exit by 1e-9 / |gap'|: back to the raw gap's root.
            k = exits[0]
            raw = lambda s, k=k, sol=sol: (
                bound_gap(sol.sol(s), k // 2, k % 2 == 0) - 1e-9
            )
            lo = t - 1e-6
            while lo > sol.t[0] and raw(lo) <= 0:
                lo = max(sol.t[0], t - 4 * (t - lo))
            if raw(lo) > 0:
                t = scipy.optimize.brentq(raw, lo, t, xtol=1e-14, rtol=1e-15)
                theta = sol.sol(t)
        hit = np.zeros((n, m), bool)
        for (i, j), f in zip(off, fired[: len(off)], strict=True):
            hit[i, j] = f
        up, down = np.zeros((n, m), bool), np.zeros((n, m), bool)
        for k, (i, j) in enumerate(on):
            down[i, j] = fired[len(off) + 2 * k]
            up[i, j] = fired[len(off) + 2 * k + 1]
        zero = face | hit
        active = np.where(up, True, np.where(down, False, active ^ hit))
        r = resid(theta, active & ~zero)
        convex = zero & ~(up | down) & (r[:, None] * v[None, :] > 0)
        new_face = np.zeros((n, m), bool)
        if convex.any():
            g, u = parts(theta, active, convex)
            a = scipy.optimize.lsq_linear(
                u, -g, bounds=(alpha, 1.0), method="bvls", tol=1e-15
            ).x
            for (i, j), ak in zip(np.argwhere(convex), a, strict=True):
                if ak > 1 - 1e-9:
                    active[i, j] = True
                elif ak < alpha + 1e-9:
                    active[i, j] = False
                else:
                    new_face[i, j], active[i, j] = True, False
        face = new_face
        theta = project(theta, face)
        # An entry that left a kink (or rests on one, in a frozen neuron) restarts at
        # ~0, where a root search would find the start itself: its event fires 1e-13
        # past the kink instead.
        left = (zero | (np.abs(z_of(theta)) < 1e-12)) & ~face
        shift = np.where(left, z_of(theta) - np.where(active, 1e-13, -1e-13), 0.0)
        # an event after which the face and the pattern are as before (an exit
        # that re-enters at once: rounding of the multipliers) is no switch
        if not (np.array_equal(face, before[0]) and np.array_equal(active, before[1])):
            times.append(t)
            faces.append(face)


@functools.cache
def _random_case(seed):
    """Small single neurons and fixed-output nets with some negative labels."""
    rng = np.random.default_rng(5000 + seed)
    m = 1 if seed % 2 == 0 else int(rng.integers(2, 4))
    d, n = int(rng.choice([2, 3])), int(rng.integers(3, 6))
    bias, mean = seed % 3 != 0, seed % 5 == 0
    alpha = 0.0 if seed % 4 else 0.2
    x = rng.normal(size=(n, d))
    v = np.ones(1) if m == 1 else rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 1.5, m)
    hidden0 = rng.normal(size=(m, d + bias))
    y = rng.normal(0.5, 1.5, size=n)
    args = dict(bias=bias, negative_slope=alpha, mean=mean)
    return x, y, v, hidden0, args, piecewise_affine_flow(x, y, v, hidden0, **args)


@pytest.mark.parametrize("seed", _SLIDING_SEEDS + _STACKED_SEEDS)
def test_matches_event_driven_reference(seed):
    x, y, v, hidden0, args, flow = _random_case(seed)
    assert flow.status == "converged"
    ts = np.geomspace(1e-3, 1e3, 30)
    ref, times, limit, faces = _filippov_reference(x, y, v, hidden0, ts, **args)
    np.testing.assert_allclose(flow.switch_times, times, rtol=1e-9, atol=1e-6)
    assert len(flow.faces) == len(faces)
    for mine, theirs in zip(flow.faces, faces, strict=True):
        np.testing.assert_array_equal(mine, theirs)
    np.testing.assert_allclose(flow.hidden.ravel(), limit, rtol=0, atol=1e-7)
    np.testing.assert_allclose(flow.at(ts).reshape(len(ts), -1), ref, rtol=0, atol=1e-7)


def test_random_cases_slide_enter_leave_and_stack():
    flows = [_random_case(seed)[-1] for seed in range(_SLIDING_SEEDS[-1] + 1)]
    sliding = [f for f in flows if any(face.any() for face in f.faces)]
    assert [s for s, f in enumerate(flows) if f in sliding] == list(_SLIDING_SEEDS)
    exits = [
        (f.faces[k - 1] & ~f.faces[k], f.patterns[k])
        for f in sliding
        for k in range(1, len(f.faces))
    ]
    assert sum(int((gone & up).sum()) for gone, up in exits) >= 2  # to the active side
    assert sum(int((gone & ~up).sum()) for gone, up in exits) >= 2  # to the other
    stacked = [_random_case(seed)[-1] for seed in _STACKED_SEEDS]
    assert all(any(face.sum() >= 2 for face in f.faces) for f in stacked)
    assert (
        sum(any((face.sum(axis=0) >= 2).any() for face in f.faces) for f in stacked)
        >= 5
    )
    assert any(max(face.sum() for face in f.faces) >= 3 for f in stacked)
    assert sum(f.patterns[0].shape[1] > 1 for f in sliding) >= 4  # fixed-v nets
    assert sum(f.faces[-1].any() for f in sliding) >= 4  # limits on a face
    for f in flows:  # face entries are not active; off faces nothing is recorded
        assert len(f.faces) == len(f.patterns) == len(f.switch_times) + 1
        assert not any(
            (face & pattern).any()
            for face, pattern in zip(f.faces, f.patterns, strict=True)
        )


# --- gradient descent with tiny steps ------------------------------------------------


def _gd(x, y, v, hidden0, lr, num_steps, *, bias, negative_slope, mean):
    """Plain GD on the same loss (jax.grad: sigma'(0) = alpha), `num_steps` steps."""
    xa = jnp.asarray(np.hstack([x, np.ones((len(x), 1))]) if bias else x)
    scale = 1 / len(y) if mean else 1.0

    def loss(h):
        z = xa @ h.T
        resid = jnp.where(z > 0, z, negative_slope * z) @ v - y
        return 0.5 * scale * jnp.sum(resid**2)

    step = lambda _, h: h - lr * jax.grad(loss)(h)
    out = jax.jit(lambda h: jax.lax.fori_loop(0, num_steps, step, h))(hidden0)
    assert out.dtype == jnp.float64  # tests/conftest.py enables float64
    return np.asarray(out)


def test_gradient_descent_converges_to_the_filippov_limit_at_first_order():
    # GD chatters across w_1 = 0 with amplitude O(lr) and freezes where the push up
    # from below dies out (a -> 0), so its limit is off by c * lr with c in (0, 1)
    # depending erratically on lr (measured: 0.48, 0.46, 0.20 for lr = 1e-4, 1e-5,
    # 1e-6). That erratic part is why a Richardson extrapolation does not improve on
    # the smallest step here; the smallest step itself is within 1e-6.
    x, y = _hand_case()
    w0 = np.array([[0.5, 4.5]])
    flow = piecewise_affine_flow(x, y, np.ones(1), w0, bias=False)
    args = dict(bias=False, negative_slope=0.0, mean=False)
    for lr in (1e-4, 1e-5, 1e-6):
        gd = _gd(x, y, np.ones(1), w0, lr, int(40 / lr), **args)
        err = gd - flow.hidden
        assert np.abs(err).max() <= lr, lr
        assert err[0, 0] <= 0 and gd.sum() == pytest.approx(5.0, abs=1e-12)  # r_2 = 0


@pytest.mark.parametrize("seed", [83, 107, 109])
def test_gradient_descent_tracks_multi_neuron_sliding_at_first_order(seed):
    # Nets with several entries sliding at once (faces of up to three entries): the
    # GD error at t = k lr stays below C lr (measured C <= 7.1 on these three).
    x, y, v, hidden0, args, flow = _random_case(seed)
    assert max(face.sum() for face in flow.faces) >= 2
    t = 2 * flow.switch_times[-1] + 10.0
    for lr in (1e-3, 1e-4, 1e-5):
        gd = _gd(x, y, v, hidden0, lr, int(t / lr), **args)
        assert np.abs(gd - flow.at(np.array([lr * int(t / lr)]))[0]).max() <= 10 * lr


def test_neuron_collapsing_to_zero_against_gradient_descent():
    # d = 2, no bias: sliding on two kinks of one neuron at once pins it at w_j = 0,
    # where all its pre-activations vanish (the face has rank p).
    rng = np.random.default_rng(20045)
    m = int(rng.integers(2, 4))
    d, n = int(rng.choice([2, 3])), int(rng.integers(3, 6))
    x = rng.normal(size=(n, d))
    v = rng.choice([-1.0, 1.0], m) * rng.uniform(0.5, 1.5, m)
    hidden0 = rng.normal(size=(m, d))
    y = rng.normal(-0.5, 1.5, size=n)
    args = dict(bias=False, negative_slope=0.0, mean=True)
    flow = piecewise_affine_flow(x, y, v, hidden0, **args)
    assert flow.status == "converged"
    assert any((face.sum(axis=0) >= d).any() for face in flow.faces)
    assert np.abs(flow.hidden).max(axis=1).min() < 1e-15  # a neuron at the origin
    for lr in (1e-3, 1e-4, 1e-5):
        gd = _gd(x, y, v, hidden0, lr, int(60 / lr), **args)
        assert np.abs(gd - flow.at(np.array([lr * int(60 / lr)]))[0]).max() <= 2 * lr
