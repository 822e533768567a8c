"""`implicit-flow reproduce`: every check of the paper digest's Section 3, as a report.

Each claim of Vardi & Shamir (COLT 2021) that a simulator can check becomes a row:
what the paper says, what we computed (with digits), pass or fail. The report goes to
`out_dir/report.md` with PNG figures (Fig. 1, Fig. 2(a), Fig. 2(b), the Theorem 8
ratio histogram, the init->limit map of a single neuron, balancedness). Host-side:
numpy, printing and files are allowed here; the numerics live in the other modules.
"""

import dataclasses
import functools as ft
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import diffrax as dfx
import jax
import jax.random as jr
import numpy as np

from .._data import Dataset
from .._result import Status
from .._solve import solve_flow
from ..models import ReLUNeuron, TwoLayerReLU
from ._batch import neuron_flows, two_layer_flows
from ._datasets import (
    depth2_start,
    random_rotation,
    rotate,
    scale_labels,
    theorem3_data,
    theorem3_minimizer,
    theorem3_phase1,
    theorem3_switch_time,
)
from ._depth2 import (
    effective_weight,
    eps_sweep,
    extrapolate_to_zero,
    flow_path,
    gd_balancedness,
)
from ._falsify import falsify, flow_sample, FlowSample
from ._gd import gd_to_steady_state
from ._regularizers import (
    CallableRegularizer,
    ConstantRegularizer,
    DistanceToStart,
    L1Norm,
    L2Norm,
)
from ._theorem8 import (
    adversarial_ratio_search,
    distance_monotonicity,
    random_realizable_problems,
    RealizableProblems,
    theorem8_study,
    time_span,
)
from ._zero_loss import zero_loss_set, zero_loss_set_of


# The paper's numbers (Theorem 3): intervals of s in the limit alpha(5, -1, s), and
# brackets of t_1.
S_INTERVALS = {
    0.0: (0.0, 0.0),
    1.0: (-0.045, -0.035),
    2.0: (-0.12, -0.10),
    5.0: (-0.22, -0.20),
}
T1_BRACKETS = {1.0: (0.169, 0.17), 2.0: (0.138, 0.139), 5.0: (0.086, 0.087)}
FIG_GAMMAS = (0.0, 1.0, 2.0, 5.0, 20.0)
SEED = 0


@dataclasses.dataclass(frozen=True)
class _Config:
    quick: bool
    alphas: tuple[float, ...]
    falsify_gammas: tuple[float, ...]
    falsify_alphas: tuple[float, ...]
    num_rotations: int
    t8_shapes: tuple[tuple[int, int], ...]
    t8_num: int
    t8_checked: int
    adversarial: tuple[tuple[int, int], ...]
    adv_random: int
    adv_climbs: int
    adv_steps: int
    eps: tuple[float, ...]
    gd_steps: int
    path_points: int
    gauss_num: int
    map_points: int


def _config(quick: bool) -> _Config:
    if quick:
        return _Config(
            quick=True,
            alphas=(1.0, 3.0),
            falsify_gammas=(0.0, 1.0, 5.0),
            falsify_alphas=(1.0,),
            num_rotations=1,
            t8_shapes=((2, 2), (3, 3), (3, 5)),
            t8_num=60,
            t8_checked=60,
            adversarial=((3, 2),),
            adv_random=100,
            adv_climbs=2,
            adv_steps=60,
            eps=(1.0, 1e-1, 1e-2, 1e-3),
            gd_steps=4000,
            path_points=25,
            gauss_num=20,
            map_points=21,
        )
    return _Config(
        quick=False,
        alphas=(1.0, 3.0),
        falsify_gammas=FIG_GAMMAS,
        falsify_alphas=(1.0, 2.0),
        num_rotations=3,
        t8_shapes=((2, 2), (3, 3), (3, 5), (5, 3), (8, 4)),
        t8_num=600,
        t8_checked=600,
        adversarial=((2, 2), (3, 2), (4, 3), (6, 3)),
        adv_random=1000,
        adv_climbs=6,
        adv_steps=1500,
        eps=(1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5),
        gd_steps=20000,
        path_points=60,
        gauss_num=200,
        map_points=81,
    )


@dataclasses.dataclass(frozen=True)
class _Row:
    section: str
    claim: str
    computed: str
    passed: bool


class _Report:
    def __init__(self, out: Path, cfg: _Config):
        self.out, self.cfg = out, cfg
        self.rows: list[_Row] = []
        self.sections: list[tuple[str, str]] = []  # (title, markdown)
        self.figures: list[tuple[str, str]] = []  # (file, caption)
        self.section = ""

    def check(self, claim: str, computed: str, passed: bool) -> None:
        row = _Row(self.section, claim, computed, bool(passed))
        self.rows.append(row)
        mark = "pass" if row.passed else "FAIL"
        print(f"    [{mark}] {claim}: {computed}", flush=True)

    def figure(self, fig, name: str, caption: str) -> None:
        fig.savefig(self.out / name, dpi=110, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.figures.append((name, caption))

    def markdown(self, seconds: float) -> str:
        passed = sum(r.passed for r in self.rows)
        lines = [
            "# Vardi & Shamir (COLT 2021), reproduced and extended",
            "",
            f"`implicit-flow reproduce{' --quick' if self.cfg.quick else ''}`: "
            f"**{passed}/{len(self.rows)} checks pass** in {seconds:.0f} s "
            f"(float64, seed {SEED}; JAX {jax.__version__}, backend "
            f"{jax.default_backend()}).",
            "",
            "Flows: exact piecewise-affine flows (`exact_flow`, "
            "`piecewise_affine_flow`) for "
            "single neurons; `solve_flow` (Tsit5, PID rtol 1e-12, atol 1e-14) for "
            "depth 2 and "
            "for cross-checks. Loss: half-sum; sigma'(0) = 1 unless stated.",
            "",
            "| # | section | the paper says | we computed | pass |",
            "|---|---|---|---|---|",
        ]
        for i, r in enumerate(self.rows, 1):
            mark = "pass" if r.passed else "**FAIL**"
            cell = lambda s: s.replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {i} | {r.section} | {cell(r.claim)} | {cell(r.computed)} | {mark} |"
            )
        for title, body in self.sections:
            lines += ["", f"## {title}", "", body]
        lines += ["", "## Figures", ""]
        for name, caption in self.figures:
            lines += [f"![{caption}]({name})", "", f"*{name}*: {caption}", ""]
        return "\n".join(lines) + "\n"


