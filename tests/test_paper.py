"""implicit_flow.paper against independent truths: closed forms, solvers, symmetry.

What tests/test_exact.py and tests/test_piecewise.py already cover (the Theorem 3
limits from the exact flow and solve_flow, phase 1 along the exact flow, sigma'(0) = 0
for the exact flow) is not repeated here.
"""

import itertools as it
import re

import jax.random as jr
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

import implicit_flow as imf
from implicit_flow import paper


# The paper's numbers (Vardi & Shamir 2021, Theorem 3).
S_RANGE = {1.0: (-0.045, -0.035), 2.0: (-0.12, -0.10), 5.0: (-0.22, -0.20)}
T1_RANGE = {1.0: (0.169, 0.17), 2.0: (0.138, 0.139), 5.0: (0.086, 0.087)}


def _exact_limit(data, start=None, **kwargs) -> np.ndarray:
    start = np.zeros(data.dim) if start is None else start
    return np.asarray(
        imf.exact_flow(imf.ReLUNeuron(start, **kwargs), data).model.weight
    )


# --- datasets, phase 1, symmetries ----------------------------------------------------


@pytest.mark.parametrize("gamma", [1.0, 2.0, 5.0])
def test_theorem3_helpers_match_the_paper_and_scipy(gamma):
    data = paper.theorem3_data(gamma, alpha=2.0)
    x = np.array([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]])
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.y, [32.0, 36.0, 0.0])
    ts = np.array([0.0, 0.01, 0.05, 0.08])
    target = 2.0 * np.array([5.0, -1.0, 1.0])
    expected = np.stack([target - scipy.linalg.expm(-t * x.T @ x) @ target for t in ts])
    np.testing.assert_allclose(
        paper.theorem3_phase1(ts, gamma, 2.0), expected, atol=1e-13
    )
    t1 = paper.theorem3_switch_time(gamma)
    assert T1_RANGE[gamma][0] < t1 < T1_RANGE[gamma][1]
    flow = imf.exact_flow(imf.ReLUNeuron(np.zeros(3)), paper.theorem3_data(gamma))
    assert abs(float(flow.num_steps) - 2) == 0  # two affine pieces: one switch
    # The exact flow switches where the closed form's <x_3, w> first vanishes.
    assert abs(x[2] @ paper.theorem3_phase1(t1, gamma)[0]) < 1e-13
    w = paper.theorem3_minimizer(np.array([0.0, -1.0]), 2.0)
    np.testing.assert_array_equal(w, [[10.0, -2.0, 0.0], [10.0, -2.0, -2.0]])


def test_rotation_and_label_scaling_move_the_limit_with_solve_flow():
    data = paper.theorem3_data(5.0)
    base = np.asarray(
        imf.solve_flow(imf.ReLUNeuron(np.zeros(3)), data, gtol=1e-10).model.weight
    )
    s = base[2]
    assert S_RANGE[5.0][0] < s < S_RANGE[5.0][1]
    for i in range(2):
        m = paper.random_rotation(jr.key(i), 3)
        assert np.allclose(m @ m.T, np.eye(3), atol=1e-14) and np.linalg.det(m) > 0
        rotated = paper.rotate(data, m)
        res = imf.solve_flow(imf.ReLUNeuron(np.zeros(3)), rotated, gtol=1e-10)
        assert np.max(np.abs(np.asarray(res.model.weight) - m @ base)) <= 1e-9
    for c in (0.25, 4.0):
        res = imf.solve_flow(
            imf.ReLUNeuron(np.zeros(3)), paper.scale_labels(data, c), gtol=1e-10
        )
        assert np.max(np.abs(np.asarray(res.model.weight) - c * base)) <= 1e-9
    with pytest.raises(ValueError, match="orthogonal"):
        paper.rotate(data, 2 * np.eye(3))


