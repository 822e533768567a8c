"""Plain gradient descent to a steady state (one compiled `lax.while_loop`).

A small stand-in for the library's GD engine, used for the paper's GD claims
(Theorem 1: GD that converges to zero loss lands on the projection of the start).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .._data import Dataset
from .._loss import SumSquareLoss
from .._objective import Objective


def gd_to_steady_state(
    model: eqx.Module,
    data: Dataset,
    lr: float,
    *,
    gtol: float = 1e-12,
    max_steps: int = 1_000_000,
) -> tuple[eqx.Module, Int[Array, ""], Float[Array, ""]]:
    r"""Runs $\theta \leftarrow \theta - \eta \nabla L(\theta)$ (half-sum loss) until
    $\|\nabla L\| <$ `gtol` or `max_steps`.

    Returns:
        (the final model, the number of steps taken, the final gradient norm).
    """
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = Objective(skeleton, SumSquareLoss())
    final, steps, gnorm = _run(
        objective,
        params,
        data,
        jnp.asarray(lr, dtype=float),
        jnp.asarray(gtol, dtype=float),
        max_steps,
    )
    return eqx.combine(final, skeleton), steps, gnorm


@eqx.filter_jit
def _run(objective, params, data, lr, gtol, max_steps: int):
    def cond(state):
        _, k, gnorm = state
        return (k < max_steps) & (gnorm >= gtol)

    def body(state):
        p, k, _ = state
        g = objective.grad(p, data)
        p = jax.tree.map(lambda a, b: a - lr * b, p, g)
        return p, k + 1, objective.grad_norm(p, data)

    start = (params, jnp.asarray(0), objective.grad_norm(params, data))
    return jax.lax.while_loop(cond, body, start)
