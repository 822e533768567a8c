"""The Filippov flow of ReLU networks: gradient flow as a differential inclusion.

The loss of a ReLU net is not differentiable where a pre-activation
$z_{ij} = w_j^\\top x_i + b_j$ is 0. Its gradient flow is the differential inclusion
$\\dot\\theta \\in -\\partial L(\\theta)$ (Clarke subdifferential), whose solution moves
with the minimal-norm element of $-\\partial L$ (Filippov). On a kink surface that the
field points into from both sides, this keeps $z_{ij} = 0$: the trajectory slides
along the surface, with the kink's slope $\\sigma'(z_{ij})$ replaced by the value
$a_{ij} \\in [\\alpha, 1]$ that makes $\\dot z_{ij} = 0$. On crossings that both sides
agree on, the minimal-norm element is one side's gradient, so elsewhere this is the
ordinary gradient flow, and $\\sigma'(0)$ stops mattering. Gradient descent with step
$\\eta \\to 0$ approaches the same curve (it chatters across the surface at $O(\\eta)$).

Here the residuals $r_i = \\partial L / \\partial f(x_i)$ and $\\nabla_v L$ do not depend on
the slopes, so the minimal norm separates over hidden neurons: for neuron j,
$\\min_a \\|c_j + \\sum_k a_k u_{jk}\\|$ over $a \\in [\\alpha, 1]^K$, with
$u_{jk} = r_k v_j [x_k; 1]$ over the K entries with $|z_{kj}|$ below `band` and $c_j$ the
gradient from all other entries. The box QP is solved exactly by enumerating its
$3^K$ faces (each slope at $\\alpha$, at 1, or free), K at most `max_kinks` per neuron
(default 3: on W2, flows that met 3 at once stalled when only 2 were allowed, and
1.6 % of them meet 4, which `FilippovFlow(max_kinks=4)` solves in a `LanePool` at
~4 % more per step, or `solve_ensemble(retry=FilippovFlow(max_kinks=4,
kink_neurons=None))` solves again; beyond the first `max_kinks` in the band,
entries keep the slope of their sign). Above K = 4 the faces are too many, and a
primal active-set method solves the QP instead, exactly, for the rarer flows with
five or more entries of one neuron on a face at once (seen on fixed-output nets).
Only the neurons with entries in the band (at most `kink_neurons`) are gathered
into the QP.
"""

import itertools

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._chunks import in_chunks, running_count
from ._custom_types import Params
from ._data import Dataset
from ._kinks import band_sides, KinkSolver, LandOnKinks
from ._objective import AbstractFlow, Objective
from .models import ReLUNeuron, TwoLayerReLU


_FULL_ROWS = 2  # neurons per lane whose fourth kink slot is solved (max_kinks = 4)
_JOINT_ROWS = 6  # neurons per lane whose several kink slots are solved jointly
_CHUNK_ROWS, _CHUNK_JOINT = 12, 2  # rows per lane in a chunk of `_pooled_slopes`
# below this many QP rows a lane, gathering them costs more than the rows it skips
# (W1, one row a lane, pooled: 2.1x the pool's time)
_POOLED_ROWS = 8


