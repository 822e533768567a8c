"""Many gradient flows in one compiled call, at a cost that follows the total work.

`jax.vmap(diffeqsolve)` runs its batched while-loop until the slowest member ends,
so it costs n x max_i steps_i. `LanePool` instead keeps a fixed pool of lanes busy:
every `refill_every` steps, lanes whose flow has ended hand their result to the
output buffers and take the next pending initialization, so the cost is about
sum_i steps_i / lanes iterations. Once nothing is pending and few lanes are busy,
those move to a pool 1/8 as wide, so stragglers do not keep the whole width
running. The steps are Diffrax's own (`solver.step`,
`controller.adapt_step_size`), taken exactly as `diffeqsolve` takes them, so each
member's path is the one `solve_flow` computes alone. Explicit Runge-Kutta solvers
step all lanes as one state (`LaneTerm`: each lane's step length is its control),
which gives each lane its own step bit for bit and saves the transposed copies of
the stage buffer that `vmap` of the step makes (W2: 1.12x a whole call, W1: 1.7x).
"""

import abc
import math
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, PartitionSpec
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray

from ._custom_types import Params
from ._data import Dataset
from ._kinks import KinkSolver
from ._lanes import LaneTerm
from ._loss import AbstractLoss, SumSquareLoss
from ._objective import AbstractFlow, FlatLayout, GradientFlow, Objective, tree_norm
from ._progress import progress_bar, report_progress
from ._result import FlowResult, Status, STATUS_CODE, status_from_code
from ._samplers import AbstractSampler, sample_members
from ._solve import (
    all_finite,
    check_arguments,
    count_evals,
    DEFAULT_CONTROLLER,
    end_velocity,
    solve_one,
)
from ._tail import TailJump


_RUNNING, _IDLE, _JUMP = -1, -2, -3


def _steps_lanes_at_once(solver: dfx.AbstractSolver, term: dfx.AbstractTerm) -> bool:
    """Explicit Runge-Kutta solvers, alone or in a `KinkSolver`, on an ODE term:
    their state (if any) is FSAL's (first step, last stage), which
    `_Problem.solve_lanes` can hold for all lanes at once, and the rescaling to
    s in [0, 1] needs dy/dt = F(y), whose control is t1 - t0."""
    if isinstance(solver, KinkSolver):
        return _steps_lanes_at_once(solver.solver, term)
    return isinstance(solver, dfx.AbstractERK) and isinstance(term, dfx.ODETerm)


class _Source(eqx.Module):
    """Initialization `i`, flat: a row of stacked parameters, or a sampler's member i."""

    stacked: Params | None
    sampler: AbstractSampler | None
    key: PRNGKeyArray | None
    like: Params
    layout: FlatLayout

    def __call__(self, index: Int[Array, ""]) -> Float[Array, " size"]:
        if self.sampler is None:
            return self.layout.ravel(jtu.tree_map(lambda a: a[index], self.stacked))
        members = sample_members(self.sampler, self.key, index[None], self.like)
        return self.layout.ravel(jtu.tree_map(lambda a: a[0], members))


class _Lane(eqx.Module):
    index: Int[Array, ""]
    code: Int[Array, ""]
    tprev: Float[Array, ""]
    tnext: Float[Array, ""]
    y: Params
    solver_state: object
    controller_state: object
    made_jump: Bool[Array, ""]
    accepted: Int[Array, ""]
    rejected: Int[Array, ""]
    jumps: Int[Array, ""]
    next_jump: Float[Array, ""]
    mark: Float[Array, ""]  # t at the last multiple of `stall_steps` tried steps


