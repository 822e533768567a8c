r"""Theorem 8 at scale: how far the flow travels vs the nearest zero-loss point.

Vardi & Shamir (2021), Theorem 8: for any non-decreasing $\sigma$ and any start, if
the flow converges to zero loss then $\|w_\infty - w_0\| \le 2\,\mathrm{dist}(w_0, G)$,
because $\|w(t) - \bar w\|$ is non-increasing for every zero-loss $\bar w$. Whether
2 is tight is open; `adversarial_ratio_search` looks for bad cases. Host-side; random
numbers from explicit JAX keys (member i of a batch depends only on the key and i).
"""

import dataclasses

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
from jaxtyping import Bool, Float, PRNGKeyArray

from .._data import Dataset
from ..exact._piecewise import PiecewiseFlow
from ._batch import neuron_flows
from ._zero_loss import zero_loss_set_of


_MEMBER_TOL = 1e-9  # zero-loss membership of a limit (distance, relative to 1 + |w|)
_MIN_DIST = 1e-6  # starts closer than this (relative) to G are not counted


@dataclasses.dataclass(frozen=True, eq=False)
class RealizableProblems:
    r"""Final. Single-neuron problems with teacher labels $y = \max(X w^*, 0)$.

    Attributes:
        x: (n_init, n_data, d) inputs.
        y: (n_init, n_data) labels.
        teacher: (n_init, d) the teachers $w^*$ (so G is never empty).
        start: (n_init, d) the starts $w_0$.
    """

    x: Float[np.ndarray, "n_init n_data d"]
    y: Float[np.ndarray, "n_init n_data"]
    teacher: Float[np.ndarray, "n_init d"]
    start: Float[np.ndarray, "n_init d"]

    def __len__(self) -> int:
        return len(self.y)

    def dataset(self, i: int) -> Dataset:
        """Problem i as a `Dataset`."""
        return Dataset(self.x[i], self.y[i])


