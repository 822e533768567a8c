r"""Zero-loss sets of a single neuron, and projections onto them (host-side numpy).

For ReLU ($\sigma(z) = \max(z, 0)$) the global minima with zero loss form the
polyhedron
$G(X, y) = \{w : \langle x_i, w\rangle = y_i \text{ if } y_i > 0,\;
\langle x_i, w\rangle \le 0 \text{ if } y_i = 0\}$, empty if some $y_i < 0$
(Vardi & Shamir 2021, Section 5). For a strictly monotone $\sigma$ (leaky ReLU with
slope $a > 0$, or linear) it is the affine set
$\{w : \langle x_i, w\rangle = \sigma^{-1}(y_i)\}$.

The projection of a point onto $G$ is a strictly convex QP, solved by the
Goldfarb-Idnani dual active-set method (`quadprog`) and then polished on its active
set by an exact equality-constrained least-squares step; the minimum of
$\|w\|_1$ over $G$ is an LP (`scipy.optimize.linprog`, HiGHS).
"""

import dataclasses
import functools as ft

import jax.random as jr
import numpy as np
import quadprog
import scipy.optimize
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._data import Dataset


_RANK_RTOL = (
    1e-12  # singular values of the equality rows below this (relative) are zero
)
_CONSISTENT_RTOL = (
    1e-10  # equality residual, relative to 1 + |b|, counted as consistent
)
_LP_TOL = 1e-10


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroLossSet:
    r"""Final. The set $\{w \in R^d : A_{eq} w = b_{eq},\ A_{in} w \le 0\}$.

    Build it with `zero_loss_set`. Rows of both matrices are scaled to unit norm, so
    `violation` is a distance to the violated constraint's hyperplane.

    Attributes:
        eq_matrix: (k, d) unit rows $x_i / \|x_i\|$ of the equality constraints.
        eq_rhs: (k,) right-hand sides $b_i / \|x_i\|$.
        ineq_matrix: (m, d) unit rows of the constraints $\langle a_j, w\rangle \le 0$.
        trivially_empty: True when emptiness is plain from the data: a ReLU label
            $y_i < 0$, or an input $x_i = 0$ with a non-zero target.
    """

    eq_matrix: Float[np.ndarray, "k d"]
    eq_rhs: Float[np.ndarray, " k"]
    ineq_matrix: Float[np.ndarray, "m d"]
    trivially_empty: bool = False

    @property
    def dim(self) -> int:
        """d, the dimension of the ambient space."""
        return self.eq_matrix.shape[1]

    def violation(self, w: ArrayLike) -> float:
        """Largest constraint violation at `w` (0 inside the set), in distance units."""
        w = np.asarray(w, dtype=float)
        worst = 0.0
        if len(self.eq_rhs):
            worst = max(worst, float(np.max(np.abs(self.eq_matrix @ w - self.eq_rhs))))
        if len(self.ineq_matrix):
            worst = max(worst, float(np.max(self.ineq_matrix @ w)))
        return worst

    def contains(self, w: ArrayLike, atol: float = 1e-9) -> bool:
        """Whether `w` satisfies the constraints up to `atol` (1 + |w|) (never when the
        set is trivially empty or its equalities are inconsistent)."""
        w = np.asarray(w, dtype=float)
        if self.trivially_empty or not self._equalities[2]:
            return False
        return self.violation(w) <= atol * (1.0 + float(np.linalg.norm(w)))

    @ft.cached_property
    def _equalities(self) -> tuple[np.ndarray, np.ndarray, bool]:
        """Orthonormal, independent equalities Q w = c, and their consistency."""
        a, b = self.eq_matrix, self.eq_rhs
        if len(b) == 0:
            return np.zeros((0, self.dim)), np.zeros(0), True
        u, s, vt = np.linalg.svd(a, full_matrices=True)
        rank = int(np.sum(s > _RANK_RTOL * s[0])) if s.size and s[0] > 0 else 0
        residual = np.linalg.norm(u[:, rank:].T @ b) if rank < len(b) else 0.0
        consistent = residual <= _CONSISTENT_RTOL * (1.0 + np.linalg.norm(b))
        return vt[:rank], (u[:, :rank].T @ b) / s[:rank], bool(consistent)

    @ft.cached_property
    def is_empty(self) -> bool:
        """Whether the set is empty (`trivially_empty`, inconsistent equalities, or an
        infeasible LP)."""
        if self.trivially_empty:
            return True
        q, c, consistent = self._equalities
        if not consistent:
            return True
        if len(self.ineq_matrix) == 0:
            return False
        lp = scipy.optimize.linprog(
            np.zeros(self.dim),
            A_ub=self.ineq_matrix,
            b_ub=np.zeros(len(self.ineq_matrix)),
            A_eq=q if len(c) else None,
            b_eq=c if len(c) else None,
            bounds=(None, None),
            method="highs",
        )
        return lp.status == 2

    def project(self, point: ArrayLike) -> Float[np.ndarray, " d"]:
        """The closest point of the set to `point` (Euclidean), to about 1e-14.

        Raises:
            ValueError: if the set is empty.
        """
        p = np.array(point, dtype=float)  # a writable copy: quadprog needs one
        if p.shape != (self.dim,):
            raise ValueError(f"point must have shape ({self.dim},), got {p.shape}")
        q, c, consistent = self._equalities
        if self.trivially_empty or not consistent:
            raise ValueError("the zero-loss set is empty")
        if len(self.ineq_matrix) == 0:
            return p - q.T @ (q @ p - c)
        cmat = np.concatenate([q, -self.ineq_matrix]).T
        rhs = np.concatenate([c, np.zeros(len(self.ineq_matrix))])
        try:
            w, *_, active = quadprog.solve_qp(
                np.eye(self.dim), p.copy(), np.ascontiguousarray(cmat), rhs, len(c)
            )
        except ValueError as error:  # infeasible, or (never seen) a degenerate case
            if self.is_empty:
                raise ValueError("the zero-loss set is empty") from error
            raise RuntimeError(
                f"quadprog failed on a non-empty set: {error}"
            ) from error
        # Polish: the exact projection onto the affine hull of the active constraints.
        rows = cmat.T[
            np.unique(np.concatenate([np.arange(len(c)), active[active > 0] - 1]))
        ]
        rows_rhs = np.concatenate([c, np.zeros(len(rows) - len(c))])
        polished = p - np.linalg.lstsq(rows, rows @ p - rows_rhs, rcond=None)[0]
        scale = 1.0 + np.linalg.norm(w)
        if np.linalg.norm(polished - w) <= 1e-9 * scale and self.violation(
            polished
        ) <= max(self.violation(w), 1e-15 * scale):
            return polished
        return w

    def distance(self, point: ArrayLike) -> float:
        """Euclidean distance from `point` to the set."""
        p = np.asarray(point, dtype=float)
        return float(np.linalg.norm(p - self.project(p)))

    def minimize_l1(self, center: ArrayLike | None = None) -> Float[np.ndarray, " d"]:
        r"""A minimizer of $\|w - c\|_1$ over the set, by linear programming (HiGHS).

        Args:
            center: c, default 0.

        Raises:
            ValueError: if the set is empty.
        """
        if self.is_empty:
            raise ValueError("the zero-loss set is empty")
        d = self.dim
        c0 = np.zeros(d) if center is None else np.asarray(center, dtype=float)
        q, c, _ = self._equalities
        eye = np.eye(d)
        # Variables (w, t): minimize sum t, |w - c0| <= t elementwise.
        a_ub = np.block(
            [
                [eye, -eye],
                [-eye, -eye],
                [self.ineq_matrix, np.zeros((len(self.ineq_matrix), d))],
            ]
        )
        b_ub = np.concatenate([c0, -c0, np.zeros(len(self.ineq_matrix))])
        a_eq = np.hstack([q, np.zeros((len(c), d))]) if len(c) else None
        lp = scipy.optimize.linprog(
            np.concatenate([np.zeros(d), np.ones(d)]),
            A_ub=a_ub,
            b_ub=b_ub,
            A_eq=a_eq,
            b_eq=c if len(c) else None,
            bounds=(None, None),
            method="highs",
            options={
                "primal_feasibility_tolerance": _LP_TOL,
                "dual_feasibility_tolerance": _LP_TOL,
            },
        )
        if lp.status != 0:
            raise RuntimeError(f"linprog failed: {lp.message}")
        return lp.x[:d]

    def sample(
        self, key: PRNGKeyArray, num: int, scale: float | None = None
    ) -> Float[np.ndarray, "num d"]:
        r"""`num` random points of the set: projections of Gaussian points around the
        set, then random convex combinations of pairs of them (the set is convex).

        Args:
            key: a JAX PRNG key.
            num: how many points.
            scale: spread of the Gaussian points, default $\max(1, \|P_G(0)\|)$.
        """
        center = self.project(np.zeros(self.dim))
        scale = max(1.0, float(np.linalg.norm(center))) if scale is None else scale
        k1, k2, k3 = jr.split(key, 3)
        raw = center + scale * np.asarray(jr.normal(k1, (num, self.dim)))
        ends = np.stack([self.project(p) for p in raw])
        mix = np.asarray(jr.uniform(k2, (num, 1)))
        other = ends[np.asarray(jr.permutation(k3, num))]
        return mix * ends + (1 - mix) * other


