"""Leaky ReLU whose derivative at exactly 0 is an explicit choice."""

import functools as ft

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


@ft.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def leaky_relu(
    z: Float[Array, "..."], negative_slope: float, grad_at_zero: float
) -> Float[Array, "..."]:
    r"""$\sigma(z) = \max(z, \alpha z)$ with $\sigma'(0)$ set to `grad_at_zero`.

    `jax.nn.relu` has derivative 0 at 0, under which the paper's flows from $w = 0$
    never move; here the value at the kink is a parameter, and `jax.grad` returns
    exactly it (1 for $z > 0$, $\alpha$ for $z < 0$).
    """
    return jnp.maximum(z, negative_slope * z)


@leaky_relu.defjvp
def _leaky_relu_jvp(negative_slope, grad_at_zero, primals, tangents):
    (z,), (dz,) = primals, tangents
    slope = jnp.where(z > 0, 1.0, jnp.where(z < 0, negative_slope, grad_at_zero))
    return leaky_relu(z, negative_slope, grad_at_zero), slope.astype(z.dtype) * dz
