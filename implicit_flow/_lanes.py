"""The lanes of a pool stepped as one state: one Diffrax solver step for all of them.

Under `jax.vmap`, an explicit Runge-Kutta step keeps its stages in a (lanes,
stages, size) buffer, and XLA CPU copies that buffer into (stages, lanes x size)
for every stage's weighted sum: the largest op of a W2 pool step, ~19 % of its
time. Stepped as one state, the buffer is (stages, lanes x size) to begin with.
A flow's field does not depend on t, so each lane's step of length h_l is the
step from s = 0 to 1 of dy/ds = h_l F(y): `LaneTerm` gives the solver that as a
per-lane control h_l, and the lanes' stages, errors and end points are those of
their own steps, bit for bit.

One exception to "as one": Diffrax evaluates an FSAL solver's first stage again
for every lane when any lane needs it (after a jump, or a step on other pieces
of a ReLU net's kinks): on W2 that is 98 % of a 64-lane pool's steps, for 20 %
of its lanes. `refresh_first_stages` evaluates it for those lanes alone.
"""

from collections.abc import Callable

import diffrax as dfx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float, PyTree

from ._chunks import in_chunks


_REFRESH_CHUNKS = 4  # a pool's lanes / the lanes of one chunk of `refresh_first_stages`
# Narrower pools (a `LanePool`'s narrow one) evaluate the first stage of every lane,
# as Diffrax does: the refresh's copy of the field costs ~5 s of compile a loop on
# W2, for the few steps of a narrow pool
_REFRESH_LANES = 16


class LaneTerm(dfx.AbstractTerm):
    """Final. The field `field`(y, args, extra) of all lanes of a state with a
    leading lane axis (`extra`, e.g. each lane's pieces, has one too; `vmap` of
    one lane's field, or a field that also works across lanes), controlled by
    each lane's step length `h`."""

    field: Callable
    h: Float[Array, " lanes"]
    extra: PyTree = None

    def vf(self, t, y, args):
        del t  # the flows' fields are autonomous
        return self.field(y, args, self.extra)

    def contr(self, t0, t1, **kwargs):
        del t0, t1, kwargs
        return self.h

    def prod(self, vf, control):
        return jtu.tree_map(lambda v: control.reshape(-1, *[1] * (v.ndim - 1)) * v, vf)


def fsal(solver: dfx.AbstractSolver) -> bool:
    """Whether Diffrax keeps `solver`'s last stage as its state, (first_step, f1)."""
    tableau = getattr(solver, "tableau", None)
    return isinstance(solver, dfx.AbstractERK) and getattr(tableau, "fsal", False)


def refreshes(solver: dfx.AbstractSolver, lanes: int) -> bool:
    """Whether a pool of `lanes` refreshes `solver`'s first stages itself."""
    return fsal(solver) and lanes >= _REFRESH_LANES


def refresh_first_stages(
    term: LaneTerm, y: PyTree, args, state: tuple, stale: Bool[Array, " lanes"]
) -> tuple:
    """An FSAL state (first_step, f1) of all lanes, with f1 evaluated again at `y`
    for the lanes that need it (`stale`, or a first step), gathered in chunks of
    1 / `_REFRESH_CHUNKS` of the lanes, and no flag left: Diffrax then evaluates
    no first stage."""
    first_step, f1 = state

    def evaluate(take):
        y_take, extra = jtu.tree_map(lambda a: a[take], (y, term.extra))
        return term.field(y_take, args, extra)

    size = max(1, first_step.shape[0] // _REFRESH_CHUNKS)
    f1 = in_chunks(stale | first_step, size, evaluate, f1)
    return jnp.zeros_like(first_step), f1
