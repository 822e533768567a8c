import math
import warnings
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from ._custom_types import Params
from ._data import Dataset
from ._kinks import KinkSolver
from ._lanes import fsal
from ._loss import AbstractLoss, SumSquareLoss
from ._objective import AbstractFlow, diagnose, GradientFlow, Objective
from ._result import FlowResult, Status, STATUS_CODE, status_from_code
from ._tail import TailJump


DEFAULT_CONTROLLER = dfx.PIDController(rtol=1e-12, atol=1e-14)


def solve_flow(
    model: eqx.Module,
    data: Dataset,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController = DEFAULT_CONTROLLER,
    gtol: float = 1e-9,
    t1: float = math.inf,
    dt0: float | None = None,
    max_steps: int = 100_000,
    ts: ArrayLike | None = None,
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    flow: AbstractFlow = GradientFlow(),
    tail: TailJump | None = None,
) -> FlowResult:
    """Run the gradient flow $\\dot\\theta = -\\nabla L(\\theta)$ from `model` to a steady state.

    The solve stops at the first accepted step with $\\|\\nabla L\\| <$ `gtol` (a
    `diffrax.Event`), at `t1`, or after `max_steps`; which one is in `status`,
    and nothing is raised for a trajectory that fails. With an explicit solver the
    gradient norm cannot fall much below its noise floor, about
    $\\lambda_{\\max}(\\nabla^2 L)\\,(\\text{rtol}\\,\\|\\theta\\| + \\text{atol})$: keep
    `gtol` above it (the defaults, rtol 1e-12 and atol 1e-14 against gtol 1e-9,
    do for well-scaled problems).

    Args:
        model: the initialization, an `eqx.Module` predictor $x \\mapsto f(x)$.
        data: the dataset the loss is taken over.
        loss: `SumSquareLoss()` (the paper's half-sum, default) or `MeanSquareLoss()`.
        solver, stepsize_controller: any Diffrax solver and controller, passed
            through (defaults: `Tsit5()` with `PIDController(rtol=1e-12, atol=1e-14)`).
        gtol: the steady-state threshold on $\\|\\nabla L\\|_2$.
        t1: the time limit (infinite by default).
        dt0: the first step; None lets an adaptive controller choose.
        max_steps: the step limit.
        ts: optional increasing save times in [0, t1] for the diagnostics (loss,
            $\\|\\nabla L\\|$ and the model's invariants); the trajectory itself is
            never stored.
        trainable: which leaves are trained, as in `eqx.partition` (a filter
            function or a pytree of bools); the rest stay frozen. Default: every
            inexact array.
        flow: the vector field: `GradientFlow()` (default), or e.g.
            `FilippovFlow()` for ReLU nets whose flow slides along kinks.
        tail: a `TailJump()` finishes the exponential tail with a verified
            Gauss-Newton jump to the limit (incompatible with `ts`); None integrates
            all the way to `gtol`.

    Returns:
        A `FlowResult`.

    Raises:
        ValueError: for a non-positive or non-finite `gtol`, a non-positive `t1`
            or `max_steps`, a bad save grid, or a model that rejects the data's shape.
    """
    check_arguments(model, data, gtol, t1, max_steps, stepsize_controller)
    if data.x.dtype != jnp.float64:
        warnings.warn(
            "float64 is off, so limits are good to about 1e-6 at best: call "
            "jax.config.update('jax_enable_x64', True) at start-up",
            stacklevel=2,
        )
    if ts is not None:
        if tail is not None:
            raise ValueError("ts diagnostics are not available with a tail jump")
        ts = _check_ts(ts, t1)
    params, skeleton = eqx.partition(model, trainable)
    objective = Objective(skeleton, loss)
    return solve_one(
        flow,
        objective,
        params,
        data,
        solver,
        stepsize_controller,
        jnp.asarray(gtol, dtype=float),
        jnp.asarray(t1, dtype=float),
        None if dt0 is None else jnp.asarray(dt0, dtype=float),
        max_steps,
        ts,
        tail,
    )