def random_realizable_problems(
    key: PRNGKeyArray, num: int, n: int, d: int, *, start_scale: float = 1.0
) -> RealizableProblems:
    """`num` random problems: Gaussian inputs, teacher and start (scaled by
    `start_scale`); problem i depends only on `key` and i."""
    if num < 1 or n < 1 or d < 1:
        raise ValueError(f"num, n and d must be >= 1, got {num}, {n}, {d}")

    def one(k):
        kx, kt, ks = jr.split(k, 3)
        x = jr.normal(kx, (n, d), dtype=jnp.float64)
        teacher = jr.normal(kt, (d,), dtype=jnp.float64)
        return x, teacher, start_scale * jr.normal(ks, (d,), dtype=jnp.float64)

    keys = jax.vmap(lambda i: jr.fold_in(key, i))(jnp.arange(num))
    x, teacher, start = (np.asarray(a) for a in jax.vmap(one)(keys))
    return RealizableProblems(
        x, np.maximum(np.einsum("bnd,bd->bn", x, teacher), 0.0), teacher, start
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Theorem8Study:
    r"""Final. The Theorem 8 ratio on a batch of problems.

    Attributes:
        problems: the `RealizableProblems`.
        limits: (n_init, d) the exact flows' limits.
        counted: (n_init,) the flow converged to a zero-loss point from a start not
            already in G: the runs the theorem speaks about.
        travel: (n_init,) $\|w_\infty - w_0\|$.
        dist: (n_init,) $\mathrm{dist}(w_0, G)$ (the QP).
        ratio: (n_init,) travel / dist where counted, else NaN.
        monotone_increase: (n_init,) the largest increase of $\|w(t) - \bar w\|$
            between grid times, over the checked $\bar w \in G$, relative to
            $1 + \|w_0 - \bar w\|$; NaN where not checked.
    """

    problems: RealizableProblems
    limits: Float[np.ndarray, "n_init d"]
    counted: Bool[np.ndarray, " n_init"]
    travel: Float[np.ndarray, " n_init"]
    dist: Float[np.ndarray, " n_init"]
    ratio: Float[np.ndarray, " n_init"]
    monotone_increase: Float[np.ndarray, " n_init"]


def theorem8_study(
    problems: RealizableProblems,
    *,
    key: PRNGKeyArray | None = None,
    num_checked: int | None = None,
    num_wbar: int = 4,
) -> Theorem8Study:
    r"""Flows every problem exactly, measures the ratio, and checks monotonicity.

    Args:
        problems: the batch.
        key: for the random zero-loss points $\bar w$.
        num_checked: how many counted runs get the trajectory check (default all).
        num_wbar: random points of G per checked run, besides the projection of the
            start and the limit.

    Returns:
        The `Theorem8Study`.
    """
    key = jr.key(0) if key is None else key
    batch = neuron_flows(problems.x, problems.y, problems.start)
    num = len(problems)
    travel = np.linalg.norm(batch.limits - problems.start, axis=1)
    dist, counted = np.full(num, np.nan), np.zeros(num, dtype=bool)
    increase = np.full(num, np.nan)
    checked = 0
    for i in range(num):
        if not batch.converged[i]:
            continue
        g = zero_loss_set_of(problems.x[i], problems.y[i])
        if not g.contains(batch.limits[i], _MEMBER_TOL):
            continue
        projection = g.project(problems.start[i])
        dist[i] = np.linalg.norm(projection - problems.start[i])
        counted[i] = dist[i] > _MIN_DIST * (1 + np.linalg.norm(problems.start[i]))
        if counted[i] and (num_checked is None or checked < num_checked):
            wbars = np.vstack(
                [projection, batch.limits[i], g.sample(jr.fold_in(key, i), num_wbar)]
            )
            increase[i] = distance_monotonicity(
                batch.flows[i], wbars, span=time_span(problems.x[i])
            )
            checked += 1
    ratio = np.where(counted, travel / np.where(counted, dist, 1.0), np.nan)
    return Theorem8Study(problems, batch.limits, counted, travel, dist, ratio, increase)


def distance_monotonicity(
    flow: PiecewiseFlow,
    wbars: Float[np.ndarray, "k d"],
    ts: np.ndarray | None = None,
    *,
    span: tuple[float, float] = (1e-6, 1e4),
) -> float:
    r"""Largest increase of $\|w(t) - \bar w\|$ between consecutive times, over the
    rows $\bar w$ of `wbars`, relative to $1 + \|w_0 - \bar w\|$ (Theorem 8's proof
    says it is $\le 0$ for zero-loss $\bar w$; rounding gives about 1e-16).

    Args:
        flow: an exact single-neuron flow that converged.
        wbars: (k, d) points to measure from.
        ts: times; default: geometric times over `span`, 100 per decade (at least
            400), the switch times, and inf.
        span: (first, last) positive time of the default grid; `time_span(x)` gives
            one that covers every time scale of the data.
    """
    if ts is None:
        ts = np.concatenate(
            [
                [0.0],
                np.geomspace(*span, max(400, int(100 * np.log10(span[1] / span[0])))),
                flow.switch_times,
                [np.inf],
            ]
        )
        ts = np.sort(ts[ts <= flow.t_final])
    path = flow.at(ts)[:, 0, :]  # (T, d)
    dists = np.linalg.norm(path[:, None, :] - np.asarray(wbars)[None], axis=2)  # (T, k)
    rise = np.max(np.diff(dists, axis=0), axis=0, initial=-np.inf)
    return float(np.max(rise / (1.0 + dists[0])))


def time_span(x: Float[np.ndarray, "n_data d"]) -> tuple[float, float]:
    r"""A practical time span for the flow of one neuron on inputs x: from 1e-6 over
    the largest eigenvalue of $X^T X$ to 1e3 over the smaller of its smallest non-zero
    eigenvalue and the smallest $\|x_i\|^2$ (a heuristic for the slowest active set)."""
    sq = np.linalg.norm(x, axis=1) ** 2
    lam = np.linalg.eigvalsh(x.T @ x)
    live = lam[lam > 1e-12 * lam[-1]]
    small = min(float(live[0]), float(np.min(sq[sq > 0])))
    return 1e-6 / float(lam[-1]), 1e3 / small


@dataclasses.dataclass(frozen=True, eq=False)
class AdversarialResult:
    r"""Final. The worst Theorem 8 ratio found, with its problem.

    Attributes:
        ratio: the best (largest) ratio found.
        x, y, teacher, start: the problem; y = max(x teacher, 0).
        limit: the exact flow's limit $w_\infty$.
        projection: the zero-loss point nearest the start.
        history: (rounds,) the best ratio after the random phase and after each
            hill-climbing step.
        evaluations: number of flows run.
    """

    ratio: float
    x: Float[np.ndarray, "n_data d"]
    y: Float[np.ndarray, " n_data"]
    teacher: Float[np.ndarray, " d"]
    start: Float[np.ndarray, " d"]
    limit: Float[np.ndarray, " d"]
    projection: Float[np.ndarray, " d"]
    history: Float[np.ndarray, " rounds"]
    evaluations: int


def _ratio(x, teacher, start) -> tuple[float, np.ndarray, np.ndarray]:
    """(ratio or -inf, limit, projection) of one problem."""
    y = np.maximum(x @ teacher, 0.0)
    batch = neuron_flows(x[None], y[None], start[None])
    limit = batch.limits[0]
    if not batch.converged[0]:
        return -np.inf, limit, limit
    g = zero_loss_set_of(x, y)
    if not g.contains(limit, _MEMBER_TOL):
        return -np.inf, limit, limit
    projection = g.project(start)
    dist = np.linalg.norm(projection - start)
    if dist <= 1e-3 * (1 + np.linalg.norm(start)):  # ratios of near-zero lengths: noise
        return -np.inf, limit, projection
    return float(np.linalg.norm(limit - start) / dist), limit, projection


def adversarial_ratio_search(
    key: PRNGKeyArray,
    n: int,
    d: int,
    *,
    num_random: int = 500,
    num_climbs: int = 4,
    steps_per_climb: int = 250,
    step_size: float = 0.2,
) -> AdversarialResult:
    """Searches problems (inputs, teacher, start) for a large Theorem 8 ratio.

    Random search over `num_random` Gaussian problems (starts of scale 0.1 to 3), then
    from each of the best `num_climbs` a hill climb on (input directions, log input
    norms, teacher, start): Gaussian perturbations with an adaptive step that grows
    after a success, shrinks after a failure and restarts at `step_size` once below
    1e-4; a move is kept when the ratio grows. Input norms move on a log scale because
    widely different time scales make large ratios. Deterministic given `key`; starts
    within 1e-3 (relative) of G are not counted.

    Returns:
        The `AdversarialResult`.
    """
    k_random, k_scale, k_climb = jr.split(key, 3)
    scales = np.asarray(
        jnp.exp(
            jr.uniform(k_scale, (num_random,), minval=np.log(0.1), maxval=np.log(3.0))
        )
    )
    base = random_realizable_problems(k_random, num_random, n, d)
    found = []
    for i in range(num_random):
        start = scales[i] * base.start[i]
        found.append((_ratio(base.x[i], base.teacher[i], start)[0], i, start))
    found.sort(key=lambda item: -item[0])
    history = [found[0][0]]
    best = None
    for c, (ratio, i, start) in enumerate(found[:num_climbs]):
        params = _pack(base.x[i], base.teacher[i], start)
        noise = np.asarray(
            jr.normal(
                jr.fold_in(k_climb, c), (steps_per_climb, params.size), jnp.float64
            )
        )
        step = step_size
        for k in range(steps_per_climb):
            trial = params + step * noise[k]
            value = _ratio(*_unpack(trial, n, d))[0]
            if value > ratio:
                params, ratio, step = trial, value, min(step * 1.5, 1.0)
            else:
                step = step * 0.9 if step > 1e-4 else step_size
            history.append(max(history[-1], ratio))
        if best is None or ratio > best[0]:
            best = (ratio, params)
    ratio, params = best
    x, teacher, start = _unpack(params, n, d)
    value, limit, projection = _ratio(x, teacher, start)
    return AdversarialResult(
        ratio=value,
        x=x,
        y=np.maximum(x @ teacher, 0.0),
        teacher=teacher,
        start=start,
        limit=limit,
        projection=projection,
        history=np.array(history),
        evaluations=num_random + num_climbs * steps_per_climb,
    )


def _pack(x, teacher, start):
    """(row directions, log row norms, teacher / |teacher|, start / |teacher|)."""
    norms = np.linalg.norm(x, axis=1)
    scale = np.linalg.norm(teacher)
    return np.concatenate(
        [(x / norms[:, None]).ravel(), np.log(norms), teacher / scale, start / scale]
    )


def _unpack(params, n, d):
    directions = params[: n * d].reshape(n, d)
    directions = directions / np.linalg.norm(directions, axis=1, keepdims=True)
    x = np.exp(np.clip(params[n * d : n * d + n], -12.0, 12.0))[:, None] * directions
    rest = params[n * d + n :]
    return x, rest[:d], rest[d:]
