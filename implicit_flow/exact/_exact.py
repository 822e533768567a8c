"""Exact gradient flows of piecewise-quadratic losses, as `FlowResult`s."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from .._data import Dataset
from .._loss import AbstractLoss, MeanSquareLoss, SumSquareLoss
from .._objective import diagnose, Objective
from .._result import FlowResult, Status
from ..models import LinearPredictor, ReLUNeuron, TwoLayerReLU
from ._piecewise import piecewise_affine_flow


_STATUS = {
    "converged": Status.converged,
    "sliding": Status.sliding,
    "piece_limit": Status.step_limit,
}


def linear_limit(model: LinearPredictor, data: Dataset) -> LinearPredictor:
    """The flow's limit for a linear predictor: $\\theta_0 + X^+(y - X\\theta_0)$.

    The projection of the start onto the least-squares solution set (Theorem 1 of
    Vardi & Shamir 2021; the minimum-norm solution from $\\theta_0 = 0$).
    """
    x, theta0 = _linear_design(model, data)
    theta = theta0 + np.linalg.pinv(x) @ (np.asarray(data.y) - x @ theta0)
    return _with_hidden(model, theta[None, :])


def exact_flow(
    model: LinearPredictor | ReLUNeuron | TwoLayerReLU,
    data: Dataset,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    ts: ArrayLike | None = None,
    slide: bool = True,
) -> FlowResult:
    """The gradient flow solved exactly, piece by piece, where the loss is piecewise quadratic.

    Covers `LinearPredictor`, `ReLUNeuron` (leaky or not) and `TwoLayerReLU` with
    `train_output=False`: inside a fixed activation pattern the flow is an affine
    ODE solved in closed form, and the pattern switches at the exact time a
    pre-activation crosses zero (see `implicit_flow.exact._piecewise` for the
    assumptions: data in general position; a start on a kink takes the side its
    velocity points to). Where the field points into a kink surface from both
    sides the flow slides along it (the Filippov solution, entered and left at
    exact times), or, with `slide=False`, stops there with `Status.sliding`.

    Returns:
        A `FlowResult` like `solve_flow`'s: `num_steps` counts the affine pieces,
        `num_vf_evals` is 0, `t_final` is inf for a limit reached exactly, and the
        diagnostics on `ts` come from the exact trajectory.

    Raises:
        ValueError: for a model with no piecewise-quadratic loss (e.g. a
            `TwoLayerReLU` whose output layer is trained) or a loss other than the
            two square losses.
    """
    if not isinstance(loss, SumSquareLoss | MeanSquareLoss):
        raise ValueError(f"exact_flow needs a square loss, got {type(loss).__name__}")
    if isinstance(model, LinearPredictor):
        x, theta0 = _linear_design(model, data)
        flow = piecewise_affine_flow(
            x,
            np.asarray(data.y),
            np.ones(1),
            theta0[None, :],
            bias=False,
            negative_slope=1.0,
            mean=isinstance(loss, MeanSquareLoss),
            sliding="filippov" if slide else "stop",
        )
    else:
        hidden0, out_weight, bias = _hidden(model)
        flow = piecewise_affine_flow(
            np.asarray(data.x),
            np.asarray(data.y),
            out_weight,
            hidden0,
            bias=bias,
            negative_slope=model.negative_slope,
            grad_at_zero=model.grad_at_zero,
            mean=isinstance(loss, MeanSquareLoss),
            sliding="filippov" if slide else "stop",
        )
    final = _with_hidden(model, flow.hidden)
    objective = Objective(eqx.partition(model, eqx.is_inexact_array)[1], loss)
    params = eqx.filter(final, eqx.is_inexact_array)
    diagnostics = None
    if ts is not None:
        ts = jnp.asarray(ts, dtype=float)
        path = [
            eqx.filter(_with_hidden(model, h), eqx.is_inexact_array)
            for h in flow.at(np.asarray(ts))
        ]
        diagnostics = jax.tree.map(
            lambda *xs: jnp.stack(xs), *[diagnose(objective, p, data) for p in path]
        )
    return FlowResult(
        init=model,
        model=final,
        loss=objective(params, data),
        grad_norm=objective.grad_norm(params, data),
        t_final=jnp.asarray(flow.t_final),
        num_steps=jnp.asarray(len(flow.patterns)),
        num_rejected=jnp.asarray(0),
        num_vf_evals=jnp.asarray(0),
        status=_STATUS[flow.status],
        num_jumps=jnp.asarray(0),
        ts=ts,
        diagnostics=diagnostics,
    )


def _linear_design(model: LinearPredictor, data: Dataset):
    x = np.asarray(data.x)
    theta0 = np.asarray(model.weight)
    if model.bias is not None:
        x = np.concatenate([x, np.ones((x.shape[0], 1))], axis=1)
        theta0 = np.append(theta0, np.asarray(model.bias))
    return x, theta0


def _hidden(model) -> tuple[Float[np.ndarray, "m p"], np.ndarray, bool]:
    if isinstance(model, ReLUNeuron):
        hidden, out, bias = model.weight[None, :], np.ones(1), model.bias
        bias = None if bias is None else bias[None]
    elif isinstance(model, TwoLayerReLU) and not model.train_output:
        hidden, out, bias = model.hidden_weight, model.output_weight, model.hidden_bias
    else:
        raise ValueError(
            f"exact_flow covers LinearPredictor, ReLUNeuron and TwoLayerReLU with "
            f"train_output=False, got {type(model).__name__}"
            + (" with train_output=True" if isinstance(model, TwoLayerReLU) else "")
        )
    hidden = np.asarray(hidden)
    if bias is not None:
        hidden = np.concatenate([hidden, np.asarray(bias)[:, None]], axis=1)
    return hidden, np.asarray(out), bias is not None


def _with_hidden(model, hidden: Float[np.ndarray, "m p"]):
    """`model` with its hidden parameters replaced by the rows [w_j, b_j] of `hidden`."""
    hidden = jnp.asarray(hidden)
    if isinstance(model, LinearPredictor | ReLUNeuron):
        weight, bias = (
            hidden[0, : model.weight.shape[0]],
            hidden[0, model.weight.shape[0] :],
        )
        model = eqx.tree_at(lambda m: m.weight, model, weight)
        if model.bias is not None:
            model = eqx.tree_at(lambda m: m.bias, model, bias[0])
        return model
    d = model.hidden_weight.shape[1]
    model = eqx.tree_at(lambda m: m.hidden_weight, model, hidden[:, :d])
    if model.hidden_bias is not None:
        model = eqx.tree_at(lambda m: m.hidden_bias, model, hidden[:, d])
    return model
