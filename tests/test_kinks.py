"""KinkSolver / LandOnKinks: steps that end on kinks, against closed forms and exact flows."""

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest
import scipy.optimize

import implicit_flow as imf
from implicit_flow import KinkSolver, LandOnKinks
from implicit_flow._kinks import band_sides
from implicit_flow.exact._piecewise import piecewise_affine_flow


BAND = 1e-8


def _toy(land: bool, cross: bool = False):
    """y' = 1 below y = 1/2 and 3 above it (2 inside the band): y(1) = 2 from y(0) = 0.
    With `cross`, `LandOnKinks` is told that the crossing is transversal."""
    surfaces = lambda y, args: (y - 0.5).reshape(1, 1)
    crosses = (lambda y, args, z, dz: jnp.ones_like(z, bool)) if cross else None

    def sides(y, args, before=None):  # passing after a step, as `LandOnKinks` judges
        z = surfaces(y, args)
        if crosses is None or before is None:
            return band_sides(z, BAND)
        return band_sides(z, BAND, crosses(y, args, z, z) & (before[2] != 0))

    field = lambda y, args, s: jnp.where(s > 0, 3.0, jnp.where(s < 0, 1.0, 2.0))[0]
    term = dfx.ODETerm(lambda t, y, args: field(y, args, sides(y, args)))
    solver, controller = dfx.Tsit5(), dfx.PIDController(rtol=1e-10, atol=1e-12)
    if land:
        solver = KinkSolver(solver, sides, field)
        controller = LandOnKinks(controller, surfaces, BAND, crosses=crosses)
    return dfx.diffeqsolve(
        term, solver, 0.0, 1.0, None, jnp.zeros(1), stepsize_controller=controller
    )


def test_landing_on_a_jump_of_the_field_is_exact_and_cheap():
    landed, plain = _toy(True), _toy(False)
    # crossing the band at speed >= 1 shifts y(1) by at most 2 * BAND
    assert abs(float(landed.ys[-1, 0]) - 2.0) <= 2 * BAND
    assert abs(float(plain.ys[-1, 0]) - 2.0) <= 1e-7
    tried = lambda s: int(s.stats["num_accepted_steps"] + s.stats["num_rejected_steps"])
    assert int(landed.stats["num_rejected_steps"]) <= 2
    assert tried(landed) * 5 < tried(plain)  # measured: 6 vs 79


def test_a_transversal_crossing_passes_the_band_in_one_step():
    landed, passed = _toy(True), _toy(True, cross=True)
    # the passing entry has no band: the step lands on y = 1/2 itself (up to the
    # slack, BAND / 100, past it) and the next goes on at speed 3 (measured: -0.01
    # BAND; through the band, at speed 1 up to a BAND past it, it was a few BAND)
    assert abs(float(passed.ys[-1, 0]) - 2.0) <= 0.05 * BAND
    accepted = lambda s: int(s.stats["num_accepted_steps"])
    assert accepted(passed) < accepted(landed)  # the steps into and through the band


def test_crosses_marks_the_entries_that_the_other_side_carries_on():
    # entries moving towards their kink, against dz/dt on both sides of it: from
    # the gradient with that entry's slope at each side's value (leaky net)
    rng = np.random.default_rng(7)
    n, d, m, alpha = 6, 3, 5, 0.2
    x, y = rng.normal(size=(n, d)), rng.normal(size=n)
    w, v, b = rng.normal(size=(m, d)), rng.normal(size=m), rng.normal(size=m)
    model = imf.TwoLayerReLU(w, v, b, negative_slope=alpha)
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.SumSquareLoss())
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    z = xb @ np.concatenate([w, b[:, None]], axis=1).T
    slope = np.where(z > 0, 1.0, alpha)
    r = np.where(z > 0, z, alpha * z) @ v - y

    def zdot(s):  # dz_ij/dt for every entry, with slopes s
        return -np.einsum("km,k,m,kp,ip->im", s, r, v, xb, xb)

    near, expected = zdot(slope), np.zeros((n, m), bool)
    for i, j in np.ndindex(n, m):
        flipped = slope.copy()
        flipped[i, j] = alpha + 1.0 - slope[i, j]
        far = zdot(flipped)[i, j]
        expected[i, j] = far * np.sign(near[i, j]) >= 0.2 * abs(near[i, j])
    got = imf.FilippovFlow().crosses(objective, params, imf.Dataset(x, y), z, near)
    approaching = z * near < 0  # (the others do not reach their kink)
    assert 0 < expected[approaching].sum() < approaching.sum()  # both kinds occur
    np.testing.assert_array_equal(np.asarray(got)[approaching], expected[approaching])


