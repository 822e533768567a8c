"""Work-precision of flow solvers and of GD: error of the limit point against cost.

Host-side: every point is one batched run (all starts in one call of a compiled
solve), timed after a warm-up call so compilation is not counted. The error is the
distance of each run's end point to a high-accuracy limit of the same start:
`exact_flow` where it covers the model, else Dopri8 at rtol 1e-12.

Stopping rule. An explicit solver cannot push $\\|\\nabla L\\|$ much below
$\\lambda_{\\max}(\\nabla^2 L)(\\text{rtol}\\,\\|\\theta\\| + \\text{atol})$ (see
`solve_flow`), so at each tolerance the adaptive solvers stop at that floor (never
below `gtol`), with $\\lambda_{\\max}$ and $\\|\\theta\\|$ taken at the reference
limits. Fixed steps and GD have no floor and stop at `gtol`. The error is thus what
a user gets at that setting: integration error plus the distance left when the run
stops.
"""

import csv
import dataclasses
import os
import time
from collections.abc import Sequence

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import PRNGKeyArray

from ._data import Dataset
from ._gd import _flat, _flow_limits, _sharpness_each, _solve_flows, run_gd
from ._loss import AbstractLoss, SumSquareLoss
from ._result import STATUS_NAMES, status_names
from .models import ReLUNeuron
from .paper._datasets import theorem3_data


ADAPTIVE = (dfx.Bosh3(), dfx.Tsit5(), dfx.Dopri5(), dfx.Dopri8(), dfx.Kvaerno5())
FIXED = (dfx.Euler(), dfx.Heun())
RTOLS = (1e-4, 1e-6, 1e-8, 1e-10)
STEP_FRACTIONS = (1 / 4, 1 / 16, 1 / 64)  # of 2 / lambda_max at the starts


@dataclasses.dataclass(frozen=True)
class WorkPrecisionPoint:
    """One method at one setting, over the batch of starts (final).

    Attributes:
        method: the solver's class name, or "GD".
        setting: "rtol", "dt" or "lr".
        value: the setting's value (atol is rtol / 100).
        gtol: the stopping threshold used.
        error_median, error_max: of $\\|\\theta_{end} - \\theta_{ref}\\|_2$ over starts.
        vf_evals: mean gradient evaluations per start (NaN where unknown: implicit
            solvers).
        steps: mean accepted steps per start.
        time_s: wall time of the batched run, compilation excluded (best of 3).
        statuses: counts, e.g. "converged=4 step_limit=1".
    """

    method: str
    setting: str
    value: float
    gtol: float
    error_median: float
    error_max: float
    vf_evals: float
    steps: float
    time_s: float
    statuses: str