def test_w3_is_frozen_after_t1_along_solve_flow():
    gamma = 2.0
    data = paper.theorem3_data(gamma)
    t1 = paper.theorem3_switch_time(gamma)
    ts = np.concatenate([[0.0], [0.5 * t1], t1 + np.geomspace(0.05, 20.0, 12)])
    path = paper.flow_path(imf.ReLUNeuron(np.zeros(3)), data, ts, gtol=1e-10)
    w = np.stack([np.asarray(m.weight) for m in path])
    np.testing.assert_allclose(
        w[1], paper.theorem3_phase1(0.5 * t1, gamma)[0], atol=1e-9
    )
    w3_at_t1 = paper.theorem3_phase1(t1, gamma)[0, 2]
    assert np.max(np.abs(w[2:, 2] - w[2, 2])) <= 1e-12  # frozen, to the last bit
    assert abs(w[2, 2] - w3_at_t1) <= 1e-8  # at the value it had at t_1
    assert np.max(np.abs(w[-1, :2] - [5.0, -1.0])) <= 1e-8


@pytest.mark.parametrize("alpha", [1.0, 3.0])
def test_sigma_prime_at_zero_with_solve_flow(alpha):
    data = paper.theorem3_data(5.0, alpha)
    stuck = imf.solve_flow(imf.ReLUNeuron(np.zeros(3), grad_at_zero=0.0), data)
    assert stuck.status == imf.Status.converged
    assert np.all(np.asarray(stuck.model.weight) == 0.0)
    assert float(stuck.loss) == pytest.approx(290.0 * alpha**2, rel=1e-15)
    limits = [
        np.asarray(
            imf.solve_flow(
                imf.ReLUNeuron(np.zeros(3), grad_at_zero=g), data, gtol=1e-10
            ).model.weight
        )
        for g in (0.3, 1.0)
    ]
    assert np.max(np.abs(limits[0] - limits[1])) <= 1e-9
    exact = _exact_limit(data, grad_at_zero=0.3)
    assert np.max(np.abs(exact - _exact_limit(data))) <= 1e-12
    assert np.max(np.abs(limits[0] - exact)) <= 1e-9


def test_leaky_relu_limit_is_the_projection_for_flow_and_gd():
    rng_key = jr.key(11)
    checked = 0
    for i in range(6):
        kx, ky, kw = jr.split(jr.fold_in(rng_key, i), 3)
        x = np.asarray(jr.normal(kx, (3, 5), dtype=float))
        y = np.asarray(jr.normal(ky, (3,), dtype=float)) + np.array([1.0, -1.0, 0.0])
        w0 = np.asarray(jr.normal(kw, (5,), dtype=float))
        data = imf.Dataset(x, y)
        target = np.where(y >= 0, y, y / 0.2)
        expected = w0 - x.T @ np.linalg.solve(x @ x.T, x @ w0 - target)
        # A strictly monotone sigma has an affine zero-loss set: projection = formula.
        g = paper.zero_loss_set(data, negative_slope=0.2)
        np.testing.assert_allclose(g.project(w0), expected, atol=1e-12)
        model = imf.ReLUNeuron(w0, negative_slope=0.2)
        lr = 1.0 / np.linalg.eigvalsh(x.T @ x).max()
        gd, _, gnorm = paper.gd_to_steady_state(model, data, lr)
        assert float(gnorm) < 1e-12
        np.testing.assert_allclose(gd.weight, expected, atol=1e-9)
        exact = imf.exact_flow(model, data)
        if exact.status == imf.Status.converged:  # else a sliding mode (not covered)
            np.testing.assert_allclose(exact.model.weight, expected, atol=1e-9)
            checked += 1
    assert checked >= 3


# --- zero-loss sets and projections ---------------------------------------------------


def _enumerated_projection(x, y, p):
    """Closest point of G by enumerating active sets (independent of quadprog)."""
    eq, ineq = x[y > 0], x[y == 0]
    best, best_dist = None, np.inf
    for k in range(len(ineq) + 1):
        for active in it.combinations(range(len(ineq)), k):
            rows = np.vstack([eq, ineq[list(active)]])
            rhs = np.concatenate([y[y > 0], np.zeros(k)])
            w = p - np.linalg.pinv(rows) @ (rows @ p - rhs)
            feasible = np.all(np.abs(eq @ w - y[y > 0]) < 1e-10) and np.all(
                ineq @ w < 1e-10
            )
            if feasible and np.linalg.norm(w - p) < best_dist:
                best, best_dist = w, np.linalg.norm(w - p)
    return best


