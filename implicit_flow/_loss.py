import abc

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._custom_types import Scalar


class AbstractLoss(eqx.Module):
    """A loss $L = \\sum$ or mean of per-point terms of predictions vs targets (abstract)."""

    @abc.abstractmethod
    def __call__(self, pred: Float[Array, " n"], y: Float[Array, " n"]) -> Scalar:
        """The loss of predictions `pred` against targets `y`."""


class SumSquareLoss(AbstractLoss):
    """Final. $L = \\tfrac12 \\sum_i (f(x_i) - y_i)^2$, the paper's half-sum; the default.

    Gradient flows of this and of `MeanSquareLoss` have the same limits; this one
    runs n times faster in t, and a GD step size here equals n times the same step
    under the mean.
    """

    def __call__(self, pred: Float[Array, " n"], y: Float[Array, " n"]) -> Scalar:
        return 0.5 * jnp.sum((pred - y) ** 2)


class MeanSquareLoss(AbstractLoss):
    """Final. $L = \\tfrac{1}{2n} \\sum_i (f(x_i) - y_i)^2$, the mean normalization."""

    def __call__(self, pred: Float[Array, " n"], y: Float[Array, " n"]) -> Scalar:
        return 0.5 * jnp.mean((pred - y) ** 2)
