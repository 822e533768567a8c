"""The lanes of a pool stepped as one state: one Diffrax solver step for all of them.

Under `jax.vmap`, an explicit Runge-Kutta step keeps its stages in a (lanes,
stages, size) buffer, and XLA CPU copies that buffer into (stages, lanes x size)
for every stage's weighted sum: the largest op of a W2 pool step, ~19 % of its
time. Stepped as one state, the buffer is (stages, lanes x size) to begin with.
A flow's field does not depend on t, so each lane's step of length h_l is the
step from s = 0 to 1 of dy/ds = h_l F(y): `LaneTerm` gives the solver that as a
per-lane control h_l, and the lanes' stages, errors and end points are those of
their own steps, bit for bit.
"""

from collections.abc import Callable

import diffrax as dfx
import jax.tree_util as jtu
from jaxtyping import Array, Float, PyTree


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