def _slsqp_projection(x, y, p):
    eq, ineq = x[y > 0], x[y == 0]
    cons = []
    if len(eq):
        cons.append(
            {"type": "eq", "fun": lambda w: eq @ w - y[y > 0], "jac": lambda w: eq}
        )
    if len(ineq):
        cons.append(
            {"type": "ineq", "fun": lambda w: -(ineq @ w), "jac": lambda w: -ineq}
        )
    res = scipy.optimize.minimize(
        lambda w: 0.5 * np.sum((w - p) ** 2),
        p,
        jac=lambda w: w - p,
        method="SLSQP",
        constraints=cons,
        options={"ftol": 1e-16, "maxiter": 500},
    )
    feasible = np.all(np.abs(eq @ res.x - y[y > 0]) < 1e-8) and np.all(
        ineq @ res.x < 1e-8
    )
    return res.x if res.success and feasible else None  # SLSQP fails on redundant rows


@pytest.mark.parametrize("seed", range(12))
def test_projection_onto_G_matches_independent_solvers(seed):
    key = jr.key(100 + seed)
    d = 2 + seed % 4
    n = 2 + seed % 5
    kx, kt, kp = jr.split(key, 3)
    x = np.asarray(jr.normal(kx, (n, d), dtype=float))
    y = np.maximum(
        x @ np.asarray(jr.normal(kt, (d,), dtype=float)), 0.0
    )  # teacher in G
    g = paper.zero_loss_set(imf.Dataset(x, y))
    assert not g.is_empty
    for p in 3.0 * np.asarray(jr.normal(kp, (4, d), dtype=float)):
        w = g.project(p)
        assert g.violation(w) <= 1e-12
        np.testing.assert_allclose(w, _enumerated_projection(x, y, p), atol=1e-9)
        other = _slsqp_projection(x, y, p)
        if other is not None:
            np.testing.assert_allclose(w, other, atol=1e-6)
        assert g.distance(p) == pytest.approx(np.linalg.norm(w - p), abs=1e-15)


def test_zero_loss_set_emptiness_and_l1_minimum():
    assert paper.zero_loss_set(imf.Dataset([[1.0, 0.0]], [-1.0])).is_empty
    # w_1 = 1 and w_1 <= 0: infeasible only through the inequality (the LP says so).
    g = paper.zero_loss_set(imf.Dataset([[1.0, 0.0], [2.0, 0.0]], [1.0, 0.0]))
    assert g.is_empty
    with pytest.raises(ValueError, match="empty"):
        g.project(np.zeros(2))
    # Inconsistent equalities: w_1 = 1 and w_1 = 2.
    assert paper.zero_loss_set(
        imf.Dataset([[1.0, 0.0], [1.0, 0.0]], [1.0, 2.0])
    ).is_empty
    # Theorem 3: G = {(5, -1, s): s <= 1}; min ||w||_1 = 6 at s = 0.
    g = paper.zero_loss_set(paper.theorem3_data(2.0))
    np.testing.assert_allclose(g.minimize_l1(), [5.0, -1.0, 0.0], atol=1e-9)
    assert g.contains([5.0, -1.0, 1.0]) and not g.contains([5.0, -1.0, 1.0 + 1e-6])
    points = g.sample(jr.key(0), 32)
    assert all(g.contains(p) for p in points)
    assert np.ptp(points[:, 2]) > 0.5  # spread along the ray, not one point


# --- falsification engine -------------------------------------------------------------


def _theorem3_samples(gammas=(0.0, 1.0, 5.0)):
    out = []
    for gamma in gammas:
        data = paper.theorem3_data(gamma)
        res = imf.exact_flow(imf.ReLUNeuron(np.zeros(3)), data)
        out.append(paper.flow_sample(f"X_{gamma:g}", data, res))
    return out