def work_precision(
    model: eqx.Module,
    data: Dataset,
    inits: eqx.Module,
    *,
    adaptive: Sequence[dfx.AbstractSolver] = ADAPTIVE,
    fixed: Sequence[dfx.AbstractSolver] = FIXED,
    rtols: Sequence[float] = RTOLS,
    step_fractions: Sequence[float] = STEP_FRACTIONS,
    gd: bool = True,
    loss: AbstractLoss = SumSquareLoss(),
    gtol: float = 1e-9,
    max_steps: int = 200_000,
    key: PRNGKeyArray | None = None,
) -> list[WorkPrecisionPoint]:
    """Error of the limit point against work, per method and setting.

    Args:
        model: the model structure (as for `run_gd`).
        data: the dataset.
        inits: the starts, `model` with a leading n_init axis on every array leaf.
        adaptive: solvers run with `PIDController(rtol, atol=rtol / 100)` at each of
            `rtols`.
        fixed: solvers run with `ConstantStepSize` at each step
            $dt = f \\cdot 2/\\lambda_{\\max}$, f in `step_fractions`, with
            $\\lambda_{\\max}$ the largest sharpness over the starts.
        gd: also run plain GD at learning rates $\\eta = dt$ on the same ladder.
        loss, gtol, max_steps: as for `solve_flow` (see the module docstring for the
            adaptive solvers' gtol).
        key: for the Lanczos start vectors of the sharpness (default `jr.key(0)`).

    Returns:
        One `WorkPrecisionPoint` per method and setting, in the order run.
    """
    key = jr.key(0) if key is None else key
    reference = _flow_limits(
        inits,
        data,
        {"loss": loss, "gtol": 1e-11, "solver": dfx.Dopri8(), "max_steps": max_steps},
        exact=True,
    )
    limits = np.asarray(_flat(reference.model, 1))
    floor_sharpness = float(jnp.max(_sharpness_each(reference.model, data, loss, key)))
    floor_norm = float(np.max(np.linalg.norm(limits, axis=-1)))
    edge = 2 / float(jnp.max(_sharpness_each(inits, data, loss, key)))
    error = lambda end: np.linalg.norm(np.asarray(end) - limits, axis=-1)
    base = {"loss": loss, "max_steps": max_steps}
    points = []
    for solver in adaptive:
        runs = []
        for rtol in rtols:
            floor = floor_sharpness * (rtol * floor_norm + rtol / 100)
            options = {
                **base,
                "solver": solver,
                "gtol": max(gtol, floor),
                "stepsize_controller": dfx.PIDController(
                    rtol=jnp.asarray(rtol), atol=jnp.asarray(rtol / 100)
                ),
            }
            runs.append(("rtol", rtol, options))
        points += _time_flows(inits, data, type(solver).__name__, runs, error)
    for solver in fixed:
        runs = [
            (
                "dt",
                f * edge,
                {
                    **base,
                    "solver": solver,
                    "gtol": gtol,
                    "stepsize_controller": dfx.ConstantStepSize(),
                    "dt0": jnp.asarray(f * edge),
                },
            )
            for f in step_fractions
        ]
        points += _time_flows(inits, data, type(solver).__name__, runs, error)
    if gd:
        run = lambda lr: run_gd(
            model,
            data,
            inits,
            loss=loss,
            learning_rates=jnp.asarray([lr]),
            gtol=gtol,
            max_steps=max_steps,
        )
        jax.block_until_ready(run(step_fractions[0] * edge))  # compile
        for f in step_fractions:
            result, elapsed = _timed(run, f * edge)
            points.append(
                _point(
                    "GD",
                    "lr",
                    f * edge,
                    gtol,
                    error(_flat(result.model, 2)[0]),
                    np.asarray(result.num_steps[0]) + 1,
                    np.asarray(result.num_steps[0]),
                    elapsed,
                    status_names(result.status)[0],
                )
            )
    return points


def _time_flows(inits, data, method, runs, error) -> list[WorkPrecisionPoint]:
    """Time `solve_flow` on the batch at each (setting, value, options) of `runs`,
    after an untimed first call that compiles."""
    jax.block_until_ready(_solve_flows(inits, data, runs[0][2]))
    points = []
    for setting, value, options in runs:
        result, elapsed = _timed(lambda o: _solve_flows(inits, data, o), options)
        evals = np.asarray(result.num_vf_evals, dtype=float)
        points.append(
            _point(
                method,
                setting,
                value,
                options["gtol"],
                error(_flat(result.model, 1)),
                np.where(evals < 0, np.nan, evals),
                np.asarray(result.num_steps),
                elapsed,
                status_names(result.status),
            )
        )
    return points