class FilippovFlow(AbstractFlow):
    """Final. The minimal-norm subgradient flow of `ReLUNeuron` and `TwoLayerReLU` models.

    Fields: `band`, the half-width of $|z_{ij}|$ within which a kink's slope is free
    (the accuracy of sliding is about `band`; a crossing that goes through the band
    spends ~band / |dz/dt| in it on one side's field, which cost 1.3e-7 with
    `cross=False` on a W1 start whose crossing would dip only 1e-5 deep; a band
    of 1e-11 converges on all of the first 2000 W1 starts, within 6.5e-10 of the
    exact limits, the default within 9.3e-10); `pull`, a rate $1/\\tau$ that aims a
    sliding pre-activation at $\\dot z = -z/\\tau$ instead of 0, so that integration
    errors cannot walk it out of the band (default 1; 0 turns it off); `land`
    (default True), step with `KinkSolver` and `LandOnKinks` (`integrator`), which
    end steps at kink crossings instead of letting the controller shrink them to
    ~1e-10 there (on W2: half the steps, a third of the evaluations per step);
    `max_kinks` (default 3), how many pre-activations of one neuron may sit
    on their kinks at once (the box QP has $3^K$ faces; 4 allows a fourth on two
    neurons at a time: in a `LanePool`, where the lanes' QPs are solved
    together (`lane_velocities`), a W2 step then costs ~4 % more than with 3,
    and all 1024 W2 starts converge in one pass; alone, ~1.15x; above 4 every
    gathered neuron goes through an active-set method, for flows that need it,
    e.g. as a `retry`); `kink_neurons`
    (default 24, None for all), how many neurons per evaluation may have
    entries on their kinks: only those are gathered into the box QP (on W2, with
    64 neurons, whole flows from 24 starts had at most 7 to 20 at once), and of
    those only the first six with several such entries are solved over all
    their faces (all of them if None). Beyond these limits, entries keep the
    slope of their sign: a flow that needs more chatters at the band and
    stalls, and `solve_ensemble(retry=...)` can solve it again with larger
    limits. `cross` (default True): entries that the flow crosses transversally
    (see `crosses`) have no band: steps land on z = 0 itself, where the far
    side's field takes over, instead of landing in the band and going through it
    (on W2, when such steps still ended past the band: 6 % fewer steps than
    landing in it; landing on z = 0 took 1.3 % more than that, and on that W1
    start is 8.5e-10 from the exact limit).

    Keep the controller's `atol` well below `band` (the default rtol 1e-12 / atol
    1e-14 does): with atol near the band, integration error walks sliding
    pre-activations out of it, and the solve chatters at the band's edge (on W2,
    rtol 1e-10 / atol 1e-12 converged everywhere; 1e-8 / 1e-10 left some flows at
    max_steps). Where an entry leaves a sliding surface, the tolerance can decide
    the branch: on W2, rtol 1e-10 put 2 of 1024 limits ~1e-3 off gradient
    descent's eta -> 0 limit, 1e-11 / 1e-13 none (all within 2.6e-7 of a 1e-12 solve).
    """

    band: float = eqx.field(static=True, default=1e-8)
    pull: float = eqx.field(static=True, default=1.0)
    land: bool = eqx.field(static=True, default=True)
    max_kinks: int = eqx.field(static=True, default=3)
    kink_neurons: int | None = eqx.field(static=True, default=24)
    cross: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if self.max_kinks < 1:
            raise ValueError(f"max_kinks must be positive, got {self.max_kinks}")
        if self.kink_neurons is not None and self.kink_neurons < 1:
            raise ValueError(
                f"kink_neurons must be positive or None, got {self.kink_neurons}"
            )
        if not self.band > 0 or not self.pull >= 0:
            raise ValueError(
                f"band must be positive and pull non-negative, got {self.band}, {self.pull}"
            )

    def pre_activations(
        self, objective: Objective, params: Params, data: Dataset
    ) -> Float[Array, "n m"]:
        """$z_{ij} = w_j^\\top x_i (+ b_j)$."""
        hidden, _, x = hidden_rows(_checked(objective.model(params)), data.x)
        return x @ hidden.T

    def sides(
        self, z: Float[Array, "n m"], passing: Bool[Array, "n m"] | None = None
    ) -> Int[Array, "n m"]:
        """1 above the band, -1 below it, 0 inside (a free slope); the sign of z for
        `passing` entries (see `crosses`)."""
        return band_sides(z, self.band, passing)

    def pieces(
        self,
        objective: Objective,
        params: Params,
        data: Dataset,
        passing: Bool[Array, "n m"] | None = None,
    ) -> "Pieces":
        """Where every pre-activation is, and what a step frozen there needs."""
        model = _checked(objective.model(params))
        hidden, _, x = hidden_rows(model, data.x)
        return self._pieces(x @ hidden.T, x, model.negative_slope, passing)

    def _pieces(self, z, x, alpha, passing=None) -> "Pieces":
        sides = self.sides(z, passing)
        rows, near, free = self.kinks(z, sides == 0)
        held = held_entries(rows, near, free, z.shape)
        slope = jnp.where(held, 0.0, jnp.where(z > 0, 1.0, alpha))
        inputs = jnp.where(free[..., None], x[near], 0.0)
        return Pieces(sides, rows, near, free, slope, inputs)

    def integrator(self, objective, solver, controller):
        """With `land` (default), `KinkSolver` and `LandOnKinks` around the pair."""
        if not self.land:
            return solver, controller
        surfaces = lambda params, data: self.pre_activations(objective, params, data)
        adaptive = isinstance(controller, dfx.AbstractAdaptiveStepSizeController)
        crosses = None  # without landings, no entry passes
        if self.cross and adaptive:
            crosses = lambda params, data, z, dz: self.crosses(
                objective, params, data, z, dz
            )
        if adaptive:
            controller = LandOnKinks(controller, surfaces, self.band, crosses=crosses)

        def freeze(params, data, before):
            """The pieces at `params`; entries passing their kink as `LandOnKinks`
            judges them, from the step `before` that ended here."""
            if crosses is None or before is None:
                return self.pieces(objective, params, data)
            start, h, pieces = before
            z = surfaces(params, data)
            dz = (z - surfaces(start, data)) / h
            passing = crosses(params, data, z, dz) & (pieces.sides != 0)
            return self.pieces(objective, params, data, passing)

        solver = KinkSolver(
            solver,
            freeze,
            lambda params, data, pieces: self.velocity(objective, params, data, pieces),
            lambda params, data, pieces: self.lane_velocities(
                objective, params, data, pieces
            ),
        )
        return solver, controller

    def crosses(
        self,
        objective: Objective,
        params: Params,
        data: Dataset,
        z: Float[Array, "n m"],
        dz: Float[Array, "n m"],
    ) -> Bool[Array, "n m"]:
        """The entries whose kink the flow crosses from the side they are on: their
        $\\dot z_{ij}$ = `dz` keeps its sign, with at least a fifth of its size,
        when $\\sigma'_{ij}$ takes the other side's value, which changes it by
        $(1 - \\alpha) v_j r_i \\|[x_i; 1]\\|^2$ towards the band's far side
        (`z`: the pre-activations at `params`)."""
        model = _checked(objective.model(params))
        _, v, x = hidden_rows(model, data.x)
        alpha = model.negative_slope
        r = jax.grad(objective.loss)(jnp.maximum(z, alpha * z) @ v, data.y)
        turn = (1 - alpha) * jnp.outer(r * jnp.sum(x * x, axis=1), v)
        return turn < 0.8 * jnp.abs(dz)

    def kinks(
        self, z: Float[Array, "n m"], free: Bool[Array, "n m"]
    ) -> tuple[Int[Array, " c"], Int[Array, "c k"], Bool[Array, "c k"]]:
        """The first `kink_neurons` neurons with `free` entries (`rows`, padded
        with 0; all neurons if None), and per row its first `max_kinks` free
        entries: their indices, and which of the slots are real (the others, and
        every slot of a padding row, are not). With `max_kinks` = 4, the fourth
        slot is real on at most two rows (the first ones that need it)."""
        m = z.shape[1]
        if self.kink_neurons is None or self.kink_neurons >= m:
            rows, some = jnp.arange(m), jnp.ones(m, bool)
        else:  # the slots of only these rows are searched
            rows, some = _first_true(jnp.any(free, axis=0), self.kink_neurons)
        near, real = _first_true(free.T[rows], self.max_kinks)
        real = real & some[:, None]
        if self.max_kinks == 4:  # a fourth slot on the first `_FULL_ROWS` rows only
            fourth = real[:, 3] & (running_count(real[:, 3]) <= _FULL_ROWS)
            real = real.at[:, 3].set(fourth)
        return rows, near, real

    # jitted: a pool traces the field ~11 times (stages, first step, speed, both
    # loops); calls with the same shapes now share one trace (W2 pool: 4 s less)
    @eqx.filter_jit
    def velocity(
        self,
        objective: Objective,
        params: Params,
        data: Dataset,
        pieces: "Pieces | None" = None,
    ) -> Params:
        """The minimal-norm velocity; with `pieces` (a step's start, see `KinkSolver`),
        every entry keeps the slope it had there wherever z is, and the free
        entries stay those of the start."""
        parts = self._parts(objective, params, data, pieces)
        a = _min_norm_slopes(*parts.qp, parts.alpha, parts.side, self._joint_rows)
        return self._assemble(objective, params, parts, a)

    @eqx.filter_jit
    def lane_velocities(
        self, objective: Objective, params: Params, data: Dataset, pieces: "Pieces"
    ) -> Params:
        """`velocity` on frozen `pieces` of every lane of a pool (leading lane axes),
        with the box QPs of all lanes solved together over only their rows with
        free entries (`_pooled_slopes`): on W2 a lane has ~8 such rows of its 24
        and ~1 of its 6 joint rows. The same slopes, bit for bit (the velocities
        can differ from `vmap` of `velocity` by rounding, ~1e-17)."""
        parts = jax.vmap(self._parts, (None, 0, None, 0))(
            objective, params, data, pieces
        )
        a = _pooled_slopes(*parts.qp, parts.alpha, parts.side, self._joint_rows)
        return jax.vmap(self._assemble, (None, 0, 0, 0))(objective, params, parts, a)

    @property
    def _joint_rows(self) -> int | None:
        """Rows per evaluation whose several kink slots are solved jointly (None:
        all; see `_min_norm_slopes`)."""
        return None if self.kink_neurons is None else _JOINT_ROWS

    def _parts(self, objective, params, data, pieces) -> "_Parts":
        """Everything of `velocity` but the box QP's slopes."""
        model = _checked(objective.model(params))
        hidden, v, x = hidden_rows(model, data.x)
        z = x @ hidden.T  # (n, m)
        alpha = model.negative_slope
        pieces = self._pieces(z, x, alpha) if pieces is None else pieces
        sides, free, rows = pieces.sides, pieces.free, pieces.rows
        act = jnp.where(
            sides > 0, z, jnp.where(sides < 0, alpha * z, jnp.maximum(z, alpha * z))
        )
        r = jax.grad(objective.loss)(act @ v, data.y)  # dL/df(x_i)
        rv = r[pieces.near] * v[rows, None]  # (c, K)
        zk = jnp.einsum("ckp,cp->ck", pieces.inputs, hidden[rows])
        # (m, p): the gradient off the free entries
        off = jnp.einsum("nm,np->mp", pieces.slope * r[:, None] * v, x)
        u = rv[..., None] * pieces.inputs
        target = jnp.where(free, self.pull * zk * rv, 0.0)
        # materialized first: fused into the 27 faces, XLA CPU recomputes them (4x)
        qp = jax.lax.optimization_barrier((off[rows], u, target, free))
        side = jnp.where(zk > 0, 1.0, alpha)
        return _Parts(act, r, off, rows, qp, side, alpha)

    @staticmethod
    def _assemble(objective, params, parts: "_Parts", a) -> Params:
        """The velocity from `_parts` and the slopes `a` of the free entries."""
        model = objective.model(params)
        _, u, _, _ = parts.qp
        # padding rows have u = 0: adding their 0 to row 0 changes nothing
        grad_hidden = parts.off.at[parts.rows].add(jnp.einsum("ck,ckp->cp", a, u))
        grad_v = parts.act.T @ parts.r
        leaves = _as_params(model, objective.leaves(params), -grad_hidden, -grad_v)
        return objective.like_params(leaves)


