import abc

import equinox as eqx
from jaxtyping import Array, Float


class AbstractModel(eqx.Module):
    """A scalar-output predictor $x \\mapsto f_\\theta(x)$ (abstract).

    Its trainable parameters $\\theta$ are its inexact-array leaves; hyperparameters
    (slopes, $\\sigma'(0)$, flags) are static fields. Any `eqx.Module` with this call
    signature can be flowed, not only subclasses.
    """

    @abc.abstractmethod
    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """The prediction for one input."""

    def invariants(self) -> Float[Array, "..."] | None:
        """Quantities the gradient flow conserves exactly, or None if none is known."""
        return None


def check_shape(name: str, value, shape: tuple[int, ...]) -> None:
    """Raise a ValueError naming `name` unless `value` has `shape`."""
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