def run_reproduce(quick: bool = False, out_dir: str = "reproduction") -> int:
    """Runs every check of the paper digest's Section 3 and writes the report.

    Writes `out_dir/report.md` (one row per claim: what the paper says, what was
    computed, pass/fail) and PNG figures. Prints a progress line per check. The
    default run takes a few minutes on 2 CPU cores; `quick=True` under a minute.

    Args:
        quick: smaller sweeps (fewer random problems, eps down to 1e-3, coarser grids).
        out_dir: the output folder (created if missing).

    Returns:
        0 if every row passes, else 1.

    Raises:
        RuntimeError: if float64 is off (the checks compare to 1e-12).
    """
    if not jax.config.jax_enable_x64:
        raise RuntimeError(
            "run_reproduce needs float64: call jax.config.update('jax_enable_x64', "
            "True) "
            "at start-up"
        )
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _config(quick)
    report = _Report(out, cfg)
    start = time.perf_counter()
    key = jr.key(SEED)
    steps: list[tuple[str, Callable]] = [
        ("3.1 Theorem 3", _theorem3),
        ("3.2 sigma'(0)", _derivative_at_zero),
        ("3.3 Theorem 1 (leaky, linear)", _strictly_monotone),
        ("3.4 falsification (Theorem 5)", _falsification),
        ("3.5 Theorem 8", _theorem8),
        ("3.6 depth 2", _depth2),
        ("3.7 Gaussian starts", _gaussian_starts),
        ("init->limit map", _init_map),
    ]
    for i, (name, step) in enumerate(steps):
        report.section = name
        t0 = time.perf_counter()
        print(f"[reproduce] {name} ...", flush=True)
        try:
            step(report, cfg, jr.fold_in(key, i))
        except Exception as error:  # a crashed check is a failed row, not a lost report
            traceback.print_exc()
            report.check(f"{name} runs to completion", f"raised {error!r}", False)
        print(
            f"[reproduce] {name} done in {time.perf_counter() - t0:.1f} s", flush=True
        )
    seconds = time.perf_counter() - start
    (out / "report.md").write_text(report.markdown(seconds))
    passed = sum(r.passed for r in report.rows)
    print(
        f"[reproduce] {passed}/{len(report.rows)} checks pass in {seconds:.1f} s; "
        f"report: {out / 'report.md'}",
        flush=True,
    )
    return 0 if passed == len(report.rows) else 1


# ------------------------------------------------------------------------------
# 3.1 Theorem 3


def _theorem3_flows(gammas, alphas):
    """Exact flows from 0 on every (gamma, alpha), in one batch call."""
    cases = [(g, a) for g in gammas for a in alphas]
    data = [theorem3_data(g, a) for g, a in cases]
    batch = neuron_flows(
        np.stack([np.asarray(d.x) for d in data]),
        np.stack([np.asarray(d.y) for d in data]),
        np.zeros((len(cases), 3)),
    )
    return {c: (d, f) for c, d, f in zip(cases, data, batch.flows, strict=True)}