@eqx.filter_jit
def solve_one(
    flow: AbstractFlow,
    objective: Objective,
    params: Params,
    data: Dataset,
    solver: dfx.AbstractSolver,
    controller: dfx.AbstractStepSizeController,
    gtol: Float[Array, ""],
    t1: Float[Array, ""],
    dt0: Float[Array, ""] | None,
    max_steps: int,
    ts: Float[Array, " n_save"] | None,
    tail: TailJump | None = None,
) -> FlowResult:
    if tail is not None:
        return _solve_with_tail(
            flow,
            objective,
            params,
            data,
            solver,
            controller,
            gtol,
            t1,
            dt0,
            max_steps,
            tail,
        )
    sol = _integrate(
        flow,
        objective,
        params,
        data,
        solver,
        controller,
        0.0,
        t1,
        dt0,
        max_steps,
        gtol,
        ts,
    )
    final = jtu.tree_map(lambda y: y[-1], sol.ys[0])
    return _flow_result(
        flow,
        objective,
        params,
        final,
        data,
        solver,
        t_final=sol.ts[0][-1],
        accepted=sol.stats["num_accepted_steps"],
        rejected=sol.stats["num_rejected_steps"],
        code=_result_code(sol.result),
        ts=None if ts is None else sol.ts[1],
        diagnostics=None if ts is None else sol.ys[1],
    )


def _integrate(
    flow,
    objective,
    y0,
    data,
    solver,
    controller,
    t0,
    t1,
    dt0,
    max_steps,
    target,
    ts=None,
) -> dfx.Solution:
    """One `diffeqsolve` from (t0, y0) until the flow's speed falls below `target`;
    `ys[0]` holds the end, and `ys[1]` the diagnostics on `ts` if given."""

    def reached(t, y, args, **kwargs):
        del t, kwargs
        return flow.speed(objective, y, args) < target

    subs = [dfx.SubSaveAt(t1=True)]
    if ts is not None:
        subs.append(
            dfx.SubSaveAt(ts=ts, fn=lambda t, y, args: diagnose(objective, y, args))
        )
    solver, controller = flow.integrator(objective, solver, controller)
    return dfx.diffeqsolve(
        flow.term(objective),
        solver,
        t0=t0,
        t1=t1,
        dt0=dt0,
        y0=y0,
        args=data,
        saveat=dfx.SaveAt(subs=subs),
        stepsize_controller=controller,
        event=dfx.Event(reached),
        max_steps=max_steps,
        throw=False,
    )


def _flow_result(
    flow,
    objective,
    params,
    final,
    data,
    solver,
    *,
    t_final,
    accepted,
    rejected,
    code,
    jumps=0,
    jump_cost=0,
    ts=None,
    diagnostics=None,
) -> FlowResult:
    """The `FlowResult` of a flow from `params` that ended at `final` with status
    index `code` (overridden by `nonfinite` where anything is NaN or inf)."""
    loss = objective(final, data)
    speed = flow.speed(objective, final, data)
    status = Status.where(
        all_finite((final, loss, speed)), status_from_code(code), Status.nonfinite
    )
    return FlowResult(
        init=objective.model(params),
        model=objective.model(final),
        loss=loss,
        grad_norm=speed,
        t_final=t_final,
        num_steps=accepted,
        num_rejected=rejected,
        num_vf_evals=count_evals(solver, accepted + rejected) + jumps * jump_cost,
        status=status,
        num_jumps=jnp.asarray(jumps),
        ts=ts,
        diagnostics=diagnostics,
    )


def _solve_with_tail(
    flow, objective, params, data, solver, controller, gtol, t1, dt0, max_steps, tail
):
    """Integrate until the speed falls below the jump threshold, jump, and, if the
    jump is rejected, integrate on to a threshold `retry` times lower (at least gtol)."""

    def phase(carry):
        t, y, accepted, rejected, jumps, target, code, _ = carry
        sol = _integrate(
            flow, objective, y, data, solver, controller, t, t1, dt0, max_steps, target
        )
        y = jtu.tree_map(lambda a: a[-1], sol.ys[0])
        accepted = accepted + sol.stats["num_accepted_steps"]
        rejected = rejected + sol.stats["num_rejected_steps"]
        finished = sol.result != dfx.RESULTS.event_occurred
        try_jump = ~finished & (target > gtol)
        jumped, ok = tail.jump(flow, objective, y, data, gtol)
        ok = try_jump & ok
        y = jtu.tree_map(lambda a, b: jnp.where(ok, a, b), jumped, y)
        done = jnp.where(ok | ~try_jump, STATUS_CODE["converged"], -1)
        code = jnp.where(finished, _result_code(sol.result), done)
        code = jnp.where(
            accepted + rejected >= max_steps, STATUS_CODE["step_limit"], code
        )
        target = jnp.maximum(target / tail.retry, gtol)
        t = sol.ts[0][-1]
        return t, y, accepted, rejected, jumps + try_jump, target, code, code >= 0

    zero = jnp.asarray(0)
    start = (
        jnp.asarray(0.0),
        params,
        zero,
        zero,
        zero,
        jnp.maximum(gtol, tail.threshold),
        zero - 1,
        jnp.asarray(False),
    )
    t_final, final, accepted, rejected, jumps, _, code, _ = jax.lax.while_loop(
        lambda c: ~c[-1], phase, start
    )
    return _flow_result(
        flow,
        objective,
        params,
        final,
        data,
        solver,
        t_final=t_final,
        accepted=accepted,
        rejected=rejected,
        code=code,
        jumps=jumps,
        jump_cost=tail.cost(objective.model(params), data, flow),
    )


