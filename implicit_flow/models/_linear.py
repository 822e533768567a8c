import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._base import AbstractModel, check_shape


class LinearPredictor(AbstractModel):
    """Final. $f(x) = w^\\top x + b$, the bias optional.

    Fields: `weight` (d,), `bias` () or None.
    """

    weight: Float[Array, " d"]
    bias: Float[Array, ""] | None

    def __init__(self, weight: ArrayLike, bias: ArrayLike | None = None):
        self.weight = jnp.asarray(weight, dtype=float)
        self.bias = None if bias is None else jnp.asarray(bias, dtype=float)

    def __check_init__(self):
        if self.weight.ndim != 1:
            raise ValueError(f"weight must be a vector, got shape {self.weight.shape}")
        if self.bias is not None:
            check_shape("bias", self.bias, ())

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        out = x @ self.weight
        return out if self.bias is None else out + self.bias


class DeepLinear(AbstractModel):
    """Final. $f(x) = W_L \\cdots W_2 W_1 x$, a deep linear net of depth $L \\ge 2$.

    Fields: `weights`, the tuple $(W_1, \\dots, W_L)$ with $W_k$ of shape
    (h_k, h_{k-1}), $h_0 = d$ and $h_L = 1$. The flow conserves
    $W_{k+1}^\\top W_{k+1} - W_k W_k^\\top$ for every $k$ (Arora et al. 2018).
    """

    weights: tuple[Float[Array, "h_out h_in"], ...]

    def __init__(self, weights):
        self.weights = tuple(jnp.asarray(w, dtype=float) for w in weights)

    def __check_init__(self):
        if len(self.weights) < 2:
            raise ValueError(f"DeepLinear needs depth >= 2, got {len(self.weights)}")
        for k, (lower, upper) in enumerate(zip(self.weights, self.weights[1:])):
            if lower.ndim != 2 or upper.ndim != 2 or upper.shape[1] != lower.shape[0]:
                raise ValueError(
                    f"weights[{k + 1}] of shape {upper.shape} does not chain with "
                    f"weights[{k}] of shape {lower.shape}"
                )
        if self.weights[-1].shape[0] != 1:
            raise ValueError(
                f"the last weight must have one row, got {self.weights[-1].shape}"
            )

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        for w in self.weights:
            x = w @ x
        return x[0]

    def invariants(self) -> Float[Array, " k"]:
        """Entries of $W_{k+1}^\\top W_{k+1} - W_k W_k^\\top$, all k, concatenated."""
        return jnp.concatenate(
            [
                (upper.T @ upper - lower @ lower.T).ravel()
                for lower, upper in zip(self.weights, self.weights[1:])
            ]
        )
