"""Stepping across ReLU kinks: a frozen-side solver and a controller that lands on kinks.

A step whose interval contains a kink crossing integrates a discontinuous field:
its error is first order in the part of the step past the kink, so an adaptive
controller rejects steps until they are ~1e-10 long, and then needs ~10 more to
grow back (on W2 that was 2/3 of all tried steps). Here instead

- `KinkSolver` integrates each step with every pre-activation's side (above,
  inside or below the band of `FilippovFlow`) frozen at the step's start: the
  field is then the smooth continuation of the current piece, and stages that
  overshoot a kink do not see its jump;
- `LandOnKinks` reads the crossings off the step's end points: a step that
  passed a band edge by more than `slack` is rejected and retaken up to the
  crossing (secant on the linear interpolation of z; for a tangential exit from
  deep inside the band, the root of a parabola), and after an accepted step
  the next one is clipped to the predicted time of the next crossing; the
  controller's own step size is remembered and restored after the landing;
- entries that arrive at their kink from outside the band and that the field on
  both sides carries across it (`crosses`, judged after each step from its
  secant; "passing") have no band: their side is the sign of z, and steps land
  on z = 0 itself, so the field past the kink is the far side's from the
  landing on. (Through a band, a slow crossing kept one side's field for
  ~band / |dz/dt|.) An entry inside the band keeps the band's free slope, so a
  surface that turns repelling (on W2, where v_j changes sign) keeps the flow
  on it, as the minimal-norm rule does. Solver and controller must judge
  passing alike: `FilippovFlow.integrator` gives both the same `crosses`.

Each crossing then costs a few short, accepted steps instead of ~20 rejected and
regrowing ones. Both wrap any Diffrax solver and adaptive controller;
`FilippovFlow.integrator` applies them.
"""

from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Float, Int, PyTree

from ._custom_types import Params
from ._data import Dataset
from ._lanes import fsal, LaneTerm, refresh_first_stages, refreshes


class KinkSolver(dfx.AbstractAdaptiveSolver, dfx.AbstractWrappedSolver):
    """Final. `solver`, with the field of each step frozen on the start's pieces.

    Fields: `solver`; `freeze`, (params, data, before) -> the pieces at the step's
    start (any pytree, e.g. `Pieces`: the sides in {-1, 0, 1} and the free
    entries), where `before` is the previous step's (start, length, pieces),
    None at t0;
    `field`, (params, data, pieces) -> the velocity on those pieces;
    `lanes_field` (optional), the same for all lanes of a pool at once (leading
    lane axes; `vmap` of `field` if None), for fields that share work across
    lanes.

    The pieces are computed once per step, at its end point, and kept in the
    state for the next step. A step that changed them leaves an FSAL stage taken
    on the old pieces: the next step re-evaluates it (as after a Diffrax jump),
    and `end_velocity` reports it as inexact.
    """

    solver: dfx.AbstractSolver
    freeze: Callable[[Params, Dataset, tuple[Params, Array, PyTree] | None], PyTree]
    field: Callable[[Params, Dataset, PyTree], Params]
    lanes_field: Callable[[Params, Dataset, PyTree], Params] | None = None

    @property
    def term_structure(self):
        return self.solver.term_structure

    @property
    def interpolation_cls(self):  # pyright: ignore
        return self.solver.interpolation_cls

    def order(self, terms):
        return self.solver.order(terms)

    def error_order(self, terms):
        return self.solver.error_order(terms)

    def init(self, terms, t0, t1, y0, args):
        if fsal(self.solver):  # (first_step, f1): a first step evaluates f1 anew,
            # so Diffrax's evaluation here would only add a copy of the field to
            # compile (in a pool, one in each of its loops)
            inner = (jnp.asarray(True), jtu.tree_map(jnp.zeros_like, y0))
        else:
            inner = self.solver.init(terms, t0, t1, y0, args)
        return _KinkState(inner, self.freeze(y0, args, None), jnp.asarray(True))

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        pieces = solver_state.pieces
        # an FSAL stage evaluated on other pieces than this step's is stale
        made_jump = made_jump | ~solver_state.fresh
        inner = solver_state.inner
        if isinstance(terms, LaneTerm):  # all lanes of a pool as one state
            field = self.lanes_field or jax.vmap(self.field, (0, None, 0))
            frozen = LaneTerm(field, terms.h, pieces)
            freeze = jax.vmap(self.freeze, (0, None, 0))
            h, fresh = terms.h, jax.vmap(_same)
            if refreshes(self.solver, terms.h.shape[0]):  # stale first stages only
                inner = refresh_first_stages(frozen, y0, args, inner, made_jump)
                made_jump = jnp.zeros_like(made_jump)
        else:
            frozen = dfx.ODETerm(lambda t, y, data: self.field(y, data, pieces))
            freeze, h, fresh = self.freeze, t1 - t0, _same
        y1, y_error, dense, inner, result = self.solver.step(
            frozen, t0, t1, y0, args, inner, made_jump
        )
        after = freeze(y1, args, (y0, h, pieces))
        state = _KinkState(inner, after, fresh(after, pieces))
        return y1, y_error, dense, state, result

    def func(self, terms, t0, y0, args):
        return self.solver.func(terms, t0, y0, args)