@pytest.mark.parametrize("y3", [1.0, 6.0])
def test_landing_keeps_the_exact_filippov_limit_with_fewer_rejections(y3):
    # the enter-and-leave cases of test_nonsmooth: one entry into and one exit
    # from a sliding surface, with crossings of the other kinks on the way
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    data = imf.Dataset(x, [-1.0, 5.0, y3])
    start = np.array([0.05, 4.6]) if y3 == 1.0 else np.array([0.5, 4.0])
    exact = imf.exact_flow(imf.ReLUNeuron(start), data)
    runs = [
        imf.solve_flow(
            imf.ReLUNeuron(start), data, flow=imf.FilippovFlow(land=land), gtol=1e-11
        )
        for land in (True, False)
    ]
    for run in runs:
        assert run.status == imf.Status.converged
        np.testing.assert_allclose(run.model.weight, exact.model.weight, atol=1e-7)
    # measured: 26 vs 64 and 33 vs 82 rejected steps
    assert 3 * int(runs[0].num_rejected) <= 2 * int(runs[1].num_rejected)


@pytest.mark.parametrize(
    "k, p, pooled",
    [(k, 6, pooled) for k in (1, 2, 3, 4) for pooled in (False, True)]
    + [(6, 10, False), (8, 10, False), (8, 6, False)],  # (pooled: as per lane)
)
def test_min_norm_slopes_solve_the_box_qp(k, p, pooled):
    # the closed-form face enumeration (k <= 4) and the active-set method (k > 4)
    # against quadprog (L-BFGS-B where k > p: the slots' inputs are dependent);
    # pooled: the rows as 4 lanes of 10, every row with free slots jointly
    import quadprog

    from implicit_flow._nonsmooth import _min_norm_slopes, _pooled_slopes

    rng = np.random.default_rng(k + p)
    m, lo = 40, 0.1
    c, u = rng.normal(size=(m, p)), rng.normal(size=(m, k, p))
    target = 0.3 * rng.normal(size=(m, k))
    free = rng.random((m, k)) < 0.8
    if k == 4:  # a fourth real slot on two neurons at most (FilippovFlow.kinks)
        free[:, 3] = np.isin(np.arange(m), [5, 17])
        free[5] = free[17] = True
    u = np.where(free[..., None], u, 0.0)
    target = np.where(free, target, 0.0)
    if pooled:  # (10 rows a lane: pooled, not per lane)
        lanes = lambda a: a.reshape(4, m // 4, *a.shape[1:])
        side = np.full((m, k), lo)
        got = _pooled_slopes(*map(lanes, (c, u, target, free)), lo, lanes(side), None)
        got = np.asarray(got).reshape(m, k)
    else:
        got = np.asarray(_min_norm_slopes(c, u, target, free, lo))
    for j in range(m):
        g = u[j] @ u[j].T + 1e-12 * np.eye(k)
        h = u[j] @ c[j] - target[j]
        bounds = np.concatenate([np.eye(k), -np.eye(k)], axis=1)
        a = quadprog.solve_qp(g, -h, bounds, np.r_[np.full(k, lo), -np.ones(k)])[0]
        value = lambda a: a @ g @ a / 2 + h @ a
        if k > p:  # quadprog then leaves the box by ~1e-5: L-BFGS-B stays in it
            a = scipy.optimize.minimize(
                value,
                np.full(k, 0.5),
                jac=lambda a: g @ a + h,
                bounds=[(lo, 1.0)] * k,
                method="L-BFGS-B",
                options=dict(ftol=1e-16, gtol=1e-14, maxiter=10_000),
            ).x
        # slopes of entries that are not free do not matter; the objective does
        assert value(got[j]) <= value(a) + 1e-10
        if k <= p:  # else the minimizer is not unique
            np.testing.assert_allclose(got[j][free[j]], a[free[j]], atol=1e-7)
        assert np.all(got[j] >= lo - 1e-12) and np.all(got[j] <= 1 + 1e-12)


@pytest.mark.parametrize("pooled, k", [(False, 3), (True, 3), (False, 4), (True, 4)])
def test_only_the_first_joint_rows_solve_several_slots_together(pooled, k, monkeypatch):
    # rows with 2-3 real slots beyond the first `joint` solve their first slot
    # alone, with the others at their side's slopes; with k = 4, two rows of
    # each lane have four, solved jointly: quadprog on every kind.
    # Pooled: three lanes at once, their 36 rows with free slots gathered in
    # chunks of 15 and their 9 joint rows in chunks of 6 (the last ones part
    # full), the 6 rows with four slots in chunks of 1
    import quadprog

    import implicit_flow._nonsmooth as nonsmooth

    monkeypatch.setattr(nonsmooth, "_CHUNK_ROWS", 5)
    monkeypatch.setattr(nonsmooth, "_CHUNK_JOINT", 2)
    rng = np.random.default_rng(11)
    lanes, m, p, lo, joint = 3, 14, 5, 0.1, 3
    counts = np.array([0, 1, 3, 2, 1, 2, 3, 0, 2, 1, 3, 1, 2, 1])
    counts = np.stack([counts, rng.permutation(counts), np.roll(counts, 3)])
    if k == 4:  # (`FilippovFlow.kinks` allows a fourth slot on two rows)
        for lane in counts:
            lane[np.flatnonzero(lane == 3)[1:]] = 4
    free = np.arange(k) < counts[..., None]  # slots fill in order
    c, u = rng.normal(size=(lanes, m, p)), rng.normal(size=(lanes, m, k, p))
    u = np.where(free[..., None], u, 0.0)
    target = np.where(free, 0.3 * rng.normal(size=(lanes, m, k)), 0.0)
    side = np.where(rng.random((lanes, m, k)) < 0.5, lo, 1.0)
    if pooled:
        got = nonsmooth._pooled_slopes(c, u, target, free, lo, side, joint)
    else:
        lanes, c, u, target, free, side = (
            1,
            c[:1],
            u[:1],
            target[:1],
            free[:1],
            side[:1],
        )
        got = nonsmooth._min_norm_slopes(
            c[0], u[0], target[0], free[0], lo, side[0], joint
        )
    got = np.asarray(got).reshape(lanes, m, k)

    def box_qp(c, u, target):
        g = u @ u.T + 1e-12 * np.eye(len(u))
        bounds = np.concatenate([np.eye(len(u)), -np.eye(len(u))], axis=1)
        limits = np.r_[np.full(len(u), lo), -np.ones(len(u))]
        return quadprog.solve_qp(g, target - u @ c, bounds, limits)[0]

    for lane in range(lanes):
        several = np.flatnonzero(counts[lane] > 1)[:joint]
        for j in np.flatnonzero(counts[lane] > 0):
            real = free[lane, j]
            c_, u_, target_, side_ = (
                c[lane, j],
                u[lane, j],
                target[lane, j],
                side[lane, j],
            )
            if j in several or counts[lane, j] == 4:  # jointly
                expected = box_qp(c_, u_[real], target_[real])
            else:
                rest = c_ + side_[1:][real[1:]] @ u_[1:][real[1:]]
                first = box_qp(rest, u_[:1], target_[:1])
                expected = np.r_[first, side_[1:][real[1:]]]
            np.testing.assert_allclose(got[lane, j][real], expected, atol=1e-7)


def test_kink_slots_go_to_the_first_kink_neurons_only():
    # 5 neurons; entries in the band on neurons 0 (two), 2 and 3 (one each)
    z = np.full((4, 5), 0.5)
    z[0, 0] = z[2, 0] = z[1, 2] = z[3, 3] = 1e-10
    flow = imf.FilippovFlow(kink_neurons=2)
    rows, near, real = flow.kinks(jnp.asarray(z), flow.sides(jnp.asarray(z)) == 0)
    np.testing.assert_array_equal(rows, [0, 2])
    np.testing.assert_array_equal(real.sum(1), [2, 1])
    np.testing.assert_array_equal(near[0, :2], [0, 2])
    assert near[1, 0] == 1
    rows, _, real = imf.FilippovFlow().kinks(jnp.asarray(z), jnp.asarray(z) < 1e-8)
    np.testing.assert_array_equal(rows, np.arange(5))
    np.testing.assert_array_equal(real.sum(1), [2, 0, 1, 1, 0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"max_kinks": 0}, "max_kinks"),
        ({"kink_neurons": 0}, "kink_neurons"),
        ({"band": 0.0}, "band"),
        ({"pull": -1.0}, "pull"),
    ],
)
def test_filippov_flow_rejects_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        imf.FilippovFlow(**kwargs)


