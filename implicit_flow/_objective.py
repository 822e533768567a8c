import abc

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array

from ._custom_types import Params, Scalar
from ._data import Dataset
from ._loss import AbstractLoss


class Objective(eqx.Module):
    """Final. $L(\\theta)$: where parameters, model skeleton, loss and data meet.

    Fields: `skeleton`, the model with its trainable leaves removed
    (`eqx.partition(model, trainable)[1]`), and `loss`.
    """

    skeleton: eqx.Module
    loss: AbstractLoss

    def model(self, params: Params) -> eqx.Module:
        """The full model at parameters `params`."""
        return eqx.combine(params, self.skeleton)

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