class _Problem(eqx.Module):
    """Everything a lane step needs, as one pytree."""

    flow: AbstractFlow
    objective: Objective
    data: Dataset
    solver: dfx.AbstractSolver
    controller: dfx.AbstractStepSizeController
    gtol: Float[Array, ""]
    t1: Float[Array, ""]
    dt0: Float[Array, ""] | None
    tail: TailJump | None
    max_steps: int = eqx.field(static=True)

    @property
    def term(self) -> dfx.ODETerm:
        return self.flow.term(self.objective)

    @property
    def stepping(self) -> tuple[dfx.AbstractSolver, dfx.AbstractStepSizeController]:
        return self.flow.integrator(self.objective, self.solver, self.controller)

    def start(self, index: Int[Array, ""], y0: Params) -> _Lane:
        """A lane at t = 0, initialized as `diffeqsolve` does."""
        (solver, controller), term = self.stepping, self.term
        order = solver.error_order(term)
        tnext, controller_state = controller.init(
            term, 0.0, self.t1, y0, self.dt0, self.data, solver.func, order
        )
        tnext = jnp.minimum(tnext, self.t1)
        zero = jnp.asarray(0)
        return _Lane(
            index=index,
            code=jnp.asarray(_RUNNING),
            tprev=jnp.zeros_like(tnext),
            tnext=tnext,
            y=y0,
            solver_state=solver.init(term, 0.0, tnext, y0, self.data),
            controller_state=controller_state,
            made_jump=jnp.asarray(False),
            accepted=zero,
            rejected=zero,
            jumps=zero,
            next_jump=jnp.asarray(
                self.tail.threshold if self.tail else 0.0, dtype=tnext.dtype
            ),
            mark=jnp.zeros_like(tnext),
        )

    def step(self, lanes: _Lane, stall_steps: int, stall_advance: float) -> _Lane:
        """One solver step of every lane (`solve_lanes`), then each lane's step-size
        adaptation, as in Diffrax's own loop; a lane whose t advanced by less than
        `stall_advance` max(1, t) over its last `stall_steps` tried steps ends as
        stalled (see `LanePool`)."""
        adapt = lambda lane, stepped: self._adapt(
            lane, stepped, stall_steps, stall_advance
        )
        return jax.vmap(adapt)(lanes, self.solve_lanes(lanes))

    def solve_lanes(self, lanes: _Lane) -> tuple:
        """`solver.step` of every lane: each lane's end point, error estimate, solver
        state and result. Explicit Runge-Kutta solvers (alone or in a `KinkSolver`)
        step all lanes as one state (`LaneTerm`), the others under `vmap`."""
        (solver, _), term = self.stepping, self.term
        if not _steps_lanes_at_once(solver, term):

            def one(lane):
                y, y_error, _, state, result = solver.step(
                    term,
                    lane.tprev,
                    lane.tnext,
                    lane.y,
                    self.data,
                    lane.solver_state,
                    lane.made_jump,
                )
                return y, y_error, state, result

            return jax.vmap(one)(lanes)
        h = lanes.tnext - lanes.tprev
        field = jax.vmap(lambda y, data, _: term.vf(0.0, y, data), (0, None, None))
        together = LaneTerm(field, h)
        y, y_error, _, state, result = solver.step(
            together,
            jnp.zeros((), h.dtype),
            jnp.ones((), h.dtype),
            lanes.y,
            self.data,
            lanes.solver_state,
            lanes.made_jump,
        )
        # what the solver keeps for all lanes at once (FSAL's first-step flag, the
        # result) goes back to each lane
        state = jtu.tree_map(
            lambda a, b: jnp.broadcast_to(a, jnp.shape(b)), state, lanes.solver_state
        )
        result = jtu.tree_map(lambda r: jnp.broadcast_to(r, h.shape), result)
        return y, y_error, state, result

    def _adapt(
        self, lane: _Lane, stepped: tuple, stall_steps: int, stall_advance: float
    ) -> _Lane:
        """One lane's step-size adaptation and status after its `solve_lanes` step."""
        (solver, controller), term = self.stepping, self.term
        order = solver.error_order(term)
        y, y_error, solver_state, solver_result = stepped
        y_error = jtu.tree_map(lambda e: jnp.where(jnp.isnan(e), jnp.inf, e), y_error)
        keep, tprev, tnext, made_jump, controller_state, controller_result = (
            controller.adapt_step_size(
                lane.tprev,
                lane.tnext,
                lane.y,
                y,
                self.data,
                y_error,
                order,
                lane.controller_state,
            )
        )
        tprev = jnp.minimum(tprev, self.t1)
        tnext = jnp.minimum(tnext, self.t1)
        select = lambda new, old: jtu.tree_map(
            lambda a, b: jnp.where(keep, a, b), new, old
        )
        y = select(y, lane.y)
        accepted = lane.accepted + keep
        rejected = lane.rejected + ~keep
        finite = all_finite(y)
        failed = (solver_result != dfx.RESULTS.successful) & keep
        failed = failed | (controller_result != dfx.RESULTS.successful)
        # the steady-state test reads the FSAL stage where it is exact (one
        # evaluation per step fewer); a rejected step or a crossing tests nothing
        end = end_velocity(solver, solver_state)
        if end is None:
            speed = self.flow.speed(self.objective, y, self.data)
        else:
            speed = jnp.where(keep & end[1], tree_norm(end[0]), jnp.inf)
        checkpoint = (accepted + rejected) % stall_steps == 0
        stalled = tprev - lane.mark < stall_advance * jnp.maximum(1.0, tprev)
        stalled = checkpoint & stalled
        code = jnp.select(
            [
                ~finite,
                speed < self.gtol,
                speed < lane.next_jump,
                failed,
                accepted + rejected >= self.max_steps,
                tprev >= self.t1,
                stalled,
            ],
            [
                STATUS_CODE["nonfinite"],
                STATUS_CODE["converged"],
                _JUMP,
                STATUS_CODE["solver_failure"],
                STATUS_CODE["step_limit"],
                STATUS_CODE["time_limit"],
                STATUS_CODE["stalled"],
            ],
            _RUNNING,
        )
        new = _Lane(
            index=lane.index,
            code=code,
            tprev=tprev,
            tnext=tnext,
            y=y,
            solver_state=select(solver_state, lane.solver_state),
            controller_state=controller_state,
            made_jump=jnp.where(keep, made_jump, lane.made_jump),
            accepted=accepted,
            rejected=rejected,
            jumps=lane.jumps,
            next_jump=lane.next_jump,
            mark=jnp.where(checkpoint, tprev, lane.mark),
        )
        running = lane.code == _RUNNING
        return jtu.tree_map(lambda a, b: jnp.where(running, a, b), new, lane)