class _Parts(eqx.Module):
    """What `FilippovFlow.velocity` computes around its box QP: the activations
    `act` (n, m), residuals `r` (n,), the gradient `off` (m, p) off the free
    entries, the QP's `rows` (c,) and inputs `qp` = (c, u, target, free), the
    slopes `side` (c, K) of each slot's side and the leaky slope `alpha`."""

    act: Float[Array, "n m"]
    r: Float[Array, " n"]
    off: Float[Array, "m p"]
    rows: Int[Array, " c"]
    qp: tuple
    side: Float[Array, "c k"]
    alpha: float = eqx.field(static=True)


class Pieces(eqx.Module):
    """Final. Where each pre-activation is, as a step frozen there needs it:
    `sides` (n, m) in {-1, 0, 1} (below, inside, above the band); the neurons
    `rows` (c,) with entries of free slope (see `FilippovFlow.kinks`), and per
    row the indices `near` (c, K) of up to `max_kinks` such entries, `free`
    (c, K) marking the real ones, and their `inputs` (c, K, p), the rows
    [x_i; 1] (0 on empty slots); and `slope` (n, m), sigma' of every other
    entry (that of its side; 0 on the free ones)."""

    sides: Int[Array, "n m"]
    rows: Int[Array, " c"]
    near: Int[Array, "c k"]
    free: Bool[Array, "c k"]
    slope: Float[Array, "n m"]
    inputs: Float[Array, "c k p"]