def test_the_end_velocity_is_the_field_at_the_step_end_unless_a_kink_was_crossed():
    # solve_ensemble's steady-state test reads the last (FSAL) stage of a step
    from implicit_flow._solve import end_velocity

    surfaces = lambda y, args: (y - 0.5).reshape(1, 1)
    sides = lambda y, args, before=None: jnp.where(surfaces(y, args) > BAND, 1, -1)
    field = lambda y, args, s: jnp.where(s > 0, -3.0 * y, -y)[0]
    term = dfx.ODETerm(lambda t, y, args: field(y, args, sides(y, args)))
    tsit5 = dfx.Tsit5()
    kink = KinkSolver(tsit5, sides, field)
    # (solver, y0, exact): from 0.52 the step crosses y = 1/2 on the frozen piece
    cases = [(tsit5, 0.3, True), (tsit5, 0.9, True)]
    cases += [(kink, 0.3, True), (kink, 0.9, True), (kink, 0.52, False)]
    for solver, y0, fresh in cases:
        y0 = jnp.array([y0])
        state = solver.init(term, 0.0, 0.1, y0, None)
        y1, *_, state, _ = solver.step(term, 0.0, 0.1, y0, None, state, False)
        f1, exact = end_velocity(solver, state)
        rate = 3.0 if y0[0] > 0.5 else 1.0  # y(t) = y0 exp(-rate t) on the piece
        np.testing.assert_allclose(y1, y0 * np.exp(-rate * 0.1), rtol=1e-6)
        np.testing.assert_allclose(f1, -rate * y1, rtol=1e-14)
        assert bool(exact) == fresh
    assert end_velocity(dfx.Heun(), None) is None  # no FSAL stage to read