def all_finite(tree) -> Bool[Array, ""]:
    """Whether every entry of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jtu.tree_leaves(tree)]))


def _result_code(result: dfx.RESULTS):
    """How a `diffeqsolve` ended, as an index into STATUS_NAMES."""
    return jnp.select(
        [
            result == dfx.RESULTS.event_occurred,
            result == dfx.RESULTS.max_steps_reached,
            result == dfx.RESULTS.successful,
        ],
        [
            STATUS_CODE["converged"],
            STATUS_CODE["step_limit"],
            STATUS_CODE["time_limit"],
        ],
        STATUS_CODE["solver_failure"],
    )


def count_evals(solver, steps_tried, fsal_check: bool = False):
    """Gradient evaluations: the solver's new stages per tried step plus the
    steady-state check after it (none with `fsal_check` for an FSAL solver:
    `solve_ensemble` reads it off the last stage, see `end_velocity`), and two
    at the start (initial step, FSAL or first check). Exact to within those
    start-up evaluations and the FSAL refreshes after kink crossings; -1 for
    solvers whose stage count is not fixed (implicit ones)."""
    last_stage = fsal(solver)
    if isinstance(solver, dfx.Euler):
        per_step = 1
    elif isinstance(solver, dfx.AbstractERK) and isinstance(
        solver.tableau, dfx.ButcherTableau
    ):
        per_step = len(solver.tableau.c) + (0 if last_stage else 1)
    else:
        return jnp.asarray(-1)
    return (per_step + (not (fsal_check and last_stage))) * steps_tried + 2


def end_velocity(
    solver: dfx.AbstractSolver, solver_state
) -> tuple[Params, Bool[Array, ""]] | None:
    """The field at the end of the last step, where the solver keeps it, and
    whether it is exact there: an FSAL Runge-Kutta solver's last stage (Diffrax
    keeps its state as (first_step, f1)); for `KinkSolver`, that of its solver,
    exact only if the step kept its pieces. None for other solvers."""
    if isinstance(solver, KinkSolver):
        inner = end_velocity(solver.solver, solver_state.inner)
        return None if inner is None else (inner[0], inner[1] & solver_state.fresh)
    if not fsal(solver):
        return None
    first_step, f1 = solver_state
    return f1, ~first_step


def check_model_data(model, data) -> None:
    """Raise a ValueError unless `data` is a Dataset that `model` maps to scalars."""
    if not isinstance(data, Dataset):
        raise ValueError(
            f"data must be an implicit_flow.Dataset, got {type(data).__name__}"
        )
    try:
        out = eqx.filter_eval_shape(model, data.x[0])
    except Exception as error:
        raise ValueError(
            f"the model cannot take inputs of dimension d = {data.dim}: {error}"
        ) from error
    if out.shape != ():
        raise ValueError(f"the model must return a scalar, got shape {out.shape}")


def check_arguments(model, data, gtol, t1, max_steps, controller) -> None:
    """Raise a ValueError naming the first bad argument of a flow solve."""
    check_model_data(model, data)
    if not (np.isfinite(gtol) and gtol > 0):
        raise ValueError(f"gtol must be positive and finite, got {gtol}")
    if not t1 > 0:
        raise ValueError(f"t1 must be positive, got {t1}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if isinstance(controller, dfx.PIDController):
        for name in ("rtol", "atol"):
            value = getattr(controller, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(
                    f"stepsize_controller.{name} must be positive, got {value}"
                )


def _check_ts(ts: ArrayLike, t1: float) -> Float[Array, " n_save"]:
    ts = np.asarray(ts, dtype=float)
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"ts must be a non-empty vector, got shape {ts.shape}")
    if not (np.all(np.isfinite(ts)) and np.all(np.diff(ts) >= 0)):
        raise ValueError("ts must be finite and non-decreasing")
    if ts[0] < 0 or ts[-1] > t1:
        raise ValueError(f"ts must lie in [0, t1 = {t1}], got [{ts[0]}, {ts[-1]}]")
    return jnp.asarray(ts)