def test_falsification_refutes_norms_and_not_a_constant():
    samples = _theorem3_samples()
    # A stuck flow (sigma'(0) = 0: loss 290) takes no part.
    data = paper.theorem3_data(5.0)
    stuck = imf.exact_flow(imf.ReLUNeuron(np.zeros(3), grad_at_zero=0.0), data)
    samples.append(paper.flow_sample("stuck", data, stuck))
    regs = [
        paper.L2Norm(),
        paper.L1Norm(),
        paper.DistanceToStart(),
        paper.ConstantRegularizer(),
        paper.CallableRegularizer(lambda w: np.max(np.abs(w)), "linf"),
        paper.CallableRegularizer(lambda w: w[2] ** 2, "w3^2"),
    ]
    m = paper.random_rotation(jr.key(3), 3)
    report = paper.falsify(samples, regs, transforms=[(m, 2.0)])
    assert not any("stuck" in r.samples for r in report.rows)
    for name in ("||w||_2", "||w||_1", "||w - w0||_2"):
        assert all(report.refuted(name, t) for t in "ABC"), name
    assert not report.refuted("constant")
    # ||w||_inf = 5 on all of W: only the moved ties (C) catch it.
    assert not report.refuted("linf", "A") and not report.refuted("linf", "B")
    assert report.refuted("linf", "C")
    # A user R without a known minimizer: the gap is a lower bound, still a refutation.
    assert report.refuted("w3^2", "A") and not report.worst("w3^2", "A").exact
    # The gaps against closed forms: G = {(5, -1, s): s <= 1}, s_5 from the exact flow.
    s5 = samples[2].limit[2]
    l2 = report.worst("||w||_2", "A")
    assert l2.samples == ("X_5",) and l2.exact
    assert l2.value == pytest.approx(np.sqrt(26 + s5**2) - np.sqrt(26), rel=1e-9)
    assert report.worst("||w||_1", "A").value == pytest.approx(abs(s5), rel=1e-8)
    ties = [r for r in report.rows if r.test == "B" and r.regularizer == "constant"]
    assert len(ties) == 3  # every pair of limits lies in W_1, a common zero-loss subset
    table = report.to_markdown()
    assert re.search(r"\| constant \| no \|", table)
    assert re.search(r"\| \|\|w\|\|_2 \| \*\*yes\*\* \|", table)


def test_moved_samples_are_the_flows_of_the_moved_data():
    sample = _theorem3_samples((2.0,))[0]
    m = paper.random_rotation(jr.key(5), 3)
    moved = sample.transformed(m, 3.0)
    np.testing.assert_allclose(moved.limit, _exact_limit(moved.data), atol=1e-12)
    assert moved.zero_loss()


# --- Theorem 8 ------------------------------------------------------------------------


def test_theorem8_ratio_and_monotone_distance_on_random_problems():
    problems = paper.random_realizable_problems(jr.key(8), 120, 3, 3)
    few = paper.random_realizable_problems(jr.key(8), 5, 3, 3)
    np.testing.assert_array_equal(few.x, problems.x[:5])  # member i is index-stable
    study = paper.theorem8_study(problems, key=jr.key(9))
    ratios = study.ratio[study.counted]
    assert len(ratios) >= 30
    assert np.all(
        ratios >= 1 - 1e-12
    )  # w_inf lies in G, so it is no closer than P_G(w0)
    assert np.all(ratios <= 2.0)
    assert np.any(ratios > 1 + 1e-6)  # the projection is not always the answer
    increase = study.monotone_increase[study.counted]
    assert np.all(np.isfinite(increase)) and np.max(increase) <= 1e-12
    # Independent distance for a few counted runs (active-set enumeration).
    for i in np.nonzero(study.counted)[0][:5]:
        p = _enumerated_projection(problems.x[i], problems.y[i], problems.start[i])
        assert study.dist[i] == pytest.approx(
            np.linalg.norm(p - problems.start[i]), abs=1e-9
        )