def _same(a: PyTree, b: PyTree) -> Bool[Array, ""]:
    """Whether two pytrees of arrays are equal everywhere."""
    same = jtu.tree_map(lambda x, y: jnp.all(x == y), a, b)
    return jnp.all(jnp.stack(jtu.tree_leaves(same)))


class _KinkState(eqx.Module):
    inner: PyTree  # the wrapped solver's state
    pieces: PyTree  # at the current point: the next step is frozen on them
    fresh: Bool[Array, ""]  # the last step kept its pieces (its end field is exact)


class _LandState(eqx.Module):
    inner: object
    want: Float[Array, ""]  # the controller's step size before a landing began
    landing: Bool[Array, ""]
    passing: Bool[Array, "n m"]  # entries that cross their kink with no band


class LandOnKinks(dfx.AbstractAdaptiveStepSizeController):
    """Final. `controller`, with steps ended at kink crossings (see the module docstring).

    Fields: `controller`; `surfaces`, (params, data) -> the (n, m) pre-activations;
    `band`, the half-width of the kinks' band (crossings are of its edges);
    `slack`, how far past a band edge (in z, as a fraction of `band`) a step may
    end and still be accepted: creeping exits from a sliding surface (the field
    is continuous there) then do not stall the solve in ever shorter steps (the
    window is widened to what z moves in four of the shortest steps that t
    resolves, 64 eps max(1, |t|), where that is more: with a thin band, fast
    entries overshot any step t could take);
    `crosses` (optional), (params, data, z, dz/dt) -> the (n, m) entries that
    the field on the band's other side would carry on through it ("passing",
    judged at each accepted step's end from its secant, for entries that were
    outside the band or passing at its start): their side is the sign
    of z, and a step lands on z = 0 (up to `slack` past it) instead of in the
    band, which saves the steps into, through and out of it (a transversal
    crossing needs no slope from the band; a wrong guess costs a landing from
    the other side). The solver's pieces must give them the same sides.
    """

    controller: dfx.AbstractAdaptiveStepSizeController
    surfaces: Callable[[Params, Dataset], Float[Array, "n m"]]
    band: float = eqx.field(static=True)
    slack: float = eqx.field(static=True, default=0.01)
    crosses: Callable[[Params, Dataset, Array, Array], Bool[Array, "n m"]] | None = None

    @property
    def rtol(self):
        return self.controller.rtol

    @property
    def atol(self):
        return self.controller.atol

    @property
    def norm(self):  # pyright: ignore
        return self.controller.norm

    def wrap(self, direction):
        return eqx.tree_at(
            lambda c: c.controller, self, self.controller.wrap(direction)
        )

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        t1, inner = self.controller.init(
            terms, t0, t1, y0, dt0, args, func, error_order
        )
        passing = jnp.zeros(self.surfaces(y0, args).shape, bool)
        return t1, _LandState(inner, jnp.asarray(t1 - t0), jnp.asarray(False), passing)

    def _edge(self, side, direction, passing, window):
        """The edge an entry on `side` meets moving in `direction`, and the landing
        aim halfway into the `window` past it: a band edge, or z = 0 for a
        `passing` entry (see `band_sides`)."""
        edge = jnp.where(side != 0, side, jnp.sign(direction)) * self.band
        edge = jnp.where(passing & (side != 0), 0.0, edge)
        return edge, edge + jnp.sign(direction) * window / 2

    def adapt_step_size(self, t0, t1, y0, y1, args, y_error, error_order, state):
        keep, _, next_t1, made_jump, inner, result = self.controller.adapt_step_size(
            t0, t1, y0, y1, args, y_error, error_order, state.inner
        )
        h = t1 - t0
        floor = 64 * jnp.finfo(h.dtype).eps * jnp.maximum(jnp.abs(t1), 1.0)
        z0, z1 = self.surfaces(y0, args), self.surfaces(y1, args)
        side0 = band_sides(z0, self.band, state.passing)
        side1 = band_sides(z1, self.band, state.passing)
        dz = z1 - z0
        velocity = dz / h
        # how far past an edge a step may end: `slack` of the band, but no less
        # than z moves in a few of the shortest steps t can resolve (else a thin
        # band's landings are rejected for ever at that floor)
        window = jnp.maximum(self.slack * self.band, 4 * floor * jnp.abs(velocity))
        # band edges this step crossed: landing aims window/2 past them
        edge, aim = self._edge(side0, dz, state.passing, window)
        crossed = side1 != side0
        late = jnp.any(crossed & ((z1 - edge) * jnp.sign(dz) > window))
        # z leaves a sliding surface tangentially (z - z0 ~ t^2): a secant on
        # that parabola lands far short, so exits from deep in the band take its
        # root (a crossing passes through the band from a landing at its edge)
        frac = jnp.clip((aim - z0) / _nonzero(dz), 0.0, 1.0)
        deep = (side0 == 0) & (jnp.abs(z0) < self.band / 2)
        frac = jnp.where(deep, jnp.sqrt(frac), frac)
        first = jnp.min(jnp.where(crossed, frac, jnp.inf))
        accept = keep & ~late
        # the next band edge ahead of the end point, along the step's secant
        passing = jnp.zeros_like(state.passing)
        if self.crosses is not None:
            passing = self.crosses(y1, args, z1, velocity) & (side0 != 0)
            passing = jnp.where(accept, passing, state.passing)
        side1 = band_sides(z1, self.band, passing)
        edge, aim = self._edge(side1, velocity, passing, window)
        ahead = jnp.where(
            (edge - z1) * velocity > 0, (aim - z1) / _nonzero(velocity), jnp.inf
        )
        proposal = next_t1 - jnp.where(keep, t1, t0)
        base = jnp.where(
            accept,
            jnp.where(state.landing, jnp.maximum(proposal, state.want), proposal),
            jnp.where(keep, jnp.where(state.landing, state.want, h), proposal),
        )
        limit = jnp.where(accept, jnp.min(ahead), first * h)
        dt = jnp.maximum(jnp.minimum(base, limit), floor)
        landing = dt < base
        want = jnp.where(landing & state.landing, jnp.maximum(state.want, base), base)
        next_t0 = jnp.where(accept, t1, t0)
        return (
            accept,
            next_t0,
            next_t0 + dt,
            made_jump,
            _LandState(inner, want, landing, passing),
            result,
        )


def band_sides(
    z: Float[Array, "n m"], band: float, passing: Bool[Array, "n m"] | None = None
) -> Int[Array, "n m"]:
    """1 above the band |z| <= `band`, -1 below it, 0 inside; the sign of z for
    `passing` entries (they cross their kink with no band)."""
    sides = jnp.where(z > band, 1, jnp.where(z < -band, -1, 0))
    if passing is None:
        return sides
    return jnp.where(passing, jnp.sign(z).astype(sides.dtype), sides)


def _nonzero(a):
    return jnp.where(a == 0, 1.0, a)
