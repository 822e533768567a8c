r"""Exact gradient flow of piecewise-quadratic leaky-ReLU losses (host numpy, float64).

Model $f(x) = \sum_j v_j \sigma(w_j \cdot x + b_j)$ with fixed output weights $v$ and
$\sigma(z) = \max(z, \alpha z)$, $0 \le \alpha \le 1$. The hidden layer
$H = [w_j, b_j]$ (bias optional) follows $\dot H = -\nabla_H L$ for the half-sum loss
$L = \frac12 \sum_i (f(x_i) - y_i)^2$ (or the mean, $\frac1{2n}\sum_i$).

Inside a fixed activation pattern the loss is quadratic in $\theta = \mathrm{vec}(H)$,
$\dot\theta = -(A\theta - c)$, and with $A = V \Lambda V^T$ the flow is
$\theta(t) = \theta_0 - V \phi(\Lambda, t) V^T g_0$, $g_0 = A\theta_0 - c$,
$\phi(\lambda, t) = (1 - e^{-\lambda t}) / \lambda$. Each pre-activation $z_{ij}(t)$
is a constant plus decaying exponentials. Its first zero is bracketed on a dense
geometric time grid (plus the local minima of $|z|$ between grid points, which catch
near-tangent dips) and refined by bisection to machine precision; the crossed entries
flip and the next piece starts there. Without a crossing the flow converges to the
piece's limit $\theta_0 - A^+ g_0$.

Boundary and tie rules:
    - A start with some $z_{ij} = 0$ exactly (e.g. $w(0) = 0$): the velocity is first
      taken with $\sigma'(0) =$ `grad_at_zero`, as `jax.grad` does. If it is exactly
      zero, the start is stationary (status "converged", $t_{final} = \infty$).
      Otherwise each zero entry takes the side its $\dot z_{ij}$ points to, and the
      choice is redone with the velocity of the proposed pattern until it is
      self-consistent; if it never is, the flow stops at $t = 0$ with status
      "sliding". An entry with $\dot z_{ij} = 0$ takes the side whose slope
      ($1$ or $\alpha$) is nearer to `grad_at_zero` (the active side on a tie).
    - Crossings less than a relative $10^{-10}$ apart in time are simultaneous: all
      of them flip.
    - If after a crossing the flipped pattern's field points back into the surface,
      the field points into it from both sides: a sliding mode, whose Filippov
      solution is not computed here. The flow stops at the crossing with status
      "sliding" and $t_{final}$ the entry time.
    - $\alpha = 1$ has no kinks: one affine piece.

General position is assumed: no tangential contact with a kink surface, no dip of a
pre-activation across zero shallower than a relative $10^{-11}$ (these are ignored,
e.g. a point with label 0 fitted from the active side), and no eigenvalue of $A$ below
$10^{-12}\lambda_{max}$ (smaller ones count as zero).
"""

import dataclasses
from typing import NamedTuple

import numpy as np

_EIG_RTOL = 1e-12  # eigenvalues of A below this fraction of the largest count as zero
_GRID_SPAN = (1e-3, 60.0)  # search grid, in units of 1/lambda_max and 1/lambda_min
_POINTS_PER_DECADE = 48
_DEPTH_RTOL = 1e-11  # dips shallower than this (relative) are rounding, not crossings
_SIMULTANEOUS_RTOL = 1e-10
_START_ITERS = 8
_BISECT_ITERS = 200
_CHUNK = 32  # grid points searched at a time


class _Piece(NamedTuple):
    r"""An affine piece, $\theta(t_0 + \tau) = \theta_0 - V(\phi(\lambda, \tau) q)$."""

    t0: float
    theta0: np.ndarray  # (q,)
    rates: np.ndarray  # (q,) eigenvalues of A, 1 on the null space
    vecs: np.ndarray  # (q, q) eigenvectors V
    coefs: np.ndarray  # (q,) V^T g0, 0 on the null space

    def states(self, taus: np.ndarray) -> np.ndarray:
        return self.theta0 - (_phi(self.rates, taus) * self.coefs) @ self.vecs.T

    def limit(self) -> np.ndarray:
        return self.theta0 - self.vecs @ (self.coefs / self.rates)