def test_the_velocity_of_gathered_kink_neurons_is_the_minimal_norm_subgradient():
    # neurons 1, 3 (two entries) and 4 sit on kinks; the velocity against a
    # per-neuron quadprog solve of the minimal-norm element of -dL
    import quadprog

    rng = np.random.default_rng(3)
    n, d, m = 8, 3, 6
    x, y = rng.normal(size=(n, d)), rng.normal(size=n)
    w, v, b = rng.normal(size=(m, d)), rng.normal(size=m), rng.normal(size=m)
    e = x[5] - x[2]
    w[3] -= (w[3] @ e) / (e @ e) * e  # so that z_23 = z_53
    for i, j in [(0, 1), (2, 3), (6, 4)]:
        b[j] = -w[j] @ x[i] - 1e-10  # in the band, on the negative side
    model = imf.TwoLayerReLU(w, v, b)
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.SumSquareLoss())
    data = imf.Dataset(x, y)
    xb = np.concatenate([x, np.ones((n, 1))], axis=1)
    z = xb @ np.concatenate([w, b[:, None]], axis=1).T
    kinks = np.abs(z) < 1e-9
    assert kinks.sum() == 4 and kinks[5, 3]

    def expected(solved):  # neurons whose kinks are solved; others take slope 0
        r = np.maximum(z, 0.0) @ v - y
        held = kinks & np.isin(np.arange(m), solved)
        grad = np.einsum(
            "nm,np->mp", np.where(held | (z <= 0), 0.0, 1.0) * r[:, None] * v, xb
        )
        for j in solved:
            rows = np.flatnonzero(held[:, j])
            u = r[rows, None] * v[j] * xb[rows]
            k = len(rows)
            bounds = np.concatenate([np.eye(k), -np.eye(k)], axis=1)
            a = quadprog.solve_qp(
                u @ u.T + 1e-13 * np.eye(k),
                -u @ grad[j],
                bounds,
                np.r_[np.zeros(k), -np.ones(k)],
            )[0]
            grad[j] += a @ u
        return -grad, -(np.maximum(z, 0.0).T @ r)

    for flow, solved in [
        (imf.FilippovFlow(), [1, 3, 4]),
        (imf.FilippovFlow(kink_neurons=3), [1, 3, 4]),
        (imf.FilippovFlow(kink_neurons=2), [1, 3]),
    ]:
        got = eqx.filter_jit(flow.velocity)(objective, params, data)
        hidden, out = expected(solved)
        np.testing.assert_allclose(got.hidden_weight, hidden[:, :d], atol=1e-9)
        np.testing.assert_allclose(got.hidden_bias, hidden[:, d], atol=1e-9)
        np.testing.assert_allclose(got.output_weight, out, atol=1e-12)