def _theorem3(rep: _Report, cfg: _Config, key) -> None:
    flows = _theorem3_flows(FIG_GAMMAS, cfg.alphas)
    for gamma in FIG_GAMMAS:
        worst_w12, worst_loss, ss, ok = 0.0, 0.0, [], True
        for alpha in cfg.alphas:
            _, f = flows[gamma, alpha]
            w = f.hidden[0]
            ok &= f.status == "converged"
            worst_w12 = max(worst_w12, np.max(np.abs(w[:2] / alpha - [5.0, -1.0])))
            worst_loss = max(worst_loss, f.loss / alpha**2)
            ss.append(w[2] / alpha)
        s = ss[0]
        if gamma in S_INTERVALS:
            lo, hi = S_INTERVALS[gamma]
            claim = f"gamma = {gamma:g}: GF from 0 ends at alpha(5, -1, s), " + (
                "s = 0 exactly" if gamma == 0 else f"s in ({lo}, {hi})"
            )
            inside = abs(s) <= 1e-12 if gamma == 0 else lo < s < hi
        else:
            claim = f"gamma = {gamma:g} (Fig. 1): GF from 0 ends in W_alpha (s <= 0)"
            inside = s <= 0
        rep.check(
            claim,
            f"s = {s:.12f}; |w_12/alpha - (5, -1)| = {worst_w12:.1e}; "
            f"loss/alpha^2 = {worst_loss:.1e} (alpha in {list(cfg.alphas)})",
            ok and inside and worst_w12 <= 1e-12 and worst_loss <= 1e-20,
        )
    spread = max(
        abs(flows[g, a][1].hidden[0, 2] / a - flows[g, 1.0][1].hidden[0, 2])
        for g in FIG_GAMMAS
        for a in cfg.alphas
    )
    rep.check(
        "s does not depend on alpha",
        f"max |s(alpha) - s(1)| = {spread:.1e}",
        spread <= 1e-12,
    )

    # Phase 1 in closed form, t_1, and w_3 frozen after t_1.
    phase_err, freeze_err = 0.0, 0.0
    for (gamma, alpha), (_, f) in flows.items():
        t1 = f.switch_times[0] if len(f.switch_times) else 1.0
        ts = np.linspace(0.0, t1, 60)
        closed = theorem3_phase1(ts, gamma, alpha)
        phase_err = max(phase_err, np.max(np.abs(f.at(ts)[:, 0] - closed)) / alpha)
        if len(f.switch_times):
            later = f.at(t1 + np.concatenate([np.geomspace(1e-9, 1e4, 80), [np.inf]]))
            freeze_err = max(
                freeze_err, np.max(np.abs(later[:, 0, 2] - f.at([t1])[0, 0, 2])) / alpha
            )
    rep.check(
        "phase 1: w(t) = alpha(5,-1,1) - exp(-t X^T X) alpha(5,-1,1) until t_1",
        f"max |exact flow - closed form| / alpha on [0, t_1] = {phase_err:.1e}",
        phase_err <= 1e-12,
    )
    for gamma, (lo, hi) in T1_BRACKETS.items():
        f = flows[gamma, 1.0][1]
        t1 = f.switch_times[0]
        root = theorem3_switch_time(gamma)
        rep.check(
            f"gamma = {gamma:g}: t_1 in ({lo}, {hi}), one switch (x_3 leaves)",
            f"t_1 = {t1:.12f} (exact flow), {root:.12f} (root of the closed form); "
            f"{len(f.switch_times)} switch",
            lo < t1 < hi and abs(t1 - root) <= 1e-12 and len(f.switch_times) == 1,
        )
    rep.check(
        "phase 2: w_3 is frozen after t_1",
        "max |w_3(t) - w_3(t_1)| / alpha, t in t_1 + [1e-9, 1e4] and inf: "
        f"{freeze_err:.1e}",
        freeze_err <= 1e-12,
    )

    # solve_flow against the exact flows; symmetries with solve_flow.
    limits = {}
    err = 0.0
    for gamma in FIG_GAMMAS:
        res = solve_flow(ReLUNeuron(np.zeros(3)), theorem3_data(gamma), gtol=1e-10)
        limits[gamma] = np.asarray(res.model.weight)
        err = max(err, np.max(np.abs(limits[gamma] - flows[gamma, 1.0][1].hidden[0])))
        err = err if res.status == Status.converged else np.inf
    rep.check(
        "solve_flow (Tsit5) reaches the exact limits",
        f"max |solve_flow - exact| over gamma in {list(FIG_GAMMAS)}: {err:.1e}",
        err <= 1e-8,
    )
    gammas = (1.0, 5.0) if not cfg.quick else (5.0,)
    rot_err, scale_err = 0.0, 0.0
    for i in range(cfg.num_rotations):
        m = random_rotation(jr.fold_in(key, i), 3)
        for gamma in gammas:
            res = solve_flow(
                ReLUNeuron(np.zeros(3)), rotate(theorem3_data(gamma), m), gtol=1e-10
            )
            rot_err = max(
                rot_err,
                np.max(np.abs(np.asarray(res.model.weight) - m @ limits[gamma])),
            )
    for c in (0.5, 3.0):
        for gamma in gammas:
            data = scale_labels(theorem3_data(gamma), c)
            res = solve_flow(ReLUNeuron(np.zeros(3)), data, gtol=1e-10)
            scale_err = max(
                scale_err,
                np.max(np.abs(np.asarray(res.model.weight) - c * limits[gamma])),
            )
    rep.check(
        "rotating the data (X M^T) rotates the limit (M w_inf), M in SO(3)",
        f"max |w_inf(X M^T) - M w_inf(X)| = {rot_err:.1e} ({cfg.num_rotations} random "
        "M, "
        f"solve_flow)",
        rot_err <= 1e-9,
    )
    rep.check(
        "scaling the labels by c scales the limit by c",
        f"max |w_inf(c y) - c w_inf(y)| = {scale_err:.1e} (c in {{0.5, 3}}, "
        "solve_flow)",
        scale_err <= 1e-9,
    )

    # The zero-loss sets.
    loss_w = 0.0
    for gamma in FIG_GAMMAS:
        for alpha in cfg.alphas:
            data = theorem3_data(gamma, alpha)
            w = theorem3_minimizer(np.array([0.0, -0.1, -1.0, -10.0]), alpha)
            pred = np.maximum(w @ np.asarray(data.x).T, 0.0)
            loss_w = max(
                loss_w, np.max(0.5 * np.sum((pred - np.asarray(data.y)) ** 2, axis=1))
            )
    rep.check(
        "every point of W_alpha = {alpha(5,-1,s): s <= 0} has zero loss for every "
        "gamma",
        f"max loss at s in {{0, -0.1, -1, -10}}: {loss_w:.1e}",
        loss_w <= 1e-24,
    )
    cap_err, min_norm_err = 0.0, 0.0
    for gamma in FIG_GAMMAS:
        for alpha in cfg.alphas:
            g = zero_loss_set(theorem3_data(gamma, alpha))
            top = theorem3_minimizer(7.0, alpha)
            expect = top if gamma == 0 else theorem3_minimizer(1.0, alpha)
            cap_err = max(cap_err, np.max(np.abs(g.project(top) - expect)) / alpha)
            min_norm_err = max(
                min_norm_err,
                np.max(np.abs(g.project(np.zeros(3)) - theorem3_minimizer(0.0, alpha)))
                / alpha,
            )
    rep.check(
        "zero-loss set: {alpha(5,-1,s): s <= alpha} for gamma > 0, the whole line for "
        "gamma = 0",
        f"projection of alpha(5,-1,7) onto G (QP): max error {cap_err:.1e}",
        cap_err <= 1e-12,
    )
    rep.check(
        "the minimum-norm global minimum is alpha(5, -1, 0)",
        f"projection of 0 onto G (QP): max error {min_norm_err:.1e}",
        min_norm_err <= 1e-12,
    )
    _figure1(rep, flows)