@dataclasses.dataclass(frozen=True, eq=False)
class PiecewiseFlow:
    r"""The exact flow, piece by piece (final class).

    Attributes:
        hidden: (m, p) hidden parameters at the end: the limit, or where it stopped.
        status: "converged", "sliding" (stopped where the field points into a kink from
            both sides) or "piece_limit" (stopped on entering piece `max_pieces + 1`).
        t_final: `inf` when converged, else the time where the flow stopped.
        switch_times: (k,) increasing times of pattern changes.
        patterns: k + 1 boolean (n, m) active patterns ($z_{ij} > 0$), one per piece.
        loss: loss at `hidden`.
        grad_norm: Euclidean norm of $\nabla_H L$ at `hidden`, with the last pattern.
    """

    hidden: np.ndarray
    status: str
    t_final: float
    switch_times: np.ndarray
    patterns: tuple[np.ndarray, ...]
    loss: float
    grad_norm: float
    _pieces: tuple[_Piece, ...] = dataclasses.field(repr=False)

    def at(self, ts: np.ndarray) -> np.ndarray:
        """Exact hidden parameters at times `ts`.

        Args:
            ts: (n_save,) times >= 0 (`inf` allowed when converged).

        Returns:
            An (n_save, m, p) array, NaN past `t_final`.
        """
        ts = np.asarray(ts, dtype=float).reshape(-1)
        if not np.all(ts >= 0):
            raise ValueError("ts must be >= 0 and not NaN")
        starts = np.array([piece.t0 for piece in self._pieces])
        k = np.where(
            ts <= self.t_final, np.searchsorted(starts, ts, side="right") - 1, -1
        )
        theta = np.full((len(ts), self.hidden.size), np.nan)
        for j in np.unique(k[k >= 0]):
            theta[k == j] = self._pieces[j].states(ts[k == j] - starts[j])
        return theta.reshape(len(ts), *self.hidden.shape)


def piecewise_affine_flow(
    x: np.ndarray,
    y: np.ndarray,
    out_weight: np.ndarray,
    hidden0: np.ndarray,
    *,
    bias: bool,
    negative_slope: float = 0.0,
    grad_at_zero: float = 1.0,
    mean: bool = False,
    max_pieces: int = 10_000,
) -> PiecewiseFlow:
    r"""Solves the gradient flow of a fixed-output leaky-ReLU layer exactly.

    Args:
        x: (n, d) inputs.
        y: (n,) labels.
        out_weight: (m,) fixed output weights $v$ (`[1.]` for a single neuron).
        hidden0: (m, p) start $[w_j, b_j]$; p = d + 1 with a bias (last column), else d.
        bias: whether the last column of `hidden0` is a bias.
        negative_slope: $\alpha \in [0, 1]$ (0: ReLU, 1: linear).
        grad_at_zero: $\sigma'(0)$; matters only on a start with some $z_{ij} = 0$.
        mean: use the mean loss $\frac1{2n}\sum_i$ instead of the half sum.
        max_pieces: stop with status "piece_limit" after this many pieces.

    Returns:
        The `PiecewiseFlow`.

    Raises:
        ValueError: on wrong shapes or non-finite values, or if `negative_slope` is
            outside [0, 1].
    """
    xa, y, v, hidden0 = _validate(x, y, out_weight, hidden0, bias, negative_slope)
    alpha, grad_at_zero = float(negative_slope), float(grad_at_zero)
    if not np.isfinite(grad_at_zero):
        raise ValueError(f"grad_at_zero must be finite, got {grad_at_zero}")
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    shape, theta = hidden0.shape, hidden0.ravel()
    system = lambda slopes: _system(xa, y, v, slopes, mean)
    dz_dt = lambda a, c, th: xa @ (c - a @ th).reshape(shape).T
    z = xa @ hidden0.T
    on_kink = (z == 0) & (alpha < 1)
    slopes, active, stuck = _start(
        z, on_kink, system, dz_dt, theta, alpha, grad_at_zero
    )
    t_final, status = 0.0, "sliding" if stuck else "converged"
    pieces, switches, patterns = [], [], [active]
    while True:
        a, c = system(slopes)
        pieces.append(_piece(t_final, theta, a, c))
        if stuck:
            break
        crossing = None
        if alpha < 1:
            crossing = _first_crossing(pieces[-1], xa, active, on_kink)
        if crossing is None:
            theta, t_final = pieces[-1].limit(), np.inf
            break
        tau, hit = crossing
        theta, t_final = pieces[-1].states(np.array(tau)), t_final + tau
        flipped = active ^ hit
        dz = dz_dt(*system(_slopes(flipped, alpha)), theta)
        if np.any(hit & ~np.where(flipped, dz > 0, dz < 0)):
            status = "sliding"  # the field points into the surface from both sides
            break
        if len(pieces) == max_pieces:
            status = "piece_limit"
            break
        active, on_kink, slopes = flipped, hit, _slopes(flipped, alpha)
        switches.append(t_final)
        patterns.append(active)
    pre = xa @ theta.reshape(shape).T
    resid = np.where(pre > 0, pre, alpha * pre) @ v - y
    return PiecewiseFlow(
        hidden=theta.reshape(shape),
        status=status,
        t_final=float(t_final),
        switch_times=np.array(switches, dtype=float),
        patterns=tuple(patterns),
        loss=float(0.5 * resid @ resid / (len(y) if mean else 1)),
        grad_norm=float(np.linalg.norm(a @ theta - c)),
        _pieces=tuple(pieces),
    )


