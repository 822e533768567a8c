r"""The falsification engine: three tests of a candidate implicit regularizer.

Given flows (dataset, start, limit) and candidates R, Vardi & Shamir (2021) give three
ways to refute "R characterizes the limit" (paper digest, Section 3, check 4):

- (A) gap: $R(w_\infty) - \min_G R > 0$ on a flow that reaches zero loss. Exact
  where R has an exact minimizer (`AbstractRegularizer.minimize`); otherwise the
  minimum is bounded from above by local search over points of G, so the gap found
  is a lower bound and a refutation is still sound.
- (B) ties: two flows from the same start whose limits both have zero loss on both
  datasets. Each limit lies in the other's zero-loss set, so a characterizing R has
  $R(w_a) \le R(w_b)$ and $R(w_b) \le R(w_a)$: equal values (Theorem 5's step 1).
- (C) ties moved by symmetries: rotating the data ($X M^T$) and scaling the labels
  ($c\,y$) move a single neuron's limits from 0 to $c M w_\infty$ (Theorem 3), so
  every tie (B) gives ties at $c M w_a, c M w_b$ (Theorem 5's step 2). For the
  depth-2 model $(w, v) \mapsto (\sqrt c M w, \sqrt c v)$, start included.

A row is refuted when its violation exceeds `tol` (1 + |R|).
"""

import dataclasses
import functools as ft
import itertools as it
from collections.abc import Callable, Sequence

import jax.random as jr
import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._data import Dataset
from .._result import FlowResult
from ..models import ReLUNeuron, TwoLayerReLU
from ._regularizers import AbstractRegularizer
from ._zero_loss import zero_loss_set, ZeroLossSet


_KINDS = ("neuron", "two_layer")