def _paths_with_w_line(paths: dict, name: str, line_label: str, title: str):
    """A 3-D figure of one path per gamma, with the line W_1 and the plane
    <x_3, w> = 0 (w_2 + w_3 = 0) of the Theorem 3 data."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(7.5, 6))
    ax = fig.add_subplot(projection="3d")
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(paths)))
    for (gamma, path), color in zip(paths.items(), colors, strict=True):
        ax.plot(*path.T, color=color, label=f"gamma = {gamma:g}")
        ax.scatter(*path[-1], color=color, s=18)
    line = theorem3_minimizer(np.linspace(-0.6, 0.0, 2))
    ax.plot(*line.T, "r-", lw=3, alpha=0.6, label=line_label)
    w1, w2 = np.meshgrid(np.linspace(0, 5.5, 2), np.linspace(-1.5, 1.0, 2))
    ax.plot_surface(w1, w2, -w2, alpha=0.15, color="gray")
    ax.set(xlabel=f"{name}_1", ylabel=f"{name}_2", zlabel=f"{name}_3", title=title)
    ax.legend(loc="upper left", fontsize=8)
    return fig


def _figure1(rep: _Report, flows) -> None:

    ts = np.concatenate([[0.0], np.geomspace(1e-4, 20.0, 400)])
    paths = {gamma: flows[gamma, 1.0][1].at(ts)[:, 0] for gamma in FIG_GAMMAS}
    fig = _paths_with_w_line(
        paths,
        "w",
        "W_1 = {(5, -1, s): s <= 0}",
        "Fig. 1: GF of one ReLU neuron from 0 (exact), plane <x_3, w> = 0",
    )
    rep.figure(
        fig,
        "fig1_theorem3_trajectories.png",
        "Fig. 1, exact flows from 0 on (X_gamma, y_1); the line W_1 and the plane "
        "<x_3, w> = 0 (w_2 + w_3 = 0).",
    )


# ------------------------------------------------------------------------------
# 3.2 sigma'(0)


def _derivative_at_zero(rep: _Report, cfg: _Config, key) -> None:
    del key
    stuck, ok = [], True
    for alpha in cfg.alphas:
        data = theorem3_data(5.0, alpha)
        res = solve_flow(ReLUNeuron(np.zeros(3), grad_at_zero=0.0), data)
        exact = neuron_flows(
            np.asarray(data.x)[None],
            np.asarray(data.y)[None],
            np.zeros((1, 3)),
            grad_at_zero=0.0,
        )
        w = np.asarray(res.model.weight)
        ok &= bool(res.status == Status.converged) and np.all(w == 0)
        ok &= np.all(exact.limits == 0) and exact.loss[0] == 290.0 * alpha**2
        stuck.append(float(res.loss) / (290.0 * alpha**2) - 1)
    rep.check(
        "sigma'(0) = 0 (JAX's convention): from w = 0 the flow never moves, loss 290 "
        "alpha^2",
        f"w_inf = 0 exactly (solve_flow and exact); loss / (290 alpha^2) - 1 = "
        f"{max(map(abs, stuck)):.1e} (alpha in {list(cfg.alphas)})",
        ok and max(map(abs, stuck)) <= 1e-15,
    )
    data = theorem3_data(5.0)
    ode = {
        s: np.asarray(
            solve_flow(
                ReLUNeuron(np.zeros(3), grad_at_zero=s), data, gtol=1e-10
            ).model.weight
        )
        for s in (0.3, 1.0)
    }
    exact = neuron_flows(
        np.asarray(data.x)[None].repeat(2, 0),
        np.asarray(data.y)[None].repeat(2, 0),
        np.zeros((2, 3)),
    )
    ex03 = neuron_flows(
        np.asarray(data.x)[None],
        np.asarray(data.y)[None],
        np.zeros((1, 3)),
        grad_at_zero=0.3,
    ).limits[0]
    d_ode = np.max(np.abs(ode[0.3] - ode[1.0]))
    d_exact = np.max(np.abs(ex03 - exact.limits[0]))
    rep.check(
        "any sigma'(0) > 0 gives the same limit (gamma = 5)",
        f"sigma'(0) = 0.3 vs 1: |difference| = {d_exact:.1e} (exact), {d_ode:.1e} "
        f"(solve_flow); s = {ex03[2]:.10f}",
        d_exact <= 1e-12 and d_ode <= 1e-9,
    )


# ------------------------------------------------------------------------------
# 3.3 Theorem 1


def _strictly_monotone(rep: _Report, cfg: _Config, key) -> None:
    num, n, d = (4 if cfg.quick else 12), 3, 5
    kx, ky, kw = jr.split(key, 3)
    xs = np.asarray(jr.normal(kx, (num, n, d), dtype=float))
    ys = np.asarray(jr.normal(ky, (num, n), dtype=float)) + np.array([1.0, -1.5, 0.5])
    w0s = np.asarray(jr.normal(kw, (num, d), dtype=float))
    for slope in (0.2, 1.0):
        targets = np.where(ys >= 0, ys, ys / slope)
        formula = np.stack(
            [
                w0 - x.T @ np.linalg.solve(x @ x.T, x @ w0 - t)
                for x, t, w0 in zip(xs, targets, w0s, strict=True)
            ]
        )
        exact = neuron_flows(xs, ys, w0s, negative_slope=slope)
        conv = exact.converged
        err_exact = np.max(np.abs(exact.limits[conv] - formula[conv]), initial=0.0)
        err_qp, err_gd, steps, gnorm = 0.0, 0.0, 0, 0.0
        for i in range(num):
            data = Dataset(xs[i], ys[i])
            err_qp = max(
                err_qp,
                np.max(np.abs(zero_loss_set(data, slope).project(w0s[i]) - formula[i])),
            )
            lr = 1.0 / np.linalg.eigvalsh(xs[i].T @ xs[i]).max()
            gd, k, g = gd_to_steady_state(
                ReLUNeuron(w0s[i], negative_slope=slope), data, lr
            )
            err_gd = max(err_gd, np.max(np.abs(np.asarray(gd.weight) - formula[i])))
            steps, gnorm = max(steps, int(k)), max(gnorm, float(g))
        name = "linear" if slope == 1 else f"leaky ReLU (slope {slope})"
        slid = exact.slid & conv
        computed = (
            f"{int(conv.sum())}/{num} exact flows converge"
            + (
                f" ({int(slid.sum())} through a Filippov sliding mode on a kink)"
                if slid.any()
                else ""
            )
            + f"; |exact GF - formula| = {err_exact:.1e}; GD (eta = 1/lambda_max, "
            f"<= {steps} steps) on all {num}: |GD - formula| = {err_gd:.1e}; "
            f"|affine-set projection - formula| = {err_qp:.1e}"
        )
        ok = conv.sum() >= num // 2 and err_exact <= 1e-9 and err_gd <= 1e-9
        ok &= err_qp <= 1e-12 and gnorm < 1e-12
        if slope < 1:
            err_ode = 0.0
            smooth = np.nonzero(conv & ~exact.slid)[0][:2]  # the ODE chatters on faces
            ok &= len(smooth) > 0
            for i in smooth:
                res = solve_flow(
                    ReLUNeuron(w0s[i], negative_slope=slope),
                    Dataset(xs[i], ys[i]),
                    gtol=1e-10,
                )
                err_ode = max(
                    err_ode, np.max(np.abs(np.asarray(res.model.weight) - formula[i]))
                )
            computed += (
                f"; |solve_flow - formula| = {err_ode:.1e} ({len(smooth)} cases "
                "without sliding)"
            )
            ok &= err_ode <= 1e-9
        rep.check(
            f"{name}, random starts, labels with negative entries: GF and GD that "
            "converge end at w0 - X^T (X X^T)^-1 (X w0 - sigma^-1(y))",
            computed,
            ok,
        )


# ------------------------------------------------------------------------------
# 3.4 falsification


def _neuron_reflow(sample: FlowSample) -> np.ndarray:
    data = sample.data
    batch = neuron_flows(
        np.asarray(data.x)[None], np.asarray(data.y)[None], sample.start[None]
    )
    return batch.limits[0]


def _linf(w):
    return np.max(np.abs(w))


def _falsification(rep: _Report, cfg: _Config, key) -> None:
    flows = _theorem3_flows(cfg.falsify_gammas, cfg.falsify_alphas)
    samples = [
        FlowSample(f"X_{g:g}, y_{a:g}", data, np.zeros(3), f.hidden[0])
        for (g, a), (data, f) in flows.items()
    ]
    regs = [
        L2Norm(),
        L1Norm(),
        DistanceToStart(),
        ConstantRegularizer(),
        CallableRegularizer(_linf, "||w||_inf"),
    ]
    transforms = [
        (random_rotation(jr.fold_in(key, i), 3), c)
        for i, c in zip(range(cfg.num_rotations), (1.0, 0.5, 3.0), strict=False)
    ]
    transforms.append((None, 2.0))
    t0 = time.perf_counter()
    result = falsify(
        samples,
        regs,
        transforms=transforms,
        reflow=_neuron_reflow,
        key=jr.fold_in(key, 99),
    )
    seconds = time.perf_counter() - t0
    c_rows = [r for r in result.rows if r.test == "C"]
    moved = len(c_rows) // len(regs)
    expected = sum(r.test == "B" for r in result.rows) // len(regs) * len(transforms)
    equiv = max((r.equivariance_error for r in c_rows), default=np.inf)
    rep.check(
        "symmetries of Theorem 3 hold for the exact flows (limits re-flowed after "
        "rotating / scaling): every tie moves to a tie",
        f"max equivariance error {equiv:.1e}; {moved} of {expected} moved tie pairs "
        "are ties",
        equiv <= 1e-12 and moved == expected > 0,
    )
    for reg in regs[:3]:
        worst = {t: result.worst(reg.name, t) for t in "ABC"}
        rep.check(
            f"R = {reg.name} does not characterize GF from 0 (Theorem 5): refuted by "
            "(A) gap, (B) tie on W_alpha, (C) moved ties",
            "; ".join(
                f"({t}) {worst[t].value:.3e} on {' & '.join(worst[t].samples)}"
                for t in "ABC"
            ),
            all(result.refuted(reg.name, t) for t in "ABC"),
        )
    rep.check(
        "a constant R characterizes everything: never refuted",
        "largest violation "
        f"{max(r.value for r in result.rows if r.regularizer == 'constant'):.1e}"
        f" over {sum(r.regularizer == 'constant' for r in result.rows)} rows",
        not result.refuted("constant"),
    )
    linf = "||w||_inf"
    rep.check(
        "ties spread by rotations / scalings (Theorem 5, step 2) refute R that the "
        "gap and tie tests miss: ||w||_inf is constant (= 5 alpha) on W_alpha",
        f"(A) worst {result.worst(linf, 'A').value:.1e}, (B) worst "
        f"{result.worst(linf, 'B').value:.1e}; (C) worst "
        f"{result.worst(linf, 'C').value:.3e}",
        not result.refuted(linf, "A")
        and not result.refuted(linf, "B")
        and result.refuted(linf, "C"),
    )
    body = (
        f"Samples: exact flows from 0 on (X_gamma, y_alpha), gamma in "
        f"{list(cfg.falsify_gammas)}, alpha in {list(cfg.falsify_alphas)}; transforms "
        "for "
        f"(C): {cfg.num_rotations} random rotations (with label scales) and a pure "
        "label "
        f"scaling by 2, limits re-flowed exactly. {len(result.rows)} rows in "
        f"{seconds:.1f} s.\n\n" + result.to_markdown()
    )
    rep.sections.append(
        ("Falsification of candidate regularizers (single neuron, start 0)", body)
    )


# ------------------------------------------------------------------------------
# 3.5 Theorem 8


def _theorem8(rep: _Report, cfg: _Config, key) -> None:
    ratios, increases, counted, total = [], [], 0, 0
    per_shape = []
    for i, (n, d) in enumerate(cfg.t8_shapes):
        problems = random_realizable_problems(jr.fold_in(key, i), cfg.t8_num, n, d)
        study = theorem8_study(
            problems, key=jr.fold_in(key, 100 + i), num_checked=cfg.t8_checked
        )
        r = study.ratio[study.counted]
        ratios.append(r)
        increases.append(study.monotone_increase[np.isfinite(study.monotone_increase)])
        counted += int(study.counted.sum())
        total += len(problems)
        per_shape.append(
            f"| ({n}, {d}) | {len(problems)} | {int(study.counted.sum())} | "
            f"{np.max(r):.6f} | {np.median(r):.6f} | {np.mean(r > 1 + 1e-9):.2f} |"
        )
    ratios = np.concatenate(ratios)
    increases = np.concatenate(increases)
    rep.check(
        "||w_inf - w0|| <= 2 dist(w0, G) on every run that converges to zero loss",
        f"{counted} counted runs (of {total}; shapes (n, d) in {list(cfg.t8_shapes)}): "
        f"max ratio {ratios.max():.6f}, median {np.median(ratios):.6f}, "
        f"99th percentile {np.quantile(ratios, 0.99):.6f}",
        counted > 0 and ratios.max() <= 2 + 1e-12,
    )
    rep.check(
        "||w(t) - wbar|| is non-increasing for every zero-loss wbar",
        f"largest relative increase {increases.max():.1e} over {len(increases)} runs x "
        "6 "
        "points wbar (projection, limit, 4 random points of G) on ~450 times each",
        len(increases) > 0 and increases.max() <= 1e-12,
    )
    worst = None
    lines = []
    for j, (n, d) in enumerate(cfg.adversarial):
        adv = adversarial_ratio_search(
            jr.fold_in(key, 200 + j),
            n,
            d,
            num_random=cfg.adv_random,
            num_climbs=cfg.adv_climbs,
            steps_per_climb=cfg.adv_steps,
        )
        lines.append(
            f"| ({n}, {d}) | {adv.evaluations} | {adv.history[0]:.6f} | "
            f"{adv.ratio:.6f} |"
        )
        if worst is None or adv.ratio > worst.ratio:
            worst = adv
    # The worst case, re-checked with the ODE solver and along its exact trajectory.
    data = Dataset(worst.x, worst.y)
    res = solve_flow(
        ReLUNeuron(worst.start),
        data,
        gtol=1e-11,
        stepsize_controller=dfx.PIDController(rtol=1e-13, atol=1e-15),
    )
    ode_ratio = float(
        np.linalg.norm(np.asarray(res.model.weight) - worst.start)
        / np.linalg.norm(worst.projection - worst.start)
    )
    g = zero_loss_set_of(worst.x, worst.y)
    batch = neuron_flows(worst.x[None], worst.y[None], worst.start[None])
    mono = distance_monotonicity(
        batch.flows[0],
        np.vstack([worst.projection, worst.limit, g.sample(key, 8)]),
        span=time_span(worst.x),
    )
    rep.check(
        "an adversarial search (random search + hill climbing) stays below 2 (open: is "
        "2 tight?)",
        f"worst ratio found {worst.ratio:.6f} (n = {worst.x.shape[0]}, d = "
        f"{worst.x.shape[1]}); "
        f"solve_flow on the same problem: {ode_ratio:.6f}; monotonicity there: "
        f"{mono:.1e}",
        worst.ratio <= 2 + 1e-12
        and abs(ode_ratio - worst.ratio) <= 1e-6
        and mono <= 1e-12,
    )
    full = ft.partial(np.array2string, precision=17, separator=", ", max_line_width=88)
    body = "\n".join(
        [
            "| shape (n, d) | runs | counted | max ratio | median | fraction > 1 |",
            "|---|---|---|---|---|---|",
            *per_shape,
            "",
            "Adversarial search (seeded):",
            "",
            "| shape (n, d) | flows | best random | best after hill climbing |",
            "|---|---|---|---|",
            *lines,
            "",
            f"Worst case found: ratio {worst.ratio:.9f}, labels from the teacher "
            "(full precision, to re-run it):",
            "",
            "```",
            f"X =\n{full(worst.x)}",
            f"teacher = {full(worst.teacher)}",
            f"y = {full(worst.y)}",
            f"w0 = {full(worst.start)}",
            f"w_inf = {full(worst.limit)}",
            f"P_G(w0) = {full(worst.projection)}",
            "```",
        ]
    )
    rep.sections.append(
        ("Theorem 8: distance travelled vs distance to the zero-loss set", body)
    )
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(ratios, bins=60, color="tab:blue", log=True)
    ax.axvline(2.0, color="r", ls="--", label="Theorem 8 bound 2")
    ax.axvline(
        worst.ratio, color="k", ls=":", label=f"adversarial worst {worst.ratio:.4f}"
    )
    ax.set(
        xlabel="||w_inf - w0|| / dist(w0, G)",
        ylabel="runs",
        title=f"Theorem 8 ratio, {len(ratios)} converged zero-loss runs",
    )
    ax.legend()
    rep.figure(
        fig,
        "theorem8_ratio_histogram.png",
        "Theorem 8 ratio over random realizable single-neuron problems (teacher "
        "labels, Gaussian starts), exact flows.",
    )


# ------------------------------------------------------------------------------
# 3.6 depth 2


def _depth2(rep: _Report, cfg: _Config, key) -> None:
    import matplotlib.pyplot as plt

    data5 = theorem3_data(5.0)
    ts = np.linspace(0.0, 3.0, 61)
    starts = [("(0, 1e-3)", depth2_start(1e-3))]
    kw, kv = jr.split(key)
    starts.append(
        (
            "random",
            TwoLayerReLU(
                np.asarray(jr.normal(kw, (1, 3), dtype=float)),
                np.abs(np.asarray(jr.normal(kv, (1,), dtype=float))),
            ),
        )
    )
    errs, traces = [], {}
    for name, model in starts:
        res = solve_flow(model, data5, ts=ts)
        inv = np.asarray(res.diagnostics["invariants"])[:, 0]
        keep = np.isfinite(inv)
        scale = 1.0 + float(
            np.sum(np.asarray(res.model.hidden_weight) ** 2)
            + np.asarray(res.model.output_weight)[0] ** 2
        )
        errs.append(np.max(np.abs(inv[keep] - float(model.invariants()[0]))) / scale)
        traces[name] = (
            ts[keep],
            np.abs(inv[keep] - float(model.invariants()[0])) / scale,
        )
    rep.check(
        "GF conserves ||w||^2 - v^2 (balancedness)",
        f"max |drift| / (1 + ||theta||^2) on t in [0, 3]: {errs[0]:.1e} from (0, "
        "1e-3), "
        f"{errs[1]:.1e} from a random start (solve_flow diagnostics)",
        max(errs) <= 1e-10,
    )
    lr = 1e-3
    gd = gd_balancedness(depth2_start(1e-3), data5, lr, cfg.gd_steps)
    drift, predicted = float(gd.change.sum()), float(gd.predicted.sum())
    rep.check(
        "GD drifts by exactly eta^2 (||grad_w L||^2 - (dL/dv)^2) per step",
        f"eta = {lr:g}, {cfg.gd_steps} steps: per-step |change - formula| / (1 + "
        "||theta||^2)"
        f" <= {gd.formula_error:.1e}; total drift {drift:.6e} vs formula "
        f"{predicted:.6e}",
        gd.formula_error <= 1e-13
        and abs(drift) > 1e-4
        and abs(drift - predicted) <= 1e-12 * (1 + abs(drift)) * cfg.gd_steps,
    )
    # Finite steps (paper digest Section 4): GD's limit shifts by O(eta).
    u_gd = {lr: effective_weight(gd.final)}
    gd2 = gd_balancedness(depth2_start(1e-3), data5, lr / 2, 2 * cfg.gd_steps)
    u_gd[lr / 2] = effective_weight(gd2.final)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, (t, e) in traces.items():
        axes[0].semilogy(t[1:], np.maximum(e[1:], 1e-18), label=f"GF from {name}")
    axes[0].set(
        xlabel="t", ylabel="|drift| / (1 + ||theta||^2)", title="GF: balancedness error"
    )
    axes[0].legend()
    k = lr * np.arange(1, cfg.gd_steps + 1)
    axes[1].plot(k, np.cumsum(gd.change[:, 0]), label="GD: ||w||^2 - v^2 - (its start)")
    axes[1].plot(
        k, np.cumsum(gd.predicted[:, 0]), "--", label="sum of eta^2(|g_w|^2 - g_v^2)"
    )
    axes[1].set(xlabel="t = eta k", title=f"GD, eta = {lr:g}: drift")
    axes[1].legend()
    rep.figure(
        fig,
        "balancedness.png",
        "Depth 2, (X_5, y): balancedness under GF "
        "(solve_flow) and its exact per-step drift under GD.",
    )

    # Limits u = v w from (0, 1e-3) and Fig. 2(a).
    sweep = {g: eps_sweep(theorem3_data(g), [1e-3]) for g in FIG_GAMMAS}
    u = {g: s.u[0] for g, s in sweep.items()}
    ok = all(s.converged[0] and s.loss[0] <= 1e-16 for s in sweep.values())
    rep.check(
        "depth 2 from (0, 1e-3) on (X_gamma, y): zero loss; gamma = 0 gives "
        "u = (5, -1, 0), gamma > 0 give u = (5, -1, u_3), u_3 < 0",
        "; ".join(f"gamma {g:g}: u_3 = {u[g][2]:+.8f}" for g in FIG_GAMMAS)
        + "; max |u_12 - (5, -1)| = "
        f"{max(np.max(np.abs(v[:2] - [5, -1])) for v in u.values()):.1e}",
        ok
        and np.max(np.abs(u[0.0] - [5.0, -1.0, 0.0])) <= 1e-8
        and all(u[g][2] < 0 for g in FIG_GAMMAS[1:])
        and max(np.max(np.abs(v[:2] - [5, -1])) for v in u.values()) <= 1e-8,
    )
    rep.check(
        "GD with step eta lands elsewhere; the shift is first order in eta "
        "(digest Section 4)",
        f"u_3(GD) - u_3(GF) = {u_gd[lr][2] - u[5.0][2]:+.3e} (eta = {lr:g}), "
        f"{u_gd[lr / 2][2] - u[5.0][2]:+.3e} (eta / 2): ratio "
        f"{(u_gd[lr][2] - u[5.0][2]) / (u_gd[lr / 2][2] - u[5.0][2]):.3f}",
        1.8 <= (u_gd[lr][2] - u[5.0][2]) / (u_gd[lr / 2][2] - u[5.0][2]) <= 2.2,
    )
    times = np.concatenate(
        [[0.0], np.geomspace(1e-2, 2.0, cfg.path_points), [4.0, 8.0]]
    )
    paths = {
        gamma: np.stack(
            [
                effective_weight(m)
                for m in flow_path(depth2_start(1e-3), theorem3_data(gamma), times)
            ]
        )
        for gamma in FIG_GAMMAS
    }
    fig = _paths_with_w_line(
        paths,
        "u",
        "W_1",
        "Fig. 2(a): u = v w, depth 2 from (0, 1e-3) (solve_flow)",
    )
    rep.figure(
        fig,
        "fig2a_depth2_trajectories.png",
        "Fig. 2(a): u = v w along the depth-2 flow from (0, 1e-3), solve_flow "
        "restarted "
        "on a time grid.",
    )

    # Fig. 2(b): u_3 against eps for gamma = 5; Assumption 12.
    eps = np.array(cfg.eps)
    s5, s0 = eps_sweep(data5, eps), eps_sweep(theorem3_data(0.0), eps)
    ex = extrapolate_to_zero(s5.eps, s5.u[:, 2], noise=2e-9)
    zero = all(s.converged.all() and np.all(s.loss <= 1e-16) for s in (s5, s0))
    rep.check(
        "Assumption 12: GF from (0, eps) reaches zero loss on (X_0, y) and (X_5, y) "
        "for small eps",
        f"eps in {list(cfg.eps)}: all converged, max loss "
        f"{max(s5.loss.max(), s0.loss.max()):.1e}; max balancedness error at the limit "
        f"{max(s5.balancedness_error.max(), s0.balancedness_error.max()):.1e}",
        zero,
    )
    rep.check(
        "lim_{eps->0} u_3 exists and is negative for gamma = 5 (Fig. 2(b) levels off); "
        "gamma = 0 gives u_3 = 0",
        f"u_3(eps = {eps[-1]:g}) = {ex.last:.10f}; Richardson (order {ex.order:.2f}): "
        f"u_3(0+) = {ex.value:.10f} +- {ex.error:.0e}; gamma = 0: max |u_3| = "
        f"{np.max(np.abs(s0.u[:, 2])):.1e}",
        ex.value < 0
        and ex.error < 1e-6
        and np.all(s5.u[:, 2] < 0)
        and np.max(np.abs(s0.u[:, 2])) <= 1e-10,
    )
    rows = "\n".join(
        f"| {e:g} | {v:.12f} | {lo:.1e} |"
        for e, v, lo in zip(s5.eps, s5.u[:, 2], s5.loss, strict=True)
    )
    rep.sections.append(
        (
            "Depth 2: u_3 against eps (gamma = 5)",
            "| eps | u_3 | loss |\n|---|---|---|\n"
            + rows
            + f"\n\nExtrapolated (Richardson, fitted order {ex.order:.3f}): "
            f"u_3(0+) = {ex.value:.12f} +- {ex.error:.1e}.",
        )
    )
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(s5.eps, s5.u[:, 2], "o-", label="u_3(eps), solve_flow")
    ax.axhline(ex.value, color="k", ls=":", label=f"extrapolated {ex.value:.8f}")
    ax.set(
        xlabel="eps", ylabel="u_3 at the limit", title="Fig. 2(b): gamma = 5, depth 2"
    )
    ax.legend()
    rep.figure(
        fig,
        "fig2b_u3_vs_eps.png",
        "Fig. 2(b): u_3 of the depth-2 limit from (0, eps), "
        "gamma = 5, computed with the flow (not GD).",
    )

    # The tie test in parameter space theta = (w, v).
    e_small = eps[-1]
    samples = [
        flow_sample(f"X_{g:g}, eps={e_small:g}", theorem3_data(g), s.results[-1])
        for g, s in ((0.0, s0), (5.0, s5))
    ]
    regs = [
        L2Norm(),
        L1Norm(),
        ConstantRegularizer(),
        CallableRegularizer(
            lambda th: th[:-1] @ th[:-1] - th[-1] ** 2, "||w||^2 - v^2"
        ),
    ]
    m = random_rotation(jr.fold_in(key, 7), 3)

    def reflow(sample):
        res = two_layer_flows(
            [TwoLayerReLU(sample.start[None, :-1], sample.start[-1:])], sample.data
        )[0]
        return np.append(
            np.asarray(res.model.hidden_weight[0]), float(res.model.output_weight[0])
        )

    result = falsify(
        samples, regs, transforms=[(m, 1.0)], reflow=reflow, member_tol=1e-8
    )
    pair = [r for r in result.rows if r.test == "B"]
    rep.check(
        "depth-2 tie on (X_0, y), (X_5, y): both limits are zero-loss points of both "
        "datasets, so R(theta_0) = R(theta_5) for any characterizing R; ||theta||_2 "
        "and "
        "||theta||_1 are refuted",
        f"{len(pair) // len(regs)} tie pair; |R(a) - R(b)|: ||theta||_2 "
        f"{result.worst('||w||_2', 'B').value:.3e}, ||theta||_1 "
        f"{result.worst('||w||_1', 'B').value:.3e} (and after a rotation "
        f"{result.worst('||w||_2', 'C').value:.3e})",
        len(pair) == len(regs)
        and result.refuted("||w||_2", "B")
        and result.refuted("||w||_1", "B"),
    )
    rep.check(
        "Theorem 14: balancedness survives (R constant on the balanced set)",
        f"||w||^2 - v^2: worst tie violation "
        f"{max(r.value for r in result.rows if r.regularizer == '||w||^2 - v^2'):.1e}; "
        "constant R: "
        f"{max(r.value for r in result.rows if r.regularizer == 'constant'):.1e}",
        not result.refuted("||w||^2 - v^2") and not result.refuted("constant"),
    )
    rep.sections.append(
        ("Depth-2 tie test (parameters theta = (w, v))", result.to_markdown())
    )


# ------------------------------------------------------------------------------
# 3.7 small Gaussian starts


def _gaussian_starts(rep: _Report, cfg: _Config, key) -> None:
    lines, fractions = [], []
    scales = (1e-3, 1e-2, 1e-1)
    for i, scale in enumerate(scales):
        for j, gamma in enumerate((1.0, 2.0, 5.0)):
            data = theorem3_data(gamma)
            num = cfg.gauss_num
            starts = scale * np.asarray(
                jr.normal(jr.fold_in(key, 10 * i + j), (num, 3), dtype=float)
            )
            problems = RealizableProblems(
                np.asarray(data.x)[None].repeat(num, 0),
                np.asarray(data.y)[None].repeat(num, 0),
                np.array([5.0, -1.0, 0.0])[None].repeat(num, 0),
                starts,
            )
            fractions.append(_gap_line(lines, f"X_{gamma:g}", scale, problems))
        problems = random_realizable_problems(
            jr.fold_in(key, 100 + i), cfg.gauss_num, 3, 3, start_scale=scale
        )
        _gap_line(lines, "random (3, 3)", scale, problems)
    rep.check(
        "distance to the start fails as an exact characterization from small Gaussian "
        "starts too (Theorem 3 data)",
        "refuted (gap > 1e-8) in "
        + ", ".join(f"{100 * f:.0f}%" for f in fractions)
        + " of converged zero-loss runs (scale 1e-3, 1e-2, 1e-1 x gamma 1, 2, 5)",
        min(fractions) > 0,
    )
    rep.sections.append(
        (
            "Distance to the start from small Gaussian starts (digest check 7)",
            "Gap = ||w_inf - w0|| - dist(w0, G) = R(w_inf) - min_G R for R = ||w - "
            "w0||_2.\n\n"
            "| data | start scale | counted runs | refuted (gap > 1e-8) | median gap | "
            "max gap |\n"
            "|---|---|---|---|---|---|\n" + "\n".join(lines),
        )
    )


def _gap_line(lines, name, scale, problems) -> float:
    study = theorem8_study(problems, num_checked=0)
    gap = (study.travel - study.dist)[study.counted]
    refuted = gap > 1e-8 * (1 + study.travel[study.counted])
    fraction = float(np.mean(refuted)) if len(gap) else 0.0
    med = np.median(gap) if len(gap) else np.nan
    mx = np.max(gap) if len(gap) else np.nan
    lines.append(
        f"| {name} | {scale:g} | {len(gap)} | {100 * fraction:.0f}% | {med:.3e} | "
        f"{mx:.3e} |"
    )
    return fraction


# ------------------------------------------------------------------------------
# the init -> limit map


def _init_map(rep: _Report, cfg: _Config, key) -> None:
    del key
    import matplotlib.pyplot as plt

    gamma = 5.0
    data = theorem3_data(gamma)
    k = cfg.map_points
    a, c = np.meshgrid(np.linspace(-3, 8, k), np.linspace(-4, 4, k))
    starts = np.stack([a.ravel(), np.zeros(a.size), c.ravel()], axis=1)
    num = len(starts)
    batch = neuron_flows(
        np.asarray(data.x)[None].repeat(num, 0),
        np.asarray(data.y)[None].repeat(num, 0),
        starts,
    )
    g = zero_loss_set(data)
    zero = np.array(
        [batch.converged[i] and g.contains(batch.limits[i]) for i in range(num)]
    )
    s = np.where(zero, batch.limits[:, 2], np.nan)
    s_proj = np.array([g.project(w)[2] for w in starts])
    gap = np.where(zero, np.abs(s - s_proj), np.nan)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    extent = (a.min(), a.max(), c.min(), c.max())
    im = axes[0].imshow(
        s.reshape(k, k), origin="lower", extent=extent, aspect="auto", cmap="viridis"
    )
    fig.colorbar(im, ax=axes[0], label="s = w_3 of the limit (5, -1, s)")
    axes[0].set(
        xlabel="w0_1",
        ylabel="w0_3",
        title=f"limit from w0 = (w0_1, 0, w0_3), gamma = {gamma:g} (white: loss > 0)",
    )
    im = axes[1].imshow(
        np.log10(np.maximum(gap, 1e-16)).reshape(k, k),
        origin="lower",
        extent=extent,
        aspect="auto",
        cmap="magma",
    )
    fig.colorbar(im, ax=axes[1], label="log10 |s - s of the projection of w0|")
    axes[1].set(
        xlabel="w0_1", ylabel="w0_3", title="distance from the nearest-zero-loss answer"
    )
    rep.figure(
        fig,
        "init_limit_map.png",
        f"Init -> limit map of one ReLU neuron on (X_{gamma:g}, y_1) over the slice "
        "w0 = (a, 0, c) (exact flows): left, the limit's s (blank where the flow stops "
        "at "
        "positive loss); right, how far it is from the projection of the start onto G.",
    )
    rep.check(
        "init -> limit map: every zero-loss limit lies on the line (5, -1, s), s <= 1 "
        "(the zero-loss set)",
        f"{int(zero.sum())} of {num} starts reach zero loss; s in "
        f"[{np.nanmin(s):.4f}, {np.nanmax(s):.4f}]; limit = projection of the start in "
        f"{100 * np.mean(gap[zero] <= 1e-9):.0f}% of them",
        zero.sum() > 0 and np.nanmax(s) <= 1 + 1e-9,
    )