def _validate(x, y, out_weight, hidden0, bias, negative_slope):
    named = {"x": x, "y": y, "out_weight": out_weight, "hidden0": hidden0}
    arrays = []
    for (name, arr), ndim in zip(named.items(), (2, 1, 1, 2), strict=True):
        arr = np.array(arr, dtype=float)  # a copy: results never alias the inputs
        if arr.ndim != ndim or arr.size == 0:
            raise ValueError(
                f"{name} must be a nonempty {ndim}-d array, not {arr.shape}"
            )
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} must be finite")
        arrays.append(arr)
    x, y, v, hidden0 = arrays
    if y.shape != x.shape[:1]:
        raise ValueError(f"y must have shape ({len(x)},), got {y.shape}")
    expected = (len(v), x.shape[1] + bool(bias))
    if hidden0.shape != expected:
        raise ValueError(f"hidden0 must have shape {expected}, got {hidden0.shape}")
    if not 0.0 <= negative_slope <= 1.0:
        raise ValueError(f"negative_slope must lie in [0, 1], got {negative_slope}")
    xa = np.hstack([x, np.ones((len(x), 1))]) if bias else x
    return xa, y, v, hidden0


def _slopes(active, alpha):
    return np.where(active, 1.0, alpha)


def _system(xa, y, v, slopes, mean):
    r"""(A, c) with $L = \frac12 \theta^T A \theta - c^T \theta + C$ for `slopes`."""
    g = ((slopes * v)[:, :, None] * xa[:, None, :]).reshape(len(y), -1)
    scale = 1 / len(y) if mean else 1.0
    return scale * g.T @ g, scale * g.T @ y


def _start(z, on_kink, system, dz_dt, theta, alpha, grad_at_zero):
    """First pattern as (slopes, active, stuck), by the module's start rules."""
    active = z > 0
    prefer_active = abs(grad_at_zero - 1) <= abs(grad_at_zero - alpha)
    slopes = np.where(on_kink, grad_at_zero, _slopes(active, alpha))
    a, c = system(slopes)
    if not on_kink.any() or not np.any(a @ theta - c):  # off the kinks, or stationary
        return slopes, active | (on_kink & prefer_active), False
    proposal = None
    for _ in range(_START_ITERS):
        dz = dz_dt(a, c, theta)
        sides = np.where(dz > 0, True, np.where(dz < 0, False, prefer_active))
        new = np.where(on_kink, sides, active)
        if proposal is not None and np.array_equal(new, proposal):
            break
        proposal = new
        a, c = system(_slopes(proposal, alpha))
    else:
        return _slopes(proposal, alpha), proposal, True
    return _slopes(proposal, alpha), proposal, False


def _piece(t0, theta, a, c):
    """The affine piece that starts from `theta` at time `t0`."""
    lam, vecs = np.linalg.eigh(a)
    null = lam <= _EIG_RTOL * max(lam[-1], 0.0)
    # g0 = A theta - c lies in range(A), so its null-space part is rounding; dropping it
    # makes the limit exactly theta0 - A^+ g0.
    coefs = np.where(null, 0.0, vecs.T @ (a @ theta - c))
    return _Piece(t0, theta, np.where(null, 1.0, lam), vecs, coefs)


def _phi(rates, tau):
    r"""$(1 - e^{-\lambda \tau}) / \lambda$, broadcasting `tau` over the last axis."""
    return -np.expm1(-rates * np.asarray(tau)[..., None]) / rates