def _w1_start(start):
    """W1's data and its start `start` (`benchmarks/ensemble.py`)."""
    key_x, key_t, _ = jr.split(jr.key(2026), 3)
    x = jr.normal(key_x, (8, 10))
    data = imf.Dataset(x, jnp.maximum(x @ jr.normal(key_t, (10,)), 0.0))
    w0 = imf.Gaussian(1.0).sample(jr.fold_in(jr.key(0), start), start, jnp.zeros(10))
    return imf.ReLUNeuron(w0), data


def _exact_w1(model, data):
    x, y = np.asarray(data.x), np.asarray(data.y)
    return piecewise_affine_flow(
        x, y, np.ones(1), np.asarray(model.weight)[None], bias=False
    )


def _slow_crossing():
    """W1's start 525 549 (found on the GPU, where two engines at rtol 1e-10
    disagreed on it by 6e-2): input 3 (label 0.20) crosses its kink so slowly that
    the active piece, continued, would dip only ~1e-5 below 0."""
    return _w1_start(525549)


@pytest.mark.parametrize(
    "flow, tol",
    [
        (imf.GradientFlow(), 1e-9),
        (imf.FilippovFlow(band=1e-11), 1e-9),
        # a passing entry lands on its kink itself (measured: 8.5e-10 off); through
        # the band it keeps one side's field for ~band / |dz/dt| (1.3e-7 off)
        (imf.FilippovFlow(), 1e-8),
        (imf.FilippovFlow(cross=False), 1e-6),
    ],
)
def test_a_slow_crossing_is_not_stepped_over(flow, tol):
    model, data = _slow_crossing()
    x = np.asarray(data.x)
    exact = _exact_w1(model, data)
    # the case: the first event is input 3 leaving the active side, where the
    # active piece (continued) dips between -1e-4 and 0 and turns back
    assert exact.patterns[0][3, 0] and not exact.patterns[1][3, 0]
    taus = exact.switch_times[0] + np.linspace(0.0, 0.01, 10_001)
    dip = exact._pieces[0].states(taus).reshape(len(taus), -1) @ x[3]
    assert -1e-4 < dip.min() < 0.0 < dip[-1]
    result = imf.solve_flow(model, data, flow=flow)
    assert result.status == imf.Status.converged
    np.testing.assert_allclose(result.model.weight, exact.hidden[0], rtol=0, atol=tol)


def test_a_thin_band_lands_where_float64_resolves_time():
    # W1 start 36 with band 1e-11: early on, z moves faster than 7 per unit time,
    # so at the shortest step t can resolve (64 eps) it passes more than the
    # band / 100 that a landing allowed: every retake overshot and the solve hit
    # max_steps at t = 0.05 (measured). The landing window is now at least what z
    # moves in a few such steps.
    model, data = _w1_start(36)
    result = imf.solve_flow(model, data, flow=imf.FilippovFlow(band=1e-11))
    assert result.status == imf.Status.converged
    exact = _exact_w1(model, data)
    np.testing.assert_allclose(result.model.weight, exact.hidden[0], rtol=0, atol=1e-9)