def held_entries(
    rows: Int[Array, " c"],
    near: Int[Array, "c k"],
    free: Bool[Array, "c k"],
    shape: tuple[int, int],
) -> Bool[Array, "n m"]:
    """The (n, m) mask of the entries in the real kink slots (see `kinks`)."""
    entry = jnp.where(free, near, shape[0])  # out of range: dropped
    return jnp.zeros(shape, bool).at[entry, rows[:, None]].set(True, mode="drop")


def _checked(model):
    if not isinstance(model, ReLUNeuron | TwoLayerReLU):
        raise ValueError(
            f"FilippovFlow needs a ReLUNeuron or TwoLayerReLU, got {type(model).__name__}"
        )
    return model


def _min_norm_slopes(
    c, u, target, free, lo: float, side=None, joint: int | None = None
) -> Float[Array, "m k"]:
    """argmin over a in [lo, 1]^K of |c + sum_k a_k u_k|^2 - 2 target . a, per row.

    Exact: the minimum lies in the relative interior of one of the 3^K faces of the
    box, where it is the face's unconstrained minimizer; each face's small system
    (at most K x K) is solved by unrolled elimination, elementwise over rows
    (no batched linear solves), and the feasible face of least value wins. Up to
    K = 3 the rows go through the 27 faces as a chain of selections. With
    `joint`, only the first `joint` rows with two or more real slots (slots fill
    in order) do; every other row solves its first slot alone (3 faces), with its
    other slots at their `side` slopes, as entries beyond `max_kinks` (W2 starts 0
    and 28 had at most 1 and 3 such rows at once; with `joint` = 6 the QP of 64
    lanes x 24 rows costs 0.33 ms instead of 0.54 ms). At K = 4
    at most `_FULL_ROWS` rows may have a real fourth slot (`kinks` sees to it):
    those few are solved one at a time over all 81 faces along a face axis (none,
    no cost), the rest as at K = 3. (81 faces for every neuron cost 5.7x the
    whole step of K = 3.)
    """
    k = u.shape[1]
    if k > 4:
        g = jnp.einsum("cip,cjp->cij", u, u)
        return _active_set_slopes(g, jnp.einsum("cip,cp->ci", u, c) - target, free, lo)
    if k == 4:
        side = None if side is None else side[:, :3]
        a = _min_norm_slopes(c, u[:, :3], target[:, :3], free[:, :3], lo, side, joint)
        a = jnp.concatenate([a, jnp.full_like(a[:, :1], lo)], axis=1)
        four = lambda take: _four_slots(c, u, target, free, lo, take)
        return in_chunks(free[:, 3], 1, four, a)
    if joint is None or joint >= c.shape[0] or k == 1:
        return _joint_slopes(c, u, target, free, lo)
    rows, real = _first_true(free[:, 1], joint)
    a = _first_slots(c, u, target, free, side, lo)
    return _put_rows(a, rows, real, _rows_jointly(c, u, target, free, lo, rows))