def _bisect(fun, lo, hi):
    """Shrinks brackets with fun(lo) >= 0 > fun(hi), or the reverse, to ulps: hi."""
    lo_sign = fun(lo) >= 0
    for _ in range(_BISECT_ITERS):
        mid = 0.5 * (lo + hi)
        if np.all((mid <= lo) | (mid >= hi)):
            break
        same = (fun(mid) >= 0) == lo_sign
        lo, hi = np.where(same, mid, lo), np.where(same, hi, mid)
    return hi


def _first_crossing(piece, xa, active, on_kink):
    """(tau, hit) of the piece's first zero crossing of a pre-activation, or None."""
    side = np.where(active, 1.0, -1.0).ravel()
    hidden0 = piece.theta0.reshape(active.shape[1], -1)
    modes = (piece.vecs * piece.coefs).reshape(*hidden0.shape, -1)  # (m, p, q)
    # h_e = side_e z_e(tau) = h0_e - sum_k phi_k(tau) b_ek stays > 0 until a crossing;
    # entries on a kink start at exactly 0 (they left it at the previous crossing).
    h0 = np.where(on_kink, 0.0, xa @ hidden0.T).ravel() * side
    b = side[:, None] * np.einsum("ip,jpk->ijk", xa, modes).reshape(len(side), -1)
    size = np.linalg.norm(xa, axis=1)[:, None] * (
        np.linalg.norm(hidden0, axis=1) + np.linalg.norm(piece.coefs / piece.rates)
    )
    tol = _DEPTH_RTOL * size.ravel()
    # 0 <= phi_k <= 1 / lambda_k bounds h from below: most entries can never cross.
    live = np.nonzero(h0 - np.maximum(b, 0.0) @ (1 / piece.rates) < -tol)[0]
    if live.size == 0:
        return None
    h0, b, tol = h0[live], b[live], tol[live]
    # h and dh/dt at times t[i] for entries e[i] ...
    h = lambda t, e: h0[e] - np.sum(_phi(piece.rates, t) * b[e], axis=-1)
    dh = lambda t, e: -np.sum(np.exp(-piece.rates * t[:, None]) * b[e], axis=-1)

    def on_grid(t):  # ... or at all times t for all entries, as (T, E) arrays
        return h0 - _phi(piece.rates, t) @ b.T, -np.exp(-piece.rates * t[:, None]) @ b.T

    rates = piece.rates[piece.coefs != 0]
    lo, hi = _GRID_SPAN[0] / rates.max(), _GRID_SPAN[1] / rates.min()
    grid = np.geomspace(lo, hi, int(_POINTS_PER_DECADE * np.log10(hi / lo)) + 2)
    grid = np.concatenate([[0.0], grid])
    for start in range(0, len(grid) - 1, _CHUNK):  # in time order, to stop early
        found = _bracket(h, dh, on_grid, grid[start : start + _CHUNK + 1], tol)
        if found is not None:
            break
    else:
        return None
    lo, hi, crossing = found
    roots = _bisect(lambda t: h(t, crossing), lo, hi)
    tau = roots.min()
    hit = np.zeros(len(side), dtype=bool)
    hit[live[crossing[roots <= tau * (1 + _SIMULTANEOUS_RTOL)]]] = True
    return tau, hit.reshape(active.shape)


def _bracket(h, dh, on_grid, grid, tol):
    """(lo, hi, entries): brackets of each entry's first fall below -tol on `grid`."""
    hg, dg = on_grid(grid)  # (T, E)
    witness = np.where(hg[1:] < -tol, grid[1:, None], np.inf)  # (T - 1, E)
    # Refined local minima of h between grid points catch near-tangent dips.
    kk, ee = np.nonzero((dg[:-1] < 0) & (dg[1:] >= 0))
    tmin = _bisect(lambda t: dh(t, ee), grid[kk], grid[kk + 1])
    deep = h(tmin, ee) < -tol[ee]
    witness[kk[deep], ee[deep]] = np.minimum(witness[kk[deep], ee[deep]], tmin[deep])
    found = np.isfinite(witness)
    entries = np.nonzero(found.any(axis=0))[0]
    if entries.size == 0:
        return None
    first = np.argmax(found[:, entries], axis=0)
    # Start from the last grid point before it where h >= 0, not a rounding-level dip.
    nonneg = np.where(hg >= 0, np.arange(len(grid))[:, None], 0)
    last_nonneg = np.maximum.accumulate(nonneg, axis=0)
    return grid[last_nonneg[first, entries]], witness[first, entries], entries
