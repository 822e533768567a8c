"""GD's first-order modified equation (implicit gradient regularization).

GD with step $\\eta$ follows, to $O(\\eta^2)$ on $t = k\\eta$, the gradient flow of
$\\tilde L = L + \\frac{\\eta}{4}\\|\\nabla L\\|^2$ (Barrett & Dherin 2021), not that of
$L$, whose limit it misses by $O(\\eta)$.
"""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, ArrayLike, Float

from ._custom_types import Params
from ._data import Dataset
from ._objective import AbstractFlow, Objective


class ModifiedGradientFlow(AbstractFlow):
    """Final. GD's modified flow at step $\\eta$:
    $\\dot\\theta = -\\nabla\\big(L + \\frac{\\eta}{4}\\|\\nabla L\\|^2\\big)$.

    Pass it as `solve_flow(model, data, flow=ModifiedGradientFlow(lr))`: the solve
    stops where this field vanishes, and reports the plain loss $L$. Field: `lr`,
    the step $\\eta$ of $\\theta \\leftarrow \\theta - \\eta\\nabla L$ with the same
    loss (an array, so a sweep over it neither recompiles nor blocks `vmap`).
    """

    lr: Float[Array, ""]

    def __init__(self, lr: ArrayLike):
        self.lr = jnp.asarray(lr, dtype=float)

    def velocity(self, objective: Objective, params: Params, data: Dataset) -> Params:
        """$-\\nabla L - \\frac{\\eta}{2}\\nabla^2 L\\,\\nabla L$, by `jax.grad`."""

        def modified(p):
            loss, grad = jax.value_and_grad(objective)(p, data)
            # A sum of squares, not `tree_norm` squared: the square root has no
            # derivative where the gradient vanishes (at every limit point).
            return loss + self.lr / 4 * sum(
                jnp.sum(g**2) for g in jtu.tree_leaves(grad)
            )

        return jtu.tree_map(jnp.negative, jax.grad(modified)(params))