@dataclasses.dataclass(frozen=True, eq=False)
class FlowSample:
    r"""Final. One flow: its data, start and limit, as flat parameter vectors.

    Attributes:
        label: a name for tables.
        data: the dataset (X, y).
        start: (p,) the start.
        limit: (p,) the limit (or where the flow ended; `zero_loss` says which).
        kind: "neuron" (p = d, parameters w of $\sigma(\langle x, w\rangle)$) or
            "two_layer" (p = d + 1, parameters (w, v) of
            $v\,\sigma(\langle x, w\rangle)$).
    """

    label: str
    data: Dataset
    start: Float[np.ndarray, " p"]
    limit: Float[np.ndarray, " p"]
    kind: str = "neuron"

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}, got {self.kind!r}")
        p = self.data.dim + (self.kind == "two_layer")
        for name in ("start", "limit"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.shape != (p,):
                raise ValueError(f"{name} must have shape ({p},), got {value.shape}")
            object.__setattr__(self, name, value)

    @property
    def effective(self) -> Float[np.ndarray, " d"]:
        r"""The limit as a linear weight: w for a neuron, $u = v\,w$ for depth 2."""
        if self.kind == "neuron":
            return self.limit
        return self.limit[-1] * self.limit[:-1]

    @ft.cached_property
    def zero_set(self) -> ZeroLossSet:
        """The zero-loss set G(X, y) of the effective weight (ReLU)."""
        return zero_loss_set(self.data)

    def zero_loss(self, atol: float = 1e-9) -> bool:
        """Whether the limit has zero loss (its effective weight is in G to `atol`)."""
        return self.zero_set.contains(self.effective, atol)

    def transformed(
        self, rotation: ArrayLike | None, scale: float = 1.0
    ) -> "FlowSample":
        r"""The sample moved by a symmetry: data $(X M^T, c\,y)$, start and limit mapped
        equivariantly (exact for the flow; see the module docstring)."""
        d = self.data.dim
        m = np.eye(d) if rotation is None else np.asarray(rotation, dtype=float)
        x = np.asarray(self.data.x) @ m.T
        data = Dataset(x, scale * np.asarray(self.data.y))

        def move(p):
            if self.kind == "neuron":
                return scale * (m @ p)
            return np.sqrt(scale) * np.append(m @ p[:-1], p[-1])

        name = (
            f"{self.label} [M, c={scale:g}]"
            if rotation is not None
            else (f"{self.label} [c={scale:g}]")
        )
        return FlowSample(name, data, move(self.start), move(self.limit), self.kind)


def flow_sample(label: str, data: Dataset, result: FlowResult) -> FlowSample:
    """A `FlowSample` from a `FlowResult` of a bias-free `ReLUNeuron` or width-1
    `TwoLayerReLU` (from `solve_flow` or `exact_flow`)."""
    return FlowSample(
        label, data, _flat(result.init), _flat(result.model), _kind(result.init)
    )


def _kind(model) -> str:
    if isinstance(model, ReLUNeuron) and model.bias is None:
        return "neuron"
    if (
        isinstance(model, TwoLayerReLU)
        and model.hidden_bias is None
        and model.hidden_weight.shape[0] == 1
    ):
        return "two_layer"
    raise ValueError(
        "samples need a bias-free ReLUNeuron or a bias-free TwoLayerReLU of width 1, "
        f"got {type(model).__name__}"
    )


def _flat(model) -> np.ndarray:
    if _kind(model) == "neuron":
        return np.asarray(model.weight, dtype=float)
    return np.append(np.asarray(model.hidden_weight[0]), float(model.output_weight[0]))


@dataclasses.dataclass(frozen=True)
class FalsificationRow:
    r"""Final. One check of one regularizer.

    Attributes:
        regularizer: R's name.
        test: "A" (gap), "B" (tie) or "C" (tie moved by a symmetry).
        samples: labels of the sample(s) involved.
        value: the violation: the gap $R(w_\infty) - \min_G R$ (A) or
            $|R(w_a) - R(w_b)|$ (B, C).
        threshold: `tol` (1 + |R|); refuted iff value > threshold.
        exact: for A, whether $\min_G R$ was exact (else an upper bound, so value
            is a lower bound on the gap); True for B and C.
        note: details (R's values, the minimizer, the transform).
        equivariance_error: for C rows with `reflow`, the largest difference between
            the re-flowed limits and the equivariantly moved ones (else NaN).
    """

    regularizer: str
    test: str
    samples: tuple[str, ...]
    value: float
    threshold: float
    exact: bool
    note: str = ""
    equivariance_error: float = float("nan")

    @property
    def refuted(self) -> bool:
        """Whether this row refutes the regularizer."""
        return self.value > self.threshold


@dataclasses.dataclass(frozen=True)
class FalsificationReport:
    """Final. All rows of `falsify`, with per-regularizer verdicts.

    Attributes:
        rows: every `FalsificationRow`.
        names: the regularizers' names, in the order given.
        tol: the relative tolerance used.
    """

    rows: tuple[FalsificationRow, ...]
    names: tuple[str, ...]
    tol: float

    def refuted(self, name: str, test: str | None = None) -> bool:
        """Whether some row (of `test`, if given) refutes regularizer `name`."""
        return any(
            r.refuted
            for r in self.rows
            if r.regularizer == name and test in (None, r.test)
        )

    def worst(self, name: str, test: str) -> FalsificationRow | None:
        """The row of `test` with the largest violation for `name` (None if no rows)."""
        rows = [r for r in self.rows if r.regularizer == name and r.test == test]
        return max(rows, key=lambda r: r.value / r.threshold, default=None)

    def to_markdown(self) -> str:
        """A markdown table: one line per regularizer, the worst row of each test."""
        lines = [
            "| R | refuted | (A) worst gap R(w_inf) - min_G R "
            "| (B) worst tie |R(a) - R(b)| "
            "| (C) worst moved tie |",
            "|---|---|---|---|---|",
        ]
        for name in self.names:
            cells = []
            for test in "ABC":
                row = self.worst(name, test)
                if row is None:
                    cells.append("n/a")
                    continue
                count = sum(
                    r.refuted
                    for r in self.rows
                    if r.regularizer == name and r.test == test
                )
                total = sum(
                    1 for r in self.rows if r.regularizer == name and r.test == test
                )
                bound = "" if row.exact else " (lower bound)"
                cells.append(
                    f"{row.value:.3e}{bound} on {' & '.join(row.samples)}; "
                    f"{count}/{total} refute"
                )
            verdict = "**yes**" if self.refuted(name) else "no"
            lines.append(f"| {name} | {verdict} | " + " | ".join(cells) + " |")
        lines.append(f"\nTolerance: violation > {self.tol:g} (1 + |R|).")
        return "\n".join(lines)


def falsify(
    samples: Sequence[FlowSample],
    regularizers: Sequence[AbstractRegularizer],
    *,
    tol: float = 1e-8,
    member_tol: float = 1e-9,
    transforms: Sequence[tuple[ArrayLike | None, float]] = (),
    reflow: Callable[[FlowSample], ArrayLike] | None = None,
    key: PRNGKeyArray | None = None,
    num_candidates: int = 16,
) -> FalsificationReport:
    """Tests every regularizer against every sample by the tests (A), (B), (C).

    Args:
        samples: the flows. Those whose limit is not a zero-loss point (to
            `member_tol`) take no part: the paper's R only speaks about flows that
            reach zero loss.
        regularizers: the candidates.
        tol: refute when a violation exceeds `tol` (1 + |R|).
        member_tol: membership tolerance for zero-loss sets (distance units,
            relative to 1 + |w|).
        transforms: (rotation M or None, label scale c > 0) pairs for test (C).
        reflow: optional `sample -> limit`: recomputes the limit of each moved
            sample by running the flow, instead of trusting equivariance (the
            difference is each (C) row's `equivariance_error`). A moved pair that is
            no longer a tie gives no (C) rows.
        key: PRNG key for the local search of (A) when R has no exact minimizer.
        num_candidates: random points of G tried in that search.

    Returns:
        The `FalsificationReport`.
    """
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    key = jr.key(0) if key is None else key
    live = [s for s in samples if s.zero_loss(member_tol)]
    rows: list[FalsificationRow] = []
    for reg in regularizers:
        for i, s in enumerate(live):
            if s.kind != "neuron":
                continue  # the parameter zero-loss set of depth 2 is not a polyhedron
            rows.append(
                _gap_row(
                    reg, s, live, tol, member_tol, jr.fold_in(key, i), num_candidates
                )
            )
    pairs = [
        (a, b)
        for a, b in it.combinations(live, 2)
        if a.kind == b.kind and _tie(a, b, member_tol)
    ]
    for a, b in pairs:
        for reg in regularizers:
            rows.append(_tie_row(reg, "B", a, b, tol))
    for (m, c), (a, b) in it.product(transforms, pairs):
        ta, tb = a.transformed(m, c), b.transformed(m, c)
        note = f"M {'rotation' if m is not None else 'identity'}, c = {c:g}"
        error = np.nan
        if reflow is not None:
            error, moved = 0.0, []
            for t in (ta, tb):
                limit = np.asarray(reflow(t), dtype=float)
                error = max(error, float(np.max(np.abs(limit - t.limit))))
                moved.append(dataclasses.replace(t, limit=limit))
            ta, tb = moved
            note += "; limits re-flowed"
        if not _tie(ta, tb, member_tol):
            continue
        for reg in regularizers:
            row = _tie_row(reg, "C", ta, tb, tol, note)
            rows.append(dataclasses.replace(row, equivariance_error=error))
    return FalsificationReport(tuple(rows), tuple(r.name for r in regularizers), tol)


def _tie(a: FlowSample, b: FlowSample, member_tol: float) -> bool:
    same_start = np.allclose(a.start, b.start, rtol=0, atol=1e-12)
    return (
        same_start
        and a.data.dim == b.data.dim
        and all(
            s.zero_set.contains(t.effective, member_tol) for s in (a, b) for t in (a, b)
        )
    )


def _tie_row(reg, test, a, b, tol, note="") -> FalsificationRow:
    ra, rb = reg(a.limit, a.start), reg(b.limit, b.start)
    return FalsificationRow(
        reg.name,
        test,
        (a.label, b.label),
        abs(ra - rb),
        tol * (1 + max(abs(ra), abs(rb))),
        True,
        (note + "; " if note else "") + f"R = {ra:.6g} vs {rb:.6g}",
    )


def _gap_row(reg, s, live, tol, member_tol, key, num_candidates) -> FalsificationRow:
    value = reg(s.limit, s.start)
    g = s.zero_set
    w_min = reg.minimize(g, s.start)
    exact = w_min is not None
    if not exact:
        w_min = _local_minimum(reg, s, live, member_tol, key, num_candidates)
    r_min = reg(w_min, s.start)
    return FalsificationRow(
        reg.name,
        "A",
        (s.label,),
        value - r_min,
        tol * (1 + abs(value)),
        exact,
        f"R(w_inf) = {value:.6g}, min_G R {'=' if exact else '<='} {r_min:.6g} at "
        + np.array2string(np.asarray(w_min), precision=4),
    )


def _local_minimum(reg, s, live, member_tol, key, num_candidates) -> np.ndarray:
    """A point of G with small R: the best of candidate points of G, then SLSQP."""
    g = s.zero_set
    candidates = [g.project(s.start), g.project(np.zeros(g.dim)), s.limit]
    candidates += [
        t.limit
        for t in live
        if t.kind == "neuron"
        and t.data.dim == g.dim
        and g.contains(t.limit, member_tol)
    ]
    if num_candidates:
        candidates += list(g.sample(key, num_candidates))
    values = [reg(c, s.start) for c in candidates]
    best = candidates[int(np.argmin(values))]
    constraints = []
    if len(g.eq_rhs):
        constraints.append({"type": "eq", "fun": lambda w: g.eq_matrix @ w - g.eq_rhs})
    if len(g.ineq_matrix):
        constraints.append({"type": "ineq", "fun": lambda w: -(g.ineq_matrix @ w)})
    for i in np.argsort(values)[:3]:
        res = scipy.optimize.minimize(
            lambda w: reg(w, s.start),
            candidates[i],
            method="SLSQP",
            constraints=constraints,
            options={"ftol": 1e-14, "maxiter": 200},
        )
        if g.contains(res.x, member_tol) and reg(res.x, s.start) < reg(best, s.start):
            best = res.x
    return np.asarray(best)