def _timed(fn, arg, repeats: int = 3):
    """(fn(arg), the best wall time of `repeats` calls)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        result = jax.block_until_ready(fn(arg))
        best = min(best, time.perf_counter() - start)
    return result, best


def _point(method, setting, value, gtol, errors, evals, steps, elapsed, names):
    counts = {name: int(np.sum(names == name)) for name in STATUS_NAMES}
    return WorkPrecisionPoint(
        method=method,
        setting=setting,
        value=float(value),
        gtol=float(gtol),
        error_median=float(np.median(errors)),
        error_max=float(np.max(errors)),
        vf_evals=float(np.mean(evals)),
        steps=float(np.mean(steps)),
        time_s=elapsed,
        statuses=" ".join(f"{name}={n}" for name, n in counts.items() if n),
    )


def write_work_precision(
    points: Sequence[WorkPrecisionPoint], out_dir: str, stem: str = "work_precision"
) -> dict[str, str]:
    """Write `points` as `<stem>.csv`, `<stem>.md` and `<stem>.png` in `out_dir`.

    The PNG (matplotlib, Agg backend; the optional `plot` extra) plots the median
    error against gradient evaluations and against wall time, one line per method.

    Returns:
        The paths written, by kind ("csv", "md", "png").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    paths = {
        kind: os.path.join(out_dir, f"{stem}.{kind}") for kind in ("csv", "md", "png")
    }
    fields = [f.name for f in dataclasses.fields(WorkPrecisionPoint)]
    with open(paths["csv"], "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=fields)
        writer.writeheader()
        writer.writerows(dataclasses.asdict(p) for p in points)
    with open(paths["md"], "w") as file:
        file.write(markdown_table(points))
    figure, (by_evals, by_time) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, method in enumerate(dict.fromkeys(p.method for p in points)):
        mine = [p for p in points if p.method == method]
        errors = [p.error_median for p in mine]
        style = {"marker": "o", "color": f"C{i}", "label": method}
        if not np.isnan(mine[0].vf_evals):
            by_evals.loglog([p.vf_evals for p in mine], errors, **style)
        by_time.loglog([p.time_s for p in mine], errors, **style)
    by_evals.set(
        xlabel="gradient evaluations per start",
        ylabel="median error of limit",
        title="error vs evaluations",
    )
    by_time.set(xlabel="wall time of the batch [s]", title="error vs time")
    by_time.legend(fontsize="small")
    for axis in (by_evals, by_time):
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(paths["png"], dpi=120)
    plt.close(figure)
    return paths


def markdown_table(points: Sequence[WorkPrecisionPoint]) -> str:
    """`points` as a markdown table."""
    lines = [
        "| method | setting | gtol | median error | max error | evals | steps "
        "| time [s] | status |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for p in points:
        evals = "n/a" if np.isnan(p.vf_evals) else f"{p.vf_evals:.0f}"
        lines.append(
            f"| {p.method} | {p.setting}={p.value:.2e} | {p.gtol:.1e} | "
            f"{p.error_median:.2e} | {p.error_max:.2e} | {evals} | {p.steps:.0f} | "
            f"{p.time_s:.3f} | {p.statuses} |"
        )
    return "\n".join(lines) + "\n"


def run_bench_solvers(
    *,
    out_dir: str = "bench-solvers",
    num_inits: int = 4,
    seed: int = 0,
    gamma: float = 2.0,
) -> int:
    """`implicit-flow bench-solvers`: the work-precision study on the paper's problem.

    A single ReLU neuron on the Theorem 3 data $(X_\\gamma, y)$ of Vardi & Shamir
    (2021), from $w = 0$ and `num_inits - 1` small positive random starts (every
    point active at first, so the flow crosses the kink $\\langle x_3, w\\rangle = 0$),
    against `exact_flow`. Writes `work_precision.{csv,md,png}` to `out_dir`, prints
    the table, returns the exit code.
    """
    if num_inits < 1:
        raise ValueError(f"num_inits must be at least 1, got {num_inits}")
    data = theorem3_data(gamma)
    starts = jnp.abs(0.1 * jr.normal(jr.key(seed), (num_inits, data.dim), data.x.dtype))
    starts = starts.at[0].set(0.0)
    model = ReLUNeuron(jnp.zeros(data.dim))
    inits = eqx.filter_vmap(ReLUNeuron)(starts)
    start = time.perf_counter()
    points = work_precision(model, data, inits)
    paths = write_work_precision(points, out_dir)
    print(markdown_table(points))
    print(
        f"{time.perf_counter() - start:.1f} s. ReLU neuron, Theorem 3 data "
        f"(gamma = {gamma}), {num_inits} starts, reference exact_flow; "
        f"wrote {', '.join(paths.values())}"
    )
    return 0
