"""Sharpness: the top eigenvalue of the loss's Hessian in the trainable parameters.

GD with step $\\eta$ on a quadratic is stable only for
$\\eta < 2/\\lambda_{\\max}(\\nabla^2 L)$, and along GD the sharpness rises towards
$2/\\eta$ (edge of stability, Cohen et al. 2021). Dense eigendecomposition for small
models; Lanczos on Hessian-vector products (forward over reverse mode, never forming
the Hessian) for large ones. Both are jittable and vmappable.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float, PRNGKeyArray

from ._custom_types import Params, Scalar
from ._data import Dataset
from ._loss import AbstractLoss, SumSquareLoss
from ._objective import Objective


# Lanczos treats a residual below this multiple of eps * ||T|| as an exhausted Krylov
# space and restarts from a fresh direction orthogonal to the basis.
_BREAKDOWN_RTOL = 1e3


@eqx.filter_jit
def hessian_vector_product(
    objective: Callable[[Params, Dataset], Scalar],
    params: Params,
    data: Dataset,
    vector: Params,
) -> Params:
    """$\\nabla^2 L(\\theta)\\, v$, forward over reverse mode (`jvp` of `grad`)."""
    grad = lambda p: jax.grad(objective)(p, data)
    return jax.jvp(grad, (params,), (vector,))[1]


@eqx.filter_jit
def sharpness_dense(
    objective: Callable[[Params, Dataset], Scalar], params: Params, data: Dataset
) -> Scalar:
    """$\\lambda_{\\max}(\\nabla^2 L(\\theta))$ from the dense Hessian and `eigh`.

    The Hessian is taken in the flattened trainable parameters
    (`jax.flatten_util.ravel_pytree`); memory is quadratic in their number, so use
    `sharpness_lanczos` beyond a few thousand.
    """
    flat, unravel = jfu.ravel_pytree(params)
    hessian = jax.hessian(lambda theta: objective(unravel(theta), data))(flat)
    return jnp.linalg.eigvalsh(hessian)[-1]


@eqx.filter_jit
def sharpness_lanczos(
    objective: Callable[[Params, Dataset], Scalar],
    params: Params,
    data: Dataset,
    key: PRNGKeyArray,
    *,
    num_iters: int = 32,
) -> Scalar:
    """$\\lambda_{\\max}(\\nabla^2 L(\\theta))$ by Lanczos on Hessian-vector products.

    `min(num_iters, number of parameters)` steps with full reorthogonalization;
    each costs one Hessian-vector product (about two gradients). The top Ritz value
    converges from below, and is exact once `num_iters` reaches the number of
    parameters.

    Args:
        objective: $L(\\theta, \\text{data})$, e.g. an `Objective`.
        params: the trainable parameters $\\theta$.
        data: the dataset.
        key: draws the start vector (and the fresh directions used if the Krylov
            space is exhausted early).
        num_iters: the Krylov dimension (static).
    """
    return top_eigenpair(objective, params, data, key, num_iters=num_iters)[0]


@eqx.filter_jit
def top_eigenpair(
    objective: Callable[[Params, Dataset], Scalar],
    params: Params,
    data: Dataset,
    key: PRNGKeyArray,
    *,
    num_iters: int = 32,
) -> tuple[Scalar, Params]:
    """The top Ritz pair $(\\lambda, v)$ of `sharpness_lanczos`; $\\|v\\| = 1$, shaped
    like `params`."""
    flat, unravel = jfu.ravel_pytree(params)
    matvec = lambda v: jfu.ravel_pytree(
        hessian_vector_product(objective, params, data, unravel(v))
    )[0]
    k = min(num_iters, flat.size)
    value, vector = _lanczos(matvec, jr.normal(key, (k + 1, flat.size), flat.dtype))
    return value, unravel(vector)


def _lanczos(
    matvec: Callable[[Float[Array, " p"]], Float[Array, " p"]],
    directions: Float[Array, "k+1 p"],
) -> tuple[Scalar, Float[Array, " p"]]:
    """k steps of Lanczos with full reorthogonalization, started from `directions[0]`.

    Row j + 1 of `directions` replaces the next basis vector if the Krylov space is
    exhausted at step j (a zero residual), so the basis always spans k dimensions.
    """
    k = directions.shape[0] - 1
    basis = jnp.zeros_like(directions)  # row k is a spare that is never read
    basis = basis.at[0].set(directions[0] / jnp.linalg.norm(directions[0]))

    def orthogonalize(w, basis):
        # Twice is enough (Kahan/Parlett); rows not filled yet are zero.
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def step(j, carry):
        basis, alphas, betas, scale = carry
        w = matvec(basis[j])
        alpha = basis[j] @ w
        w = orthogonalize(w, basis)
        beta = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(alpha) + beta)
        exhausted = beta <= _BREAKDOWN_RTOL * jnp.finfo(w.dtype).eps * scale
        w = jnp.where(exhausted, orthogonalize(directions[j + 1], basis), w)
        basis = basis.at[j + 1].set(w / jnp.linalg.norm(w))
        betas = betas.at[j].set(jnp.where(exhausted, 0.0, beta))
        return basis, alphas.at[j].set(alpha), betas, scale

    zeros = jnp.zeros(k, directions.dtype)
    init = (basis, zeros, zeros, jnp.zeros((), directions.dtype))
    basis, alphas, betas, _ = jax.lax.fori_loop(0, k, step, init)
    off = betas[:-1]
    values, vectors = jnp.linalg.eigh(
        jnp.diag(alphas) + jnp.diag(off, 1) + jnp.diag(off, -1)
    )
    return values[-1], basis[:k].T @ vectors[:, -1]


def sharpness(
    model: eqx.Module,
    data: Dataset,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    key: PRNGKeyArray | None = None,
    num_iters: int = 32,
) -> Scalar:
    """$\\lambda_{\\max}$ of the loss's Hessian at `model`, in its trainable parameters.

    Dense (`sharpness_dense`) when `key` is None, else Lanczos (`sharpness_lanczos`
    with `key` and `num_iters`). GD with a step above $2/\\lambda_{\\max}$ cannot
    settle at this point.

    Example:
        >>> import implicit_flow as imf
        >>> data = imf.Dataset([[1.0, 0.0], [0.0, 2.0]], [1.0, 1.0])
        >>> float(imf.sharpness(imf.LinearPredictor([0.0, 0.0]), data))
        4.0
    """
    params, skeleton = eqx.partition(model, trainable)
    objective = Objective(skeleton, loss)
    if key is None:
        return sharpness_dense(objective, params, data)
    return sharpness_lanczos(objective, params, data, key, num_iters=num_iters)