def test_adversarial_search_is_seeded_and_reports_its_worst_case():
    kwargs = dict(num_random=40, num_climbs=1, steps_per_climb=40)
    a = paper.adversarial_ratio_search(jr.key(2), 3, 2, **kwargs)
    b = paper.adversarial_ratio_search(jr.key(2), 3, 2, **kwargs)
    assert a.ratio == b.ratio and np.array_equal(a.x, b.x)
    assert 1.0 <= a.ratio <= 2.0 and a.ratio >= a.history[0]
    np.testing.assert_allclose(
        a.limit, _exact_limit(imf.Dataset(a.x, a.y), a.start), atol=1e-12
    )
    g = paper.zero_loss_set(imf.Dataset(a.x, a.y))
    dist = np.linalg.norm(_enumerated_projection(a.x, a.y, a.start) - a.start)
    assert a.ratio == pytest.approx(np.linalg.norm(a.limit - a.start) / dist, rel=1e-9)
    assert g.contains(a.limit)


# --- depth 2 --------------------------------------------------------------------------


def test_gd_changes_balancedness_by_the_exact_per_step_formula():
    key = jr.key(4)
    kw, kv, kb, kx, ky = jr.split(key, 5)
    model = imf.TwoLayerReLU(
        np.asarray(jr.normal(kw, (2, 3), dtype=float)),
        np.asarray(jr.normal(kv, (2,), dtype=float)),
        np.asarray(jr.normal(kb, (2,), dtype=float)),
    )
    data = imf.Dataset(
        np.asarray(jr.normal(kx, (5, 3), dtype=float)),
        np.asarray(jr.normal(ky, (5,), dtype=float)),
    )
    gd = paper.gd_balancedness(model, data, 0.05, 300)
    assert gd.formula_error <= 1e-14
    assert np.max(np.abs(gd.change)) > 1e-6  # GD does drift
    total = np.asarray(gd.final.invariants() - model.invariants())
    np.testing.assert_allclose(total, gd.predicted.sum(axis=0), rtol=1e-10, atol=1e-14)
    assert gd.loss[-1] < gd.loss[0]


def test_richardson_extrapolation_recovers_known_limits():
    eps = np.array([1.0, 1e-1, 1e-2, 1e-3, 1e-4])
    for order in (1.0, 2.0):
        values = -0.26 + 0.3 * eps**order + 0.01 * eps ** (order + 1)
        ex = paper.extrapolate_to_zero(eps, values, noise=1e-13)
        # The truncation error is O(eps^(order + 1)); the error estimate covers it.
        assert abs(ex.value + 0.26) <= min(ex.error, 1e-7 if order == 1 else 1e-10)
        assert abs(ex.last + 0.26) > 100 * abs(
            ex.value + 0.26
        )  # better than the raw value
        assert ex.order == pytest.approx(order, abs=1e-2)
    # Differences below the noise are not fitted: the last value stands.
    flat = paper.extrapolate_to_zero(
        eps, np.full(5, 2.0) + 1e-14 * np.arange(5), noise=1e-9
    )
    assert flat.value == pytest.approx(2.0, abs=1e-12)


def test_depth2_limits_level_off_and_tie_with_gamma0():
    s5 = paper.eps_sweep(paper.theorem3_data(5.0), [1e-2, 1e-3])
    s0 = paper.eps_sweep(paper.theorem3_data(0.0), [1e-3])
    assert s5.converged.all() and s0.converged.all()
    assert np.all(s5.loss < 1e-16) and np.all(s5.balancedness_error < 1e-10)
    np.testing.assert_allclose(s0.u[0], [5.0, -1.0, 0.0], atol=1e-8)
    np.testing.assert_allclose(s5.u[:, :2], [[5.0, -1.0]] * 2, atol=1e-8)
    assert np.all((s5.u[:, 2] > -0.27) & (s5.u[:, 2] < -0.25))
    assert abs(s5.u[0, 2] - s5.u[1, 2]) < 1e-5  # levelled off
    # The two limits tie in parameter space: both are zero-loss points of both datasets.
    samples = [
        paper.flow_sample("X_0", paper.theorem3_data(0.0), s0.results[0]),
        paper.flow_sample("X_5", paper.theorem3_data(5.0), s5.results[1]),
    ]
    balanced = paper.CallableRegularizer(
        lambda th: th[:-1] @ th[:-1] - th[-1] ** 2, "bal"
    )
    report = paper.falsify(samples, [paper.L2Norm(), balanced], member_tol=1e-8)
    assert report.refuted("||w||_2", "B") and not report.refuted("bal")
