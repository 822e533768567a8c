import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._activation import leaky_relu
from ._base import AbstractModel, check_shape


def _check_slopes(negative_slope: float, grad_at_zero: float) -> None:
    if not 0.0 <= negative_slope <= 1.0:
        raise ValueError(f"negative_slope must lie in [0, 1], got {negative_slope}")
    if not 0.0 <= grad_at_zero <= 1.0:
        raise ValueError(f"grad_at_zero must lie in [0, 1], got {grad_at_zero}")


class ReLUNeuron(AbstractModel):
    """Final. $f(x) = \\sigma(w^\\top x + b)$, $\\sigma(z) = \\max(z, \\alpha z)$.

    Fields: `weight` (d,), `bias` () or None, `negative_slope` $\\alpha$ (0: ReLU),
    `grad_at_zero` $\\sigma'(0)$, default 1 as in Vardi & Shamir (2021); JAX's own
    `relu` uses 0, under which the flow from $w = 0$ never moves.
    """

    weight: Float[Array, " d"]
    bias: Float[Array, ""] | None
    negative_slope: float = eqx.field(static=True)
    grad_at_zero: float = eqx.field(static=True)

    def __init__(
        self,
        weight: ArrayLike,
        bias: ArrayLike | None = None,
        *,
        negative_slope: float = 0.0,
        grad_at_zero: float = 1.0,
    ):
        _check_slopes(negative_slope, grad_at_zero)
        self.weight = jnp.asarray(weight, dtype=float)
        self.bias = None if bias is None else jnp.asarray(bias, dtype=float)
        self.negative_slope = float(negative_slope)
        self.grad_at_zero = float(grad_at_zero)

    def __check_init__(self):
        if self.weight.ndim != 1:
            raise ValueError(f"weight must be a vector, got shape {self.weight.shape}")
        if self.bias is not None:
            check_shape("bias", self.bias, ())

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        z = x @ self.weight
        z = z if self.bias is None else z + self.bias
        return leaky_relu(z, self.negative_slope, self.grad_at_zero)


class TwoLayerReLU(AbstractModel):
    """Final. $f(x) = \\sum_j v_j\\, \\sigma(w_j^\\top x + b_j)$, width m.

    Fields: `hidden_weight` (m, d) with rows $w_j$, `hidden_bias` (m,) or None,
    `output_weight` (m,) the $v_j$, `train_output` (False keeps v fixed: its
    gradient is stopped, so the flow leaves it exactly where it started),
    `negative_slope` and `grad_at_zero` as for `ReLUNeuron`.

    With v trained, the flow conserves $\\|w_j\\|^2 + b_j^2 - v_j^2$ per neuron
    (balancedness, Du, Hu & Lee 2018), returned by `invariants`.
    """

    hidden_weight: Float[Array, "m d"]
    hidden_bias: Float[Array, " m"] | None
    output_weight: Float[Array, " m"]
    train_output: bool = eqx.field(static=True)
    negative_slope: float = eqx.field(static=True)
    grad_at_zero: float = eqx.field(static=True)

    def __init__(
        self,
        hidden_weight: ArrayLike,
        output_weight: ArrayLike,
        hidden_bias: ArrayLike | None = None,
        *,
        train_output: bool = True,
        negative_slope: float = 0.0,
        grad_at_zero: float = 1.0,
    ):
        _check_slopes(negative_slope, grad_at_zero)
        self.hidden_weight = jnp.asarray(hidden_weight, dtype=float)
        self.output_weight = jnp.asarray(output_weight, dtype=float)
        self.hidden_bias = (
            None if hidden_bias is None else jnp.asarray(hidden_bias, dtype=float)
        )
        self.train_output = bool(train_output)
        self.negative_slope = float(negative_slope)
        self.grad_at_zero = float(grad_at_zero)

    def __check_init__(self):
        if self.hidden_weight.ndim != 2:
            raise ValueError(
                f"hidden_weight must have shape (m, d), got {self.hidden_weight.shape}"
            )
        m = self.hidden_weight.shape[0]
        check_shape("output_weight", self.output_weight, (m,))
        if self.hidden_bias is not None:
            check_shape("hidden_bias", self.hidden_bias, (m,))

    def __call__(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        z = self.hidden_weight @ x
        z = z if self.hidden_bias is None else z + self.hidden_bias
        v = self.output_weight
        v = v if self.train_output else jax.lax.stop_gradient(v)
        return v @ leaky_relu(z, self.negative_slope, self.grad_at_zero)

    def invariants(self) -> Float[Array, " m"]:
        """Per-neuron balancedness $\\|w_j\\|^2 + b_j^2 - v_j^2$."""
        norms = jnp.sum(self.hidden_weight**2, axis=1)
        if self.hidden_bias is not None:
            norms = norms + self.hidden_bias**2
        return norms - self.output_weight**2
