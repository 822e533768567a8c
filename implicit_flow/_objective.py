import abc
import itertools
import math

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Float

from ._custom_types import Params, Scalar
from ._data import Dataset
from ._loss import AbstractLoss


class FlatLayout(eqx.Module):
    """Final. Trainable leaves as one vector, and back (static: shapes and structure).

    An ensemble integrates flat parameters: under `vmap`, Diffrax's stage buffers and
    weighted sums are then one array per step instead of one per leaf (128 W2
    starts: 1.19x faster)."""

    treedef: jtu.PyTreeDef = eqx.field(static=True)
    shapes: tuple[tuple[int, ...], ...] = eqx.field(static=True)
    dtypes: tuple[str, ...] = eqx.field(static=True)

    def __init__(self, params: Params):
        leaves, self.treedef = jtu.tree_flatten(params)
        self.shapes = tuple(tuple(jnp.shape(a)) for a in leaves)
        self.dtypes = tuple(str(jnp.result_type(a)) for a in leaves)

    def ravel(self, params: Params) -> Float[Array, " size"]:
        return jnp.concatenate([jnp.ravel(a) for a in jtu.tree_leaves(params)])

    def unravel(self, flat: Float[Array, " size"]) -> Params:
        sizes = [math.prod(shape) for shape in self.shapes]
        parts = jnp.split(flat, list(itertools.accumulate(sizes))[:-1])
        leaves = [
            part.reshape(shape).astype(dtype)
            for part, shape, dtype in zip(parts, self.shapes, self.dtypes)
        ]
        return jtu.tree_unflatten(self.treedef, leaves)


class Objective(eqx.Module):
    """Final. $L(\\theta)$: where parameters, model skeleton, loss and data meet.

    Fields: `skeleton`, the model with its trainable leaves removed
    (`eqx.partition(model, trainable)[1]`), `loss`, and `layout` (a `FlatLayout`
    when the parameters come as one vector; None: as the model's leaves).
    """

    skeleton: eqx.Module
    loss: AbstractLoss
    layout: FlatLayout | None = None

    def model(self, params: Params) -> eqx.Module:
        """The full model at parameters `params`."""
        return eqx.combine(self.leaves(params), self.skeleton)

    def leaves(self, params: Params) -> Params:
        """`params` as the model's trainable leaves (unravelled if flat)."""
        return params if self.layout is None else self.layout.unravel(params)

    def like_params(self, leaves: Params) -> Params:
        """The model's trainable leaves (e.g. a velocity) in the layout of `params`."""
        return leaves if self.layout is None else self.layout.ravel(leaves)

    def __call__(self, params: Params, data: Dataset) -> Scalar:
        return self.loss(jax.vmap(self.model(params))(data.x), data.y)

    def grad(self, params: Params, data: Dataset) -> Params:
        """$\\nabla L(\\theta)$, by `jax.grad`."""
        return jax.grad(self)(params, data)

    def grad_norm(self, params: Params, data: Dataset) -> Scalar:
        """$\\|\\nabla L(\\theta)\\|_2$ over all trainable leaves."""
        return tree_norm(self.grad(params, data))


def tree_norm(tree: Params) -> Scalar:
    """Euclidean norm of all leaves of a pytree taken together."""
    leaves = jtu.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(leaf**2) for leaf in leaves))


class AbstractFlow(eqx.Module):
    """A flow $\\dot\\theta = F(\\theta)$ driven by an objective (abstract).

    The objective and data are passed in, not held, so one flow object serves
    every model and dataset and enters compiled code as a (static) pytree.
    """

    @abc.abstractmethod
    def velocity(self, objective: Objective, params: Params, data: Dataset) -> Params:
        """$F(\\theta)$."""

    def speed(self, objective: Objective, params: Params, data: Dataset) -> Scalar:
        """$\\|F(\\theta)\\|_2$: the steady-state test compares it with `gtol`."""
        return tree_norm(self.velocity(objective, params, data))

    def integrator(
        self,
        objective: Objective,
        solver: dfx.AbstractSolver,
        controller: dfx.AbstractStepSizeController,
    ) -> tuple[dfx.AbstractSolver, dfx.AbstractStepSizeController]:
        """The solver and controller this flow is stepped with (here: as given)."""
        del objective
        return solver, controller

    def term(self, objective: Objective) -> dfx.ODETerm:
        """The Diffrax term; the data enters as the solve's `args`."""
        return dfx.ODETerm(lambda t, y, data: self.velocity(objective, y, data))


class GradientFlow(AbstractFlow):
    """Final. $\\dot\\theta = -\\nabla L(\\theta)$, the gradient from `jax.grad`."""

    def velocity(self, objective: Objective, params: Params, data: Dataset) -> Params:
        return jtu.tree_map(jnp.negative, objective.grad(params, data))


def diagnose(objective: Objective, params: Params, data: Dataset) -> dict[str, Array]:
    """Loss, $\\|\\nabla L\\|$ and the model's invariants (if it has any) at `params`."""
    out = {
        "loss": objective(params, data),
        "grad_norm": objective.grad_norm(params, data),
    }
    invariants = getattr(objective.model(params), "invariants", lambda: None)()
    if invariants is not None:
        out["invariants"] = invariants
    return out