def _first_slots(c, u, target, free, side, lo: float) -> Float[Array, "m k"]:
    """Each row's first slot solved alone (3 faces), its other slots held at
    their `side` slopes, as entries beyond `max_kinks`."""
    fixed = jnp.where(free[:, 1:], side[:, 1:], 0.0)
    rest = c + jnp.einsum("ck,ckp->cp", fixed, u[:, 1:])
    # materialized first (see `FilippovFlow._parts`)
    qp = jax.lax.optimization_barrier((rest, u[:, :1], target[:, :1], free[:, :1]))
    return jnp.concatenate([_joint_slopes(*qp, lo), side[:, 1:]], axis=1)


def _rows_jointly(c, u, target, free, lo: float, take) -> Float[Array, "r k"]:
    """The rows `take` over all the faces of their slots (K <= 3)."""
    qp = jax.lax.optimization_barrier((c[take], u[take], target[take], free[take]))
    return _joint_slopes(*qp, lo)


def _pooled_slopes(
    c, u, target, free, lo: float, side, joint: int | None
) -> Float[Array, "lanes c k"]:
    """`_min_norm_slopes` of every lane of a pool (leading lane axes), the same
    slopes. Each row's QP is elementwise, so the rows with free entries of all
    lanes are gathered and solved together, in chunks of `_CHUNK_ROWS` rows per
    lane (first slots), the lanes' joint rows (the first `joint` of each lane
    with two or more) in chunks of `_CHUNK_JOINT` per lane, and at K = 4 the rows
    with a fourth slot (at most `_FULL_ROWS` per lane) over their 81 faces in
    chunks of one per 8 lanes; each in as many chunks as its count needs, so
    rows without free entries, most of them, cost nothing. With `joint` = None
    every row with free slots past the first is a joint row. With K > 4, or
    fewer than `_POOLED_ROWS` rows a lane, every lane's rows are solved as in
    `_min_norm_slopes`."""
    lanes, rows, k = free.shape
    if k > 4 or rows < _POOLED_ROWS:
        solve = lambda c, u, target, free, side: _min_norm_slopes(
            c, u, target, free, lo, side, joint
        )
        return jax.vmap(solve)(c, u, target, free, side)
    if k == 1:
        jointly = jnp.zeros(lanes * rows, bool)
    elif joint is None or joint >= rows:  # every row with free slots past the first
        jointly = jnp.any(jnp.asarray(free)[..., 1:], axis=-1).reshape(-1)
    else:
        first, real = jax.vmap(lambda f: _first_true(f[:, 1], joint))(free)
        lane = jnp.arange(lanes)[:, None] * rows
        out = lanes * rows  # out of range: dropped
        jointly = jnp.zeros(out, bool).at[jnp.where(real, lane + first, out)]
        jointly = jointly.set(True, mode="drop")
    c, u, target, free, side = (
        jnp.asarray(a).reshape(lanes * rows, *a.shape[2:])
        for a in (c, u, target, free, side)
    )

    u3, target3, free3, side3 = (a[:, :3] for a in (u, target, free, side))
    alone = lambda take: _first_slots(
        c[take], u3[take], target3[take], free3[take], side3[take], lo
    )
    together = lambda take: _rows_jointly(c, u3, target3, free3, lo, take)
    a = jnp.full((lanes * rows, min(k, 3)), lo, c.dtype)  # (a fourth slot below)
    a = in_chunks(jnp.any(free, axis=1), lanes * _CHUNK_ROWS, alone, a)
    a = in_chunks(jointly, lanes * _CHUNK_JOINT, together, a)
    if k == 4:
        a = jnp.concatenate([a, jnp.full_like(a[:, :1], lo)], axis=1)
        four = lambda take: _four_slots(c, u, target, free, lo, take)
        a = in_chunks(free[:, 3], max(1, lanes // 8), four, a)
    return a.reshape(lanes, rows, k)


def _four_slots(c, u, target, free, lo: float, take) -> Float[Array, "r 4"]:
    """The box QP of the rows `take` over all their 81 faces (K = 4)."""
    c, u, target, free = (jnp.asarray(a)[take] for a in (c, u, target, free))
    g = jnp.einsum("rip,rjp->rij", u, u)
    h = jnp.einsum("rip,rp->ri", u, c) - target
    return _faces_along_axis(g, h, free, lo)


def _joint_slopes(c, u, target, free, lo: float) -> Float[Array, "m k"]:
    """The box QP of every row over all its 3^K faces (K <= 3), by `_faces_chain`."""
    k = u.shape[1]
    g = [[jnp.sum(u[:, i] * u[:, j], -1) for j in range(k)] for i in range(k)]
    h = [jnp.sum(u[:, i] * c, -1) - target[:, i] for i in range(k)]
    return _faces_chain(g, h, free, lo)


def _put_rows(a, rows, real, solved) -> Float[Array, "m k"]:
    """`a` with its rows `rows` (where `real`) replaced by those of `solved`. (By a
    scatter: a chain of selections made XLA CPU recompute `solved` in each, 7x.)"""
    return a.at[jnp.where(real, rows, a.shape[0])].set(solved, mode="drop")


def _first_true(
    mask: Bool[Array, "*b n"], count: int
) -> tuple[Int[Array, "*b c"], Bool[Array, "*b c"]]:
    """Indices of the first `count` true entries along the last axis (0 where there
    are fewer), and which are real. By a running count and masked sums: argmin /
    top_k selections cost ~10x a whole gradient on XLA CPU for W2's shapes."""
    running = running_count(mask)
    index = jnp.arange(mask.shape[-1])
    first = [
        jnp.sum(jnp.where(mask & (running == k + 1), index, 0), axis=-1)
        for k in range(count)
    ]
    return jnp.stack(first, axis=-1), running[..., -1:] > jnp.arange(count)


def _faces_chain(g, h, free, lo: float) -> Float[Array, "m k"]:
    """The box QP by its faces, one after another, each elementwise over neurons;
    the first face of least value by a chain of selections (face 0, all slopes at
    the lower bound, if none is feasible)."""
    k = len(h)
    m = h[0].shape[0]
    scale = sum(g[i][i] for i in range(k)) + 1e-300
    best_value, best = None, None
    for face in itertools.product((lo, 1.0, None), repeat=k):  # None: free
        open_ = [i for i in range(k) if face[i] is None]
        a = [jnp.full(m, 0.0 if b is None else b) for b in face]
        ok = jnp.ones(m, bool)
        if open_:
            # G_FF a_F = -(h_F + G_FB a_B)
            rhs = [
                -(h[i] + sum(g[i][j] * face[j] for j in range(k) if j not in open_))
                for i in open_
            ]
            solution, det = _solve_gram([[g[i][j] for j in open_] for i in open_], rhs)
            for i, ai in zip(open_, solution):
                a[i] = ai
                ok = ok & free[:, i] & (a[i] >= lo - 1e-12) & (a[i] <= 1 + 1e-12)
            ok = ok & (jnp.abs(det) > 1e-12 * scale ** len(open_))
        a = [jnp.clip(ai, lo, 1.0) for ai in a]
        value = sum(a[i] * (g[i][j] * a[j]) for i in range(k) for j in range(k))
        value = jnp.where(ok, value + 2 * sum(h[i] * a[i] for i in range(k)), jnp.inf)
        a = jnp.stack(a, axis=1)
        if best is None:
            best_value, best = value, a
        else:
            better = value < best_value
            best_value = jnp.where(better, value, best_value)
            best = jnp.where(better[:, None], a, best)
    return best


def _faces_along_axis(
    g: Float[Array, "r k k"], h: Float[Array, "r k"], free, lo: float
):
    """The same enumeration with the 3^K faces on an axis (for a few rows: on all 64
    neurons this was 2.5x slower than the chain, as XLA CPU recomputes shared terms
    in every fused face)."""
    k = h.shape[1]
    state = np.array(list(itertools.product((0, 1, 2), repeat=k)))  # lo, 1, free
    open_ = state == 2  # (F, k)
    fixed = np.where(state == 1, 1.0, np.where(open_, 0.0, lo))
    both = open_[:, :, None] & open_[:, None, :]
    matrix = jnp.where(both, g[:, None], np.eye(k))  # (r, F, k, k)
    rhs = jnp.where(open_, -(h[:, None] + jnp.einsum("rij,fj->rfi", g, fixed)), fixed)
    matrix, rhs = jax.lax.optimization_barrier((matrix, rhs))
    solution, det = _solve_gram(
        [[matrix[..., i, j] for j in range(k)] for i in range(k)],
        [rhs[..., i] for i in range(k)],
    )
    a, det = jax.lax.optimization_barrier((jnp.stack(solution, axis=-1), det))
    inside = free[:, None] & (a >= lo - 1e-12) & (a <= 1 + 1e-12)
    scale = jnp.trace(g, axis1=1, axis2=2)[:, None] + 1e-300
    ok = jnp.all(~open_ | inside, axis=-1)
    ok = ok & (jnp.abs(det) > 1e-12 * scale ** open_.sum(1))
    a = jnp.clip(a, lo, 1.0)
    value = jnp.einsum("rfi,rij,rfj->rf", a, g, a) + 2 * jnp.einsum("rfi,ri->rf", a, h)
    value = jnp.where(ok, value, jnp.inf)
    faces = np.arange(state.shape[0])
    least = jnp.min(value, axis=1, keepdims=True)
    first = jnp.min(jnp.where(value == least, faces, faces.size), axis=1)
    return jnp.take_along_axis(a, first[:, None, None], axis=1)[:, 0]


def _active_set_slopes(
    g: Float[Array, "r k k"],
    h: Float[Array, "r k"],
    free: Bool[Array, "r k"],
    lo: float,
) -> Float[Array, "r k"]:
    """argmin over a in [lo, 1]^K of a.G a + 2 h.a per row, by a primal active-set
    method (for K > 4, where the 3^K faces are too many to enumerate). From every
    slope held at `lo`, each iteration either frees the held slope whose multiplier
    says that moving it inwards lowers the value (at a face's minimizer), or moves
    the free slopes towards their face's minimizer, up to the first bound met, which
    then holds that slope. It stops at the minimizer of every row, or after
    `4K + 4` iterations.
    Slots that are not `free` stay at `lo`. A ridge of 1e-13 trace(G) keeps faces
    whose inputs are dependent solvable."""
    k = h.shape[1]
    scale = jnp.trace(g, axis1=1, axis2=2)
    g = g + (1e-13 * scale + 1e-300)[:, None, None] * jnp.eye(k)
    tol = 1e-12 * (scale + jnp.max(jnp.abs(h), axis=1))
    slots = jnp.arange(k)

    def wanted(a, held, upper):  # how much each held slope wants to move inwards
        q = jnp.einsum("rij,rj->ri", g, a) + h  # half the gradient
        return q, jnp.where(held & free, jnp.where(upper, q, -q), -jnp.inf)

    def unfinished(state):
        count, _, _, _, at_min, _, inwards = state
        done = at_min & (jnp.max(inwards, axis=1) <= tol)
        return (count < 4 * k + 4) & ~jnp.all(done)

    def iteration(state):
        count, a, held, upper, at_min, q, inwards = state
        j = jnp.argmax(inwards, axis=1)
        release = at_min & (jnp.max(inwards, axis=1) > tol)
        held = held & ~(release[:, None] & (slots == j[:, None]))
        move = ~at_min | release
        open_ = ~held
        matrix = jnp.where(open_[:, :, None] & open_[:, None, :], g, jnp.eye(k))
        step, _ = _solve_gram(
            [[matrix[:, i, l] for l in range(k)] for i in range(k)],
            [jnp.where(open_[:, i], -q[:, i], 0.0) for i in range(k)],
        )
        step = jnp.stack(step, axis=1)
        room = jnp.where(step > 0, (1.0 - a) / step, (lo - a) / step)
        room = jnp.where(open_ & (step != 0), jnp.maximum(room, 0.0), jnp.inf)
        b = jnp.argmin(room, axis=1)
        length = jnp.minimum(jnp.min(room, axis=1), 1.0)
        blocked = (length < 1.0)[:, None] & (slots == b[:, None])
        bound = jnp.where(step > 0, 1.0, lo)
        new = jnp.where(blocked, bound, jnp.clip(a + length[:, None] * step, lo, 1.0))
        a = jnp.where(move[:, None], new, a)
        held = held | (move[:, None] & blocked)
        upper = jnp.where(move[:, None] & blocked, step > 0, upper)
        at_min = jnp.where(move, length >= 1.0, at_min)
        return count + 1, a, held, upper, at_min, *wanted(a, held, upper)

    a, held, upper = (
        jnp.full_like(h, lo),
        jnp.ones(h.shape, bool),
        jnp.zeros(h.shape, bool),
    )
    state = (0, a, held, upper, jnp.ones(h.shape[:1], bool), *wanted(a, held, upper))
    return jax.lax.while_loop(unfinished, iteration, state)[1]


def _solve_gram(
    matrix: list[list[Array]], rhs: list[Array]
) -> tuple[list[Array], Array]:
    """Solve a small Gram (symmetric positive semi-definite) system of arrays,
    elementwise, by Gaussian elimination without pivoting (such matrices need
    none): the solution and the determinant, the product of the pivots (a zero
    pivot divides by 1; the caller rejects singular systems by the determinant)."""
    n = len(rhs)
    matrix, rhs = [list(row) for row in matrix], list(rhs)
    det = 1.0
    for p in range(n):
        det = det * matrix[p][p]
        pivot = jnp.where(matrix[p][p] == 0, 1.0, matrix[p][p])
        for i in range(p + 1, n):
            factor = matrix[i][p] / pivot
            for j in range(p + 1, n):
                matrix[i][j] = matrix[i][j] - factor * matrix[p][j]
            rhs[i] = rhs[i] - factor * rhs[p]
    x = [None] * n
    for i in reversed(range(n)):
        rest = rhs[i] - sum(matrix[i][j] * x[j] for j in range(i + 1, n))
        x[i] = rest / jnp.where(matrix[i][i] == 0, 1.0, matrix[i][i])
    return x, det


def layer_inputs(x: Float[Array, "n d"], has_bias: bool) -> Float[Array, "n p"]:
    """The rows [x_i; 1] that multiply [w_j; b_j] (x itself without a bias)."""
    if not has_bias:
        return x
    return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)


def hidden_rows(
    model, x: Float[Array, "n d"]
) -> tuple[Float[Array, "m p"], Float[Array, " m"], Float[Array, "n p"]]:
    """`hidden_layer`'s rows and output weights, with the rows `layer_inputs` of
    `x` that they multiply."""
    hidden, v, has_bias = hidden_layer(model)
    return hidden, v, layer_inputs(x, has_bias)


def hidden_layer(model) -> tuple[Float[Array, "m p"], Float[Array, " m"], bool]:
    """Rows [w_j, b_j] of the hidden layer, the output weights, and whether b exists."""
    if isinstance(model, ReLUNeuron):
        weight, bias, v = model.weight[None, :], model.bias, jnp.ones(1)
        bias = None if bias is None else bias[None]
    else:
        weight, bias, v = model.hidden_weight, model.hidden_bias, model.output_weight
    hidden = (
        weight if bias is None else jnp.concatenate([weight, bias[:, None]], axis=1)
    )
    return hidden, v, bias is not None


def _as_params(
    model, params: Params, hidden: Float[Array, "m p"], v: Float[Array, " m"]
) -> Params:
    """Velocities in the layout of `params` (frozen leaves, e.g. a fixed v, get 0)."""
    if isinstance(model, ReLUNeuron):
        d = model.weight.shape[0]
        out = eqx.tree_at(lambda m: m.weight, params, hidden[0, :d])
        if model.bias is not None:
            out = eqx.tree_at(lambda m: m.bias, out, hidden[0, d])
        return out
    d = model.hidden_weight.shape[1]
    out = eqx.tree_at(lambda m: m.hidden_weight, params, hidden[:, :d])
    if model.hidden_bias is not None:
        out = eqx.tree_at(lambda m: m.hidden_bias, out, hidden[:, d])
    v = v if model.train_output else jnp.zeros_like(v)
    return eqx.tree_at(lambda m: m.output_weight, out, v)