def zero_loss_set(data: Dataset, negative_slope: float = 0.0) -> ZeroLossSet:
    r"""The zero-loss set of a single neuron $\sigma(\langle x, w\rangle)$ (no bias).

    Args:
        data: the dataset (X, y).
        negative_slope: the leaky slope a of $\sigma(z) = \max(z, a z)$: 0 for ReLU
            (the polyhedron $G(X, y)$), in (0, 1] for a strictly monotone $\sigma$
            (the affine set $X w = \sigma^{-1}(y)$).

    Returns:
        The `ZeroLossSet`.

    Example:
        >>> from implicit_flow.paper import theorem3_data
        >>> g = zero_loss_set(theorem3_data(1.0))  # {(5, -1, s): s <= 1}
        >>> g.project([0.0, 0.0, 3.0]).round(12).tolist()
        [5.0, -1.0, 1.0]
    """
    return zero_loss_set_of(np.asarray(data.x), np.asarray(data.y), negative_slope)


def zero_loss_set_of(
    x: Float[np.ndarray, "n_data d"],
    y: Float[np.ndarray, " n_data"],
    negative_slope: float = 0.0,
) -> ZeroLossSet:
    """`zero_loss_set` from plain arrays (no `Dataset`: cheaper in loops)."""
    if not 0.0 <= negative_slope <= 1.0:
        raise ValueError(f"negative_slope must lie in [0, 1], got {negative_slope}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    norms = np.linalg.norm(x, axis=1)
    if negative_slope > 0:
        target = np.where(y >= 0, y, y / negative_slope)
        eq, ineq, empty = (
            np.ones(len(y), dtype=bool),
            np.zeros(len(y), dtype=bool),
            False,
        )
    else:
        target = y
        eq, ineq, empty = y > 0, y == 0, bool(np.any(y < 0))
    ineq = ineq & (norms > 0)  # 0 <= 0 always holds
    zero_eq = eq & (norms == 0)
    if np.any(zero_eq & (target != 0)):  # <0, w> = y_i != 0 is impossible
        empty = True
    eq = eq & (norms > 0)
    return ZeroLossSet(
        eq_matrix=x[eq] / norms[eq, None],
        eq_rhs=target[eq] / norms[eq],
        ineq_matrix=x[ineq] / norms[ineq, None],
        trivially_empty=empty,
    )
