import equinox as eqx
import numpy as np
from jaxtyping import Array, Float, Int

from ._custom_types import Scalar


class Status(eqx.Enumeration):
    """How a flow ended; read it without exceptions, e.g. `res.status == Status.converged`."""

    converged = "||grad L|| fell below gtol: a steady state (limit point) was reached."
    step_limit = "max_steps was reached before a steady state."
    time_limit = "t1 was reached before a steady state."
    nonfinite = "The parameters or the loss became NaN or infinite."
    solver_failure = "The solver stopped for another reason (e.g. step-size underflow)."
    diverged = "The iterates diverged (loss grew past a bound)."
    sliding = (
        "The exact flow reached a sliding mode: the field points into a kink surface "
        "from both sides (see the nonsmooth-flows issue)."
    )
    stalled = (
        "The steps collapsed: t advanced by less than 1e-3 max(1, t) over 1000 steps "
        "(e.g. a ReLU flow chattering on a kink it cannot slide along); LanePool only."
    )


STATUS_NAMES = (
    "converged",
    "step_limit",
    "time_limit",
    "nonfinite",
    "solver_failure",
    "diverged",
    "sliding",
    "stalled",
)


STATUS_CODE = {name: code for code, name in enumerate(STATUS_NAMES)}


def status_from_code(code) -> Status:
    """The status whose name is `STATUS_NAMES[code]` (a scalar int array)."""
    status = Status.solver_failure
    for index, name in enumerate(STATUS_NAMES):
        status = Status.where(code == index, getattr(Status, name), status)
    return status


def status_names(status: Status) -> np.ndarray:
    """Host-side: the status names (str array of the status's shape)."""
    lookup = {int(getattr(Status, name)._value): name for name in STATUS_NAMES}
    return np.vectorize(lookup.__getitem__)(np.asarray(status._value))


class FlowResult(eqx.Module):
    """Final. One gradient flow (or, batched, many) from start to end.

    Fields: `init` and `model`, the model at the start and at the end (the limit
    point when `status == Status.converged`); `loss` and `grad_norm` at the end
    (the flow's speed $\\|F(\\theta)\\|$: $\\|\\nabla L\\|$ for the gradient flow, the
    minimal-norm subgradient's norm for `FilippovFlow`); `t_final`; `num_steps` (accepted), `num_rejected`, `num_vf_evals`
    (gradient evaluations, -1 where the solver's count is unknown; a tail jump
    counts one per Jacobian row); `status`; `num_jumps` (tail jumps tried); and,
    when a save grid was asked for, `ts` with `diagnostics` (a dict of arrays
    with a leading n_save axis: loss, grad_norm, and the model's invariants).
    """

    init: eqx.Module
    model: eqx.Module
    loss: Scalar
    grad_norm: Scalar
    t_final: Scalar
    num_steps: Int[Array, ""]
    num_rejected: Int[Array, ""]
    num_vf_evals: Int[Array, ""]
    status: Status
    num_jumps: Int[Array, ""]
    ts: Float[Array, " n_save"] | None = None
    diagnostics: dict[str, Array] | None = None