class AbstractEnsembleEngine(eqx.Module):
    """How a batch of flows is run (abstract). Engines differ in cost, not in results."""

    @abc.abstractmethod
    def run(
        self, problem: _Problem, source: _Source, num: int, progress: bool
    ) -> FlowResult:
        """Flows from members 0..num-1 of `source`."""


class PlainVmap(AbstractEnsembleEngine):
    """Final. `jax.vmap` of one `diffeqsolve` per member: the obvious baseline.

    Costs num x (the slowest member's steps) and holds every member at once.
    """

    def run(self, problem, source, num, progress):
        del progress
        return _run_vmap(problem, source, num)


@eqx.filter_jit
def _run_vmap(problem: _Problem, source: _Source, num: int) -> FlowResult:
    solve = lambda y0: solve_one(
        problem.flow,
        problem.objective,
        y0,
        problem.data,
        problem.solver,
        problem.controller,
        problem.gtol,
        problem.t1,
        problem.dt0,
        problem.max_steps,
        None,
        problem.tail,
    )
    return jax.vmap(solve)(jax.vmap(source)(jnp.arange(num)))


class LanePool(AbstractEnsembleEngine):
    """Final. A pool of `lanes` flows stepped together, refilled every `refill_every` steps.

    Memory is set by the pool, not by num (beyond the results). The last few
    flows finish in a pool of `narrow` lanes (None: lanes // 8 if that is 4 or more,
    else none; the narrow pool's loop compiles the step again). With several
    `devices`, members are split into contiguous blocks and each device runs its
    own pool with `jax.shard_map`, with no collective inside the loop.

    Fields: `lanes` (per device), `refill_every`, `narrow`, `devices` (None: every local
    device of the default backend; on CPU, `jax.config.update("jax_num_cpu_devices",
    n)` at start-up gives n devices, one per core, and the CLI sets one per core);
    `stall_steps` and `stall_advance`: a flow whose t advances by less than
    `stall_advance` max(1, t) over `stall_steps` tried steps ends as `stalled`
    (on W2 such flows take steps of ~1e-6 from then on, to max_steps). A hard
    passage can fail that and still get through (a fixed-output start with 6 kink
    slots: 6 570 tried steps alone, a false `stalled` in a default pool), so a
    `retry_engine` of `solve_ensemble` may well be laxer.

    The default 256 lanes suits CPU cores. A GPU needs far wider pools, since each
    loop iteration pays a fixed launch cost (on an H200, W2's took ~3.5 ms at 1024
    lanes and ~3.7 ms at 4096); W1 at 10^6 starts took 3.3 s there in 131 072 lanes
    (`benchmarks/RESULTS.md`, GPU).
    """

    lanes: int = eqx.field(static=True, default=256)
    refill_every: int = eqx.field(static=True, default=16)
    narrow: int | None = eqx.field(static=True, default=None)
    devices: tuple | None = eqx.field(static=True, default=None)
    stall_steps: int = eqx.field(static=True, default=1000)
    stall_advance: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        if self.lanes < 1 or self.refill_every < 1 or self.stall_steps < 1:
            raise ValueError(
                "lanes, refill_every and stall_steps must be positive, got "
                f"{self.lanes}, {self.refill_every}, {self.stall_steps}"
            )
        if not self.stall_advance >= 0:
            raise ValueError(
                f"stall_advance must be non-negative, got {self.stall_advance}"
            )
        if self.narrow is not None and not 1 <= self.narrow <= self.lanes:
            raise ValueError(f"narrow must be in [1, lanes], got {self.narrow}")

    def narrow_width(self, width: int) -> int:
        """The narrow pool's lanes for a pool of `width` lanes (`width` itself: none).

        Each loop compiles the step anew, so by default a pool keeps one loop unless
        it narrows to 4 lanes or more (XLA rounds narrower batches differently, ~1e-12).
        """
        if self.narrow is None:
            return width // 8 if width >= 32 else width
        return min(self.narrow, width)

    def run(self, problem, source, num, progress):
        # Across processes (after `jax.distributed.initialize`) each process takes a
        # contiguous block of members on its own devices, and the blocks are gathered
        # once at the end: JAX's runtime is the only distributed machinery.
        processes, rank = jax.process_count(), jax.process_index()
        block = -(-num // processes)
        start, count = rank * block, max(min(block, num - rank * block), 1)
        devices = self.devices or tuple(jax.local_devices())
        per_device = -(-count // len(devices))
        if source.stacked is not None:
            rows = jnp.minimum(jnp.arange(start, start + count), num - 1)
            source = eqx.tree_at(
                lambda s: s.stacked,
                source,
                jtu.tree_map(lambda a: a[rows], source.stacked),
            )
            start = 0
        mesh = Mesh(np.asarray(devices), ("ensemble",))
        result = _run_pool(
            problem,
            source,
            start,
            per_device,
            self.lanes,
            self.refill_every,
            self.narrow_width(min(self.lanes, per_device)),
            (self.stall_steps, self.stall_advance),
            mesh,
            progress,
        )
        result = jtu.tree_map(lambda a: a[:count], result)
        if processes == 1:
            return result
        gathered = multihost_utils.process_allgather(
            jtu.tree_map(lambda a: _pad_rows(a, block), result)
        )
        return jtu.tree_map(lambda a: a.reshape(-1, *a.shape[2:])[:num], gathered)


def _pad_rows(a, rows: int):
    return jnp.concatenate([a, jnp.repeat(a[-1:], rows - a.shape[0], axis=0)])


@eqx.filter_jit
def _run_pool(
    problem: _Problem,
    source: _Source,
    start: int,
    per_device: int,
    lanes: int,
    refill_every: int,
    narrow: int,
    stall: tuple[int, float],
    mesh: Mesh,
    progress: bool,
) -> FlowResult:
    dynamic, static = eqx.partition((problem, source), eqx.is_array)
    stacked = source.stacked is not None
    if stacked:  # pad to a whole number of blocks, then give each device its own
        pad = lambda a: _pad_rows(a, per_device * mesh.size)
        dynamic = eqx.tree_at(
            lambda d: d[1].stacked, dynamic, jtu.tree_map(pad, dynamic[1].stacked)
        )

    def block(dynamic):
        problem, source = eqx.combine(dynamic, static)
        offset = start + jax.lax.axis_index("ensemble") * per_device
        if stacked:
            offset = 0  # the stacked rows arrive already split
        return _pool_loop(
            problem,
            source,
            offset,
            per_device,
            lanes,
            refill_every,
            narrow,
            stall,
            progress,
        )

    specs = jtu.tree_map(lambda _: PartitionSpec(), dynamic)
    if stacked:
        specs = eqx.tree_at(
            lambda d: d[1].stacked,
            specs,
            jtu.tree_map(lambda _: PartitionSpec("ensemble"), specs[1].stacked),
        )
    return jax.shard_map(
        block,
        mesh=mesh,
        in_specs=(specs,),
        out_specs=PartitionSpec("ensemble"),
        check_vma=False,
    )(dynamic)


def _pool_loop(
    problem: _Problem,
    source: _Source,
    offset,
    num: int,
    lanes: int,
    refill_every: int,
    narrow: int,
    stall: tuple[int, float],
    progress: bool,
) -> FlowResult:
    lanes = min(lanes, num)
    y_like = source(jnp.asarray(0))
    # Once no member is pending and at most `narrow` lanes are busy, those move to
    # a pool of `narrow` lanes: stragglers (a flow 10x slower than the median, one
    # that runs to max_steps) then no longer pay for the whole pool's width
    # (`LanePool.narrow_width`).
    # blank lanes of either width, from one start built outside the loops, with a
    # set first step: an idle lane's values are never read, and Diffrax's initial
    # step selection would add a copy of the field to the program (W2: ~10 % of it)
    given_step = eqx.tree_at(
        lambda p: p.dt0, problem, jnp.asarray(1e-6), is_leaf=lambda x: x is None
    )
    blank = eqx.tree_at(
        lambda l: (l.index, l.code),
        given_step.start(jnp.asarray(0), y_like),
        (jnp.asarray(num), jnp.asarray(_IDLE)),
    )
    idle = {
        width: jtu.tree_map(
            lambda a: jnp.broadcast_to(a, (width, *jnp.shape(a))), blank
        )
        for width in {lanes, narrow}
    }
    outputs = (
        jtu.tree_map(lambda a: jnp.zeros((num, *a.shape), a.dtype), y_like),
        jnp.zeros(num),
        jnp.zeros(num, int),
        jnp.zeros(num, int),
        jnp.zeros(num, int),
        jnp.full(num, STATUS_CODE["solver_failure"]),
    )

    def jump(lane: _Lane) -> _Lane:
        """Jump up to 1/8 of the lanes waiting in their tail (the rest wait a round)."""
        want = lane.code == _JUMP
        _, pick = jax.lax.top_k(want.astype(jnp.int32), max(want.shape[0] // 8, 1))
        chosen = want[pick]
        y = jtu.tree_map(lambda a: a[pick], lane.y)
        jumped, ok = jax.vmap(problem.tail.jump, in_axes=(None, None, 0, None, None))(
            problem.flow, problem.objective, y, problem.data, problem.gtol
        )
        accept, reject = chosen & ok, chosen & ~ok
        put = lambda a, b: a.at[pick].set(
            jnp.where(accept.reshape(-1, *[1] * (b.ndim - 1)), b, a[pick])
        )
        code = jnp.where(
            accept,
            STATUS_CODE["converged"],
            jnp.where(reject, _RUNNING, lane.code[pick]),
        )
        return eqx.tree_at(
            lambda l: (l.y, l.code, l.jumps, l.next_jump),
            lane,
            (
                jtu.tree_map(put, lane.y, jumped),
                lane.code.at[pick].set(code),
                lane.jumps.at[pick].add(chosen),
                lane.next_jump.at[pick].set(
                    jnp.where(
                        reject,
                        lane.next_jump[pick] / problem.tail.retry,
                        lane.next_jump[pick],
                    )
                ),
            ),
        )

    def refill(lane: _Lane, next_index, outputs):
        if problem.tail is not None:
            lane = jax.lax.cond(jnp.any(lane.code == _JUMP), jump, lambda l: l, lane)
        finished = lane.code >= 0
        where = jnp.where(finished, lane.index, num)  # out of range: dropped
        put = lambda buf, val: buf.at[where].set(val, mode="drop")
        ys, ts, acc, rej, jumps, codes = outputs
        outputs = (
            jtu.tree_map(put, ys, lane.y),
            put(ts, lane.tprev),
            put(acc, lane.accepted),
            put(rej, lane.rejected),
            put(jumps, lane.jumps),
            put(codes, lane.code),
        )
        if progress:
            jax.debug.callback(
                report_progress,
                jnp.sum(finished),
                jnp.sum(lane.code == STATUS_CODE["converged"]),
            )
        needs = (lane.code != _RUNNING) & (lane.code != _JUMP)
        new_index = next_index + jnp.cumsum(needs) - 1
        load = needs & (new_index < num)
        index = jnp.where(load, new_index, 0)

        def fresh():
            return jax.vmap(lambda i: problem.start(i, source(offset + i)))(index)

        blank = idle[load.shape[0]]
        if load.shape[0] == lanes:
            started = jax.lax.cond(jnp.any(load), fresh, lambda: blank)
        else:  # the narrow pool runs once nothing is pending
            started = blank
        pick = lambda a, b, c: jnp.where(
            load.reshape(-1, *[1] * (a.ndim - 1)),
            a,
            jnp.where(needs.reshape(-1, *[1] * (a.ndim - 1)), b, c),
        )
        lane = jtu.tree_map(pick, started, blank, lane)
        return lane, jnp.minimum(next_index + jnp.sum(needs), num), outputs

    def body(carry):
        lane, next_index, outputs = refill(*carry)
        lane = jax.lax.fori_loop(
            0,
            refill_every,
            lambda _, l: problem.step(l, *stall),
            lane,
        )
        return lane, next_index, outputs

    def wide(carry):
        lane, next_index, _ = carry
        return (next_index < num) | (jnp.sum(lane.code != _IDLE) > narrow)

    def cond(carry):
        lane, next_index, _ = carry
        return (next_index < num) | jnp.any(lane.code != _IDLE)

    carry = (idle[lanes], jnp.asarray(0), outputs)
    if narrow < lanes:
        lane, next_index, outputs = jax.lax.while_loop(wide, body, carry)
        busy = jnp.argsort(lane.code == _IDLE, stable=True)[:narrow]
        carry = (jtu.tree_map(lambda a: a[busy], lane), next_index, outputs)
    _, _, (ys, ts, acc, rej, jumps, codes) = jax.lax.while_loop(cond, body, carry)
    return _assemble(problem, source, offset, ys, ts, acc, rej, jumps, codes)


def _assemble(
    problem: _Problem, source: _Source, offset, ys, ts, acc, rej, jumps, codes
) -> FlowResult:
    objective, data = problem.objective, problem.data
    num = ts.shape[0]
    return FlowResult(
        init=jax.vmap(lambda i: objective.model(source(offset + i)))(jnp.arange(num)),
        model=jax.vmap(objective.model)(ys),
        loss=jax.vmap(objective, in_axes=(0, None))(ys, data),
        grad_norm=jax.vmap(problem.flow.speed, in_axes=(None, 0, None))(
            objective, ys, data
        ),
        t_final=ts,
        num_steps=acc,
        num_rejected=rej,
        num_vf_evals=count_evals(problem.solver, acc + rej, fsal_check=True)
        + jumps
        * (
            0
            if problem.tail is None
            else problem.tail.cost(
                objective.model(jtu.tree_map(lambda a: a[0], ys)), data, problem.flow
            )
        ),
        status=jax.vmap(status_from_code)(codes),
        num_jumps=jumps,
    )


def solve_ensemble(
    model: eqx.Module,
    data: Dataset,
    inits: eqx.Module | AbstractSampler,
    *,
    key: PRNGKeyArray | None = None,
    num: int | None = None,
    loss: AbstractLoss = SumSquareLoss(),
    solver: dfx.AbstractSolver = dfx.Tsit5(),
    stepsize_controller: dfx.AbstractStepSizeController = DEFAULT_CONTROLLER,
    gtol: float = 1e-9,
    t1: float = math.inf,
    dt0: float | None = None,
    max_steps: int = 100_000,
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    flow: AbstractFlow = GradientFlow(),
    tail: TailJump | None = None,
    engine: AbstractEnsembleEngine = LanePool(),
    progress: bool = False,
    retry: AbstractFlow | None = None,
    retry_engine: AbstractEnsembleEngine | None = None,
) -> FlowResult:
    """Gradient flows from many initializations to their limit points, in one call.

    Args:
        model: the model; its trainable leaves give the parameters' shapes, and its
            other leaves and static fields are shared by every member.
        data: the dataset.
        inits: either the same model with a leading member axis on every trainable
            leaf (e.g. from `eqx.filter_vmap`), or an `AbstractSampler`, with `key`
            and `num`. Member i of a sampler depends only on (`key`, i).
        loss, solver, stepsize_controller, gtol, t1, dt0, max_steps, trainable,
            flow, tail: as for `solve_flow`.
        engine: `LanePool()` (default: cost follows the total work; devices and
            pool size are its fields) or `PlainVmap()` (the baseline).
        progress: show a tqdm bar of finished and converged members.
        retry: a flow for a second pass over the members that ended at
            `max_steps` or stalled, from their starts, with everything else the same; e.g.
            `FilippovFlow(max_kinks=4, kink_neurons=None)` after `FilippovFlow()`
            (on W2, the 1.6 % of starts where a neuron meets 4 kinks at once;
            `FilippovFlow(max_kinks=4)` in a `LanePool` solves them in one pass).
            Their results are those of the second pass, with the work of both
            passes in the counts.
        retry_engine: the engine of that second pass (default: `engine`); e.g. a
            `LanePool` with a laxer stall rule, for flows that get through hard
            passages slowly.

    Returns:
        A `FlowResult` whose leaves have a leading member axis, `init` included.
        A member that fails gets its status; the others are unaffected.
    """
    check_arguments(model, data, gtol, t1, max_steps, stepsize_controller)
    params, skeleton = eqx.partition(model, trainable)
    layout = FlatLayout(params)  # members are integrated as flat vectors
    if isinstance(inits, AbstractSampler):
        if key is None or num is None or num < 1:
            raise ValueError(f"a sampler needs a key and a positive num, got num={num}")
        source = _Source(None, inits, key, params, layout)
    else:
        stacked = eqx.filter(inits, trainable)
        num = _check_stacked(params, stacked)
        source = _Source(stacked, None, None, params, layout)
    problem = _Problem(
        flow,
        Objective(skeleton, loss, layout),
        data,
        solver,
        stepsize_controller,
        jnp.asarray(gtol, dtype=float),
        jnp.asarray(t1, dtype=float),
        None if dt0 is None else jnp.asarray(dt0, dtype=float),
        tail,
        max_steps,
    )
    with progress_bar(num, progress):
        result = engine.run(problem, source, num, progress)
    redo = np.flatnonzero(
        np.asarray(
            (result.status == Status.step_limit) | (result.status == Status.stalled)
        )
    )
    if retry is None or not redo.size:
        return result
    pick = lambda a: a[redo] if eqx.is_array(a) else a
    again = solve_ensemble(
        model,
        data,
        jtu.tree_map(pick, result.init),
        loss=loss,
        solver=solver,
        stepsize_controller=stepsize_controller,
        gtol=gtol,
        t1=t1,
        dt0=dt0,
        max_steps=max_steps,
        trainable=trainable,
        flow=retry,
        tail=tail,
        engine=engine if retry_engine is None else retry_engine,
        progress=progress,
    )
    work = lambda r: (r.num_steps, r.num_rejected, r.num_vf_evals, r.num_jumps)
    first = jtu.tree_map(pick, work(result))
    add = lambda a, b: jnp.where((a < 0) | (b < 0), -1, a + b)  # -1: unknown
    again = eqx.tree_at(work, again, jtu.tree_map(add, work(again), first))
    merge = lambda a, b: a.at[redo].set(b) if eqx.is_array(a) else a
    return jtu.tree_map(merge, result, again)


def _check_stacked(params: Params, stacked: Params) -> int:
    if jtu.tree_structure(params) != jtu.tree_structure(stacked):
        raise ValueError(
            "inits must have the model's structure (same trainable leaves)"
        )
    sizes = set()
    for leaf, batch in zip(
        jtu.tree_leaves(params), jtu.tree_leaves(stacked), strict=True
    ):
        if batch.shape[1:] != leaf.shape or batch.ndim != leaf.ndim + 1:
            raise ValueError(
                f"each init leaf must have shape (num, *{leaf.shape}), got {batch.shape}"
            )
        sizes.add(batch.shape[0])
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"init leaves disagree on the member count: {sorted(sizes)}")
    return sizes.pop()
