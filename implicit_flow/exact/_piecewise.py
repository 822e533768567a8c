r"""Exact gradient flow of piecewise-quadratic leaky-ReLU losses (host numpy, float64).

Model $f(x) = \sum_j v_j \sigma(w_j \cdot x + b_j)$ with fixed output weights $v$ and
$\sigma(z) = \max(z, \alpha z)$, $0 \le \alpha \le 1$. The hidden layer
$H = [w_j, b_j]$ (bias optional) follows $\dot H = -\nabla_H L$ for the half-sum loss
$L = \frac12 \sum_i (f(x_i) - y_i)^2$ (or the mean, $\frac1{2n}\sum_i$); where $L$ has
a kink the flow is the differential inclusion $\dot\theta \in -\partial L(\theta)$
(Clarke), solved by Filippov's minimal-norm rule (issue #4, item 3).

Inside a fixed activation pattern the loss is quadratic in $\theta = \mathrm{vec}(H)$,
$\dot\theta = -(A\theta - c)$, and with $A = V \Lambda V^T$ the flow is
$\theta(t) = \theta_0 - V \phi(\Lambda, t) V^T g_0$, $g_0 = A\theta_0 - c$,
$\phi(\lambda, t) = (1 - e^{-\lambda t}) / \lambda$. Each pre-activation $z_{ij}(t)$
is a constant plus decaying exponentials. Its first zero is bracketed on a dense
geometric time grid (plus the local minima of $|z|$ between grid points, which catch
near-tangent dips) and refined by bisection to machine precision; the crossed entries
flip and the next piece starts there. Without a crossing the flow converges to the
piece's limit $\theta_0 - A^+ g_0$.

Sliding (`sliding="filippov"`, the default). On a face, a set $S$ of pre-activations
held at $z_{ij} = 0$, the slope $\sigma'(z_{ij})$ of each $(ij) \in S$ is a free
$a_{ij} \in [\alpha, 1]$, and since $\sigma(0) = 0$ the residuals
$r_i = f(x_i) - y_i$ do not depend on it. Neuron $j$'s gradient is
$g_j = g^0_j + \sum_{i \in S_j} \mu_{ij} \tilde x_i$ ($\tilde x_i = [x_i, 1]$ with a
bias), $\mu_{ij} = s\, a_{ij} v_j r_i$ ($s = 1$ or $1/n$), and the Filippov velocity is
$-g(\mu^*)$ for the minimal-norm $\mu^*$ over the box
$\alpha\rho_{ij} \le \mu_{ij} \le \rho_{ij}$, $\rho_{ij} = s\, v_j r_i$ (a convex
kink, $\rho_{ij} > 0$; a concave one, $\rho_{ij} < 0$, repels and is crossed). While
$\mu^*$ is interior, $\mu^*_{S_j} = -K_j^{-1} X_{S_j} g^0_j$ with the Gram matrix
$K_j = X_{S_j} X_{S_j}^T$ makes $\dot z_{ij} = 0$: the velocity is $-P(A\theta - c)$
with $P$ the orthogonal projector onto the face's tangent space
$\{\delta: \tilde x_i \cdot \delta_j = 0, (ij) \in S\}$. The face is a linear
subspace, so $\theta = P\theta$ on it and the motion is again an affine piece, the
flow of $(PAP, Pc)$. Along it $\mu^*$ and $\rho$ are affine in $\theta$, so the exits
($\mu^*_{ij} = \rho_{ij}$: $z_{ij}$ leaves to the active side;
$\mu^*_{ij} = \alpha\rho_{ij}$: to the inactive side) are first roots of sums of
exponentials, found together with the off-face crossings by the same search. At
every event (a crossing, an exit) the entries at zero are re-sorted: those leaving
by an exit keep that side, concave ones keep the side they move to, and the convex
ones go through the box QP (solved exactly by an active-set method): interior
$\mu^*$ joins the face, $\mu^* = \rho$ the active side, $\mu^* = \alpha\rho$ the
inactive side. Entering is the case of a crossing whose entry lands inside. A face
whose inputs span neuron j's whole input space pins $w_j = 0$, where all of that
neuron's pre-activations vanish: they all join the re-sorting, and the QP solution
is moved to one whose free inputs are independent (a basis of the face).

Boundary and tie rules:
    - A start with some $z_{ij} = 0$ exactly (e.g. $w(0) = 0$): the velocity is first
      taken with $\sigma'(0) =$ `grad_at_zero`, as `jax.grad` does. If it is exactly
      zero, the start is stationary (status "converged", $t_{final} = \infty$).
      Otherwise each zero entry takes the side its $\dot z_{ij}$ points to, and the
      choice is redone with the velocity of the proposed pattern until it is
      self-consistent. If it never is, `sliding="stop"` stops at $t = 0$ with status
      "sliding"; `sliding="filippov"` re-sorts the zero entries as at an event. An
      entry with $\dot z_{ij} = 0$ takes the side whose slope ($1$ or $\alpha$) is
      nearer to `grad_at_zero` (the active side on a tie).
    - Events less than a relative $10^{-10}$ apart in time are simultaneous.
    - `sliding="stop"`: if after a crossing the flipped pattern's field points back
      into the surface, the flow stops at the crossing with status "sliding" and
      $t_{final}$ the entry time.
    - `sliding="filippov"`: status "sliding" means that an event had no consistent
      continuation (a degenerate, non-generic event); the flow stops there. A
      velocity below $10^{-13}$ of the size of its terms is a limit (this happens
      where neurons rest at $w_j = 0$).
    - A ReLU neuron whose last active input reaches its kink with nothing else
      moving it stops there, frozen (zero velocity from both sides); `"stop"`
      reports this as "sliding" too, `"filippov"` as a crossing.
    - A neuron with $v_j = 0$ has zero gradient and never moves: it never crosses or
      slides (the sliding condition $v_j r_i > 0$ degenerates only there). Output
      weights are fixed here, so $v_j$ cannot cross zero during the flow.
    - $\alpha = 1$ has no kinks: one affine piece.

General position is assumed: no tangential contact with a kink surface, no dip of a
pre-activation or multiplier across zero shallower than a relative $10^{-11}$ (these
are ignored, e.g. a point with label 0 fitted from the active side), no eigenvalue
of $A$ (or $PAP$) below $10^{-12}\lambda_{max}$ (smaller ones count as zero), no
linearly dependent $\tilde x_i$ among a neuron's face entries other than at
$w_j = 0$, no residual of a face entry reaching $r_i = 0$ in finite time (it may
tend to 0), and no multiplier exactly at a bound when its entry joins a face.
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
_SIDE_RTOL = 1e-9  # |dz/dt| below this (relative) is tangential at an event
_SLIDING_MODES = ("stop", "filippov")


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


class _Problem(NamedTuple):
    xa: np.ndarray  # (n, p) inputs, with a column of ones for a bias
    y: np.ndarray  # (n,)
    v: np.ndarray  # (m,)
    alpha: float
    scale: float  # 1, or 1 / n for the mean loss
    shape: tuple[int, int]  # (m, p)


@dataclasses.dataclass(frozen=True, eq=False)
class PiecewiseFlow:
    r"""The exact flow, piece by piece (final class).

    Attributes:
        hidden: (m, p) hidden parameters at the end: the limit, or where it stopped.
        status: "converged" (a limit, possibly on a face), "sliding" (stopped: with
            `sliding="stop"` where the field points into a kink from both sides,
            with `sliding="filippov"` at a degenerate event) or "piece_limit"
            (stopped on entering piece `max_pieces + 1`).
        t_final: `inf` when converged, else the time where the flow stopped.
        switch_times: (k,) increasing times of events: pattern changes, and entries
            into and exits from faces.
        patterns: k + 1 boolean (n, m) active patterns ($z_{ij} > 0$), one per piece.
        loss: loss at `hidden`.
        grad_norm: Euclidean norm of $\nabla_H L$ at `hidden` with the last pattern;
            on a face, of the minimal-norm (Filippov) element of $\partial L$.
        faces: k + 1 boolean (n, m) sliding sets, one per piece: the $z_{ij}$ held
            at 0 (all False off faces, and always with `sliding="stop"`).
    """

    hidden: np.ndarray
    status: str
    t_final: float
    switch_times: np.ndarray
    patterns: tuple[np.ndarray, ...]
    loss: float
    grad_norm: float
    faces: tuple[np.ndarray, ...]
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
    sliding: str = "filippov",
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
        sliding: "filippov" follows sliding modes exactly (Filippov's minimal-norm
            solution: entering, sliding along and leaving kink surfaces); "stop"
            stops where the field points into a kink surface from both sides, with
            status "sliding".

    Returns:
        The `PiecewiseFlow`.

    Raises:
        ValueError: on wrong shapes or non-finite values, if `negative_slope` is
            outside [0, 1], or if `sliding` is not "stop" or "filippov".
    """
    xa, y, v, hidden0 = _validate(x, y, out_weight, hidden0, bias, negative_slope)
    alpha, grad_at_zero = float(negative_slope), float(grad_at_zero)
    if not np.isfinite(grad_at_zero):
        raise ValueError(f"grad_at_zero must be finite, got {grad_at_zero}")
    if max_pieces < 1:
        raise ValueError(f"max_pieces must be >= 1, got {max_pieces}")
    if sliding not in _SLIDING_MODES:
        raise ValueError(f"sliding must be 'stop' or 'filippov', got {sliding!r}")
    shape, theta = hidden0.shape, hidden0.ravel()
    prob = _Problem(xa, y, v, alpha, 1 / len(y) if mean else 1.0, shape)
    system = lambda slopes: _system(xa, y, v, slopes, mean)
    dz_dt = lambda a, c, th: xa @ (c - a @ th).reshape(shape).T
    z = xa @ hidden0.T
    on_kink = (z == 0) & (alpha < 1)
    face = np.zeros_like(on_kink)
    slopes, active, stuck = _start(
        z, on_kink, system, dz_dt, theta, alpha, grad_at_zero
    )
    if stuck and sliding == "filippov":
        face, active, consistent = _resolve(
            prob, theta, active, on_kink, np.zeros_like(on_kink)
        )
        stuck, on_kink, slopes = not consistent, on_kink & ~face, _slopes(active, alpha)
    t_final, status = 0.0, "sliding" if stuck else "converged"
    pieces, switches, patterns, faces = [], [], [active], [face]
    while True:
        a, c = _face_system(prob, face, *system(slopes))
        if face.any():
            theta = _projector(prob, face) @ theta  # onto the face, against drift
        if sliding == "filippov" and _stationary(prob, slopes, theta, a, c):
            q = theta.size  # a piece that does not move, so has no events
            pieces.append(_Piece(t_final, theta, np.ones(q), np.eye(q), np.zeros(q)))
        else:
            pieces.append(_piece(t_final, theta, a, c))
        if stuck:
            break
        event = None
        if alpha < 1:
            event = _next_event(pieces[-1], prob, slopes, active, on_kink, face)
        if event is None:
            theta, t_final = pieces[-1].limit(), np.inf
            break
        tau, hit, up, down = event
        theta, t_final = pieces[-1].states(np.array(tau)), t_final + tau
        if sliding == "stop":
            flipped = active ^ hit
            dz = dz_dt(*system(_slopes(flipped, alpha)), theta)
            if np.any(hit & ~np.where(flipped, dz > 0, dz < 0)):
                status = "sliding"  # the field points into the surface from both sides
                break
            zero, new_face, new_active = hit, face, flipped
        else:
            leaving = up | down
            zero = _implied_zeros(prob, face | hit)
            theta = _projector(prob, zero) @ theta  # exactly onto the kinks it is on
            proposal = np.where(up, True, np.where(down, False, active ^ hit))
            new_face, new_active, consistent = _resolve(
                prob, theta, proposal, zero, leaving
            )
            if not consistent:
                status = "sliding"  # a degenerate event: no consistent continuation
                break
        if len(pieces) == max_pieces:
            status = "piece_limit"
            break
        active, face = new_active, new_face
        on_kink, slopes = zero & ~face, _slopes(active, alpha)
        switches.append(t_final)
        patterns.append(active)
        faces.append(face)
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
        faces=tuple(faces),
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


def _jacobian(xa, v, slopes):
    r"""(n, m p): $\partial f(x_i) / \partial\theta$, the pattern's linear extension."""
    return ((slopes * v)[:, :, None] * xa[:, None, :]).reshape(len(xa), -1)


def _system(xa, y, v, slopes, mean):
    r"""(A, c) with $L = \frac12 \theta^T A \theta - c^T \theta + C$ for `slopes`."""
    g = _jacobian(xa, v, slopes)
    scale = 1 / len(y) if mean else 1.0
    return scale * g.T @ g, scale * g.T @ y


def _normals(prob, face):
    r"""(m p, |S|): the face's normals, $\tilde x_i$ in neuron j's block."""
    m, p = prob.shape
    entries = np.argwhere(face)
    normals = np.zeros((m, p, len(entries)))
    normals[entries[:, 1], :, np.arange(len(entries))] = prob.xa[entries[:, 0]]
    return normals.reshape(m * p, -1)


def _projector(prob, face):
    """The orthogonal projector onto the face's tangent space (a linear subspace)."""
    u, s, _ = np.linalg.svd(_normals(prob, face), full_matrices=False)
    u = u[:, s > _EIG_RTOL * s.max()]
    return np.eye(len(u)) - u @ u.T


def _face_system(prob, face, a, c):
    r"""(PAP, Pc): the Filippov flow on the face is $\dot\theta = -(PAP\theta - Pc)$."""
    if not face.any():
        return a, c
    proj = _projector(prob, face)
    return proj @ a @ proj, proj @ c


def _stationary(prob, slopes, theta, a, c):
    """Whether the velocity -(A theta - c) is at the rounding level of its terms.

    E.g. neurons resting at $w_j = 0$, where relative tolerances lose their scale.
    """
    jac = _jacobian(prob.xa, prob.v, slopes)
    size = (
        prob.scale
        * np.linalg.norm(jac)
        * (np.linalg.norm(jac @ theta) + np.linalg.norm(prob.y))
    )
    return np.linalg.norm(a @ theta - c) <= 1e-13 * size


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


def _resolve(prob, theta, proposal, zero, forced):
    r"""Sorts the entries at zero into the face and the two sides, at an event.

    Args:
        theta: (m p,) the state, with $z_{ij} = 0$ on `zero` (up to rounding).
        proposal: (n, m) sides: off `zero` the pattern; on `forced` entries (exits)
            and on concave kinks ($v_j r_i \le 0$) the side they go to.
        zero: (n, m) entries at zero.
        forced: (n, m) entries of `zero` whose side is `proposal`'s.

    Returns:
        (face, active, consistent): the new face and pattern, and whether every
        entry at zero off the face moves to its side (or tangentially).
    """
    xa, y, v, alpha, scale, (m, p) = prob
    z = np.where(zero, 0.0, xa @ theta.reshape(m, p).T)
    slopes = _slopes(proposal, alpha)
    resid = (slopes * z) @ v - y
    rho = scale * resid[:, None] * v[None, :]  # > 0: a convex kink
    free = zero & ~forced & (rho > 0)
    face, active = np.zeros_like(zero), proposal.copy()
    for j in np.nonzero(free.any(axis=0))[0]:
        (idx,) = np.nonzero(free[:, j])
        fixed = ~free[:, j]
        g0 = xa[fixed].T @ (scale * v[j] * slopes[fixed, j] * resid[fixed])
        _, bound = _box_qp(xa[idx], g0, alpha * rho[idx, j], rho[idx, j])
        face[idx[bound == 0], j] = True
        active[idx, j] = bound == 1
    jac = _jacobian(xa, v, _slopes(active, alpha))
    a, c = _face_system(prob, face, scale * jac.T @ jac, scale * jac.T @ y)
    velocity = (c - a @ theta).reshape(m, p)
    dz = xa @ velocity.T
    # relative to the gradient's terms (the velocity itself may vanish)
    size = np.linalg.norm(jac) * (np.linalg.norm(jac @ theta) + np.linalg.norm(y))
    tol = _SIDE_RTOL * scale * np.linalg.norm(xa, axis=1)[:, None] * size
    side = np.where(active, 1.0, -1.0)
    consistent = not np.any(zero & ~face & (side * dz < -tol))
    return face, active, consistent


def _implied_zeros(prob, zero):
    r"""`zero` closed under implication: $z_{ij} = 0$ wherever $\tilde x_i$ lies in the
    span of neuron j's zero entries' inputs (all i, where that pins $w_j = 0$)."""
    closed = zero.copy()
    for j in np.nonzero(zero.any(axis=0))[0]:
        u, s, _ = np.linalg.svd(prob.xa[zero[:, j]].T, full_matrices=False)
        u = u[:, s > _EIG_RTOL * s.max()]
        rest = prob.xa - (prob.xa @ u) @ u.T
        norms = np.linalg.norm(prob.xa, axis=1)
        closed[:, j] |= np.linalg.norm(rest, axis=1) <= 1e-9 * norms
    return closed


def _box_qp(xs, g0, lo, hi):
    r"""The minimal-norm $g = g_0 + X^T \mu$ over the box $lo \le \mu \le hi$.

    A primal active-set method (Nocedal & Wright, Sec. 16.5) on
    $\frac12 \|g_0 + X^T\mu\|^2$, exact up to rounding, then moved (without changing
    $g$) to a solution whose free rows of $X$ are linearly independent: more than p
    entries at zero happen where a neuron sits at $w_j = 0$.

    Args:
        xs: (k, p) rows $\tilde x_i$.
        g0: (p,) the fixed part of the gradient.
        lo, hi: (k,) bounds, lo <= hi.

    Returns:
        $(\mu, bound)$ with bound -1 at `lo`, +1 at `hi`, 0 free.
    """
    k = len(lo)
    gram, lin = xs @ xs.T, xs @ g0
    mu = np.clip(np.linalg.lstsq(gram, -lin, rcond=None)[0], lo, hi)
    bound = np.where(mu <= lo, -1, np.where(mu >= hi, 1, 0))
    size = np.abs(xs).max() * (np.abs(g0).max() + np.abs(xs).max() * np.abs(hi).max())
    for _ in range(20 * k + 20):
        free = bound == 0
        target = mu.copy()
        if free.any():
            rhs = -(lin[free] + gram[np.ix_(free, ~free)] @ mu[~free])
            sub = gram[np.ix_(free, free)]
            target[free] = np.linalg.lstsq(sub, rhs, rcond=None)[0]
        step = target - mu
        if _step_to_bound(mu, step, lo, hi, bound):
            continue
        mu = target
        grad = gram @ mu + lin  # KKT: <= 0 at hi, >= 0 at lo
        violation = np.where(bound == 1, grad, np.where(bound == -1, -grad, -np.inf))
        worst = int(np.argmax(violation))
        if violation[worst] <= 1e-12 * size:
            break
        bound[worst] = 0
    else:
        raise RuntimeError("the box QP did not converge (degenerate face)")
    for _ in range(k):  # moves along the null space of the free rows, keeping g
        (free,) = np.nonzero(bound == 0)
        _, s, vt = np.linalg.svd(xs[free].T, full_matrices=True)
        if free.size <= np.sum(s > _EIG_RTOL * s.max(initial=0.0)):
            break
        step = np.zeros(k)
        step[free] = vt[-1]
        if not _step_to_bound(mu, step / np.abs(step).max(), lo, hi, bound, full=False):
            break
    return mu, bound


def _step_to_bound(mu, step, lo, hi, bound, full=True):
    """Steps `mu` (in place) along `step` up to the first bound it meets, fixing it.

    Only free entries move. Returns False, without moving, if a full step (`full`)
    meets no bound, or if no bound is met at all.
    """
    step = np.where(bound == 0, step, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(
            step > 0, (hi - mu) / step, np.where(step < 0, (lo - mu) / step, np.inf)
        )
    block = int(np.argmin(ratio))
    if not np.isfinite(ratio[block]) or (full and ratio[block] >= 1):
        return False
    mu += ratio[block] * step
    up = step[block] > 0
    bound[block], mu[block] = (1, hi[block]) if up else (-1, lo[block])
    return True


def _multiplier_rows(prob, slopes, face):
    r"""Affine functionals of the face's box constraints, as (entries, rows, offsets).

    entries: (|S|, 2) the face entries (i, j); rows . theta + offsets is, for each
    of them, $\rho - \mu^*$ (zero when $z_{ij}$ leaves to the active side), then,
    as a second block, $\mu^* - \alpha\rho$ (zero when it leaves to the inactive
    side).
    """
    xa, y, v, alpha, scale, _ = prob
    jac = _jacobian(xa, v, slopes)
    entries, rows_hi, off_hi, rows_lo, off_lo = [], [], [], [], []
    for j in np.nonzero(face.any(axis=0))[0]:
        (idx,) = np.nonzero(face[:, j])
        (off,) = np.nonzero(~face[:, j])
        # g0_j(theta) = M theta - m: the gradient's part from the off-face entries
        weighted = xa[off].T * (scale * v[j] * slopes[off, j])
        big_m, small_m = weighted @ jac[off], weighted @ y[off]
        solve = np.linalg.solve(xa[idx] @ xa[idx].T, xa[idx])
        mu_rows, mu_off = -solve @ big_m, solve @ small_m
        rho_rows, rho_off = scale * v[j] * jac[idx], -scale * v[j] * y[idx]
        rows_hi.append(rho_rows - mu_rows)
        off_hi.append(rho_off - mu_off)
        rows_lo.append(mu_rows - alpha * rho_rows)
        off_lo.append(mu_off - alpha * rho_off)
        entries.append(np.stack([idx, np.full(len(idx), j)], axis=1))
    rows = np.vstack(rows_hi + rows_lo)
    return np.vstack(entries), rows, np.concatenate(off_hi + off_lo)


def _next_event(piece, prob, slopes, active, on_kink, face):
    """(tau, hit, up, down) of the piece's first event, or None.

    hit: off-face entries that cross zero; up / down: face entries that leave to the
    active / inactive side.
    """
    off = ~face.ravel()
    rows, offsets = _kink_rows(prob, active)
    rows, offsets, at_zero = rows[off], offsets[off], on_kink.ravel()[off]
    n_off, n_face = int(off.sum()), int(face.sum())
    if n_face:
        entries, mult_rows, mult_offsets = _multiplier_rows(prob, slopes, face)
        rows = np.vstack([rows, mult_rows])
        offsets = np.concatenate([offsets, mult_offsets])
        at_zero = np.concatenate([at_zero, np.zeros(2 * n_face, dtype=bool)])
    found = _first_root(piece, rows, offsets, at_zero)
    if found is None:
        return None
    tau, fired = found
    hit, up, down = np.zeros(face.size, bool), np.zeros_like(face), np.zeros_like(face)
    hit[off] = fired[:n_off]
    if n_face:
        up[tuple(entries[fired[n_off : n_off + n_face]].T)] = True
        down[tuple(entries[fired[n_off + n_face :]].T)] = True
    return tau, hit.reshape(face.shape), up, down


def _kink_rows(prob, active):
    """(rows, offsets) with rows . theta + offsets = side_ij z_ij, (i, j) raveled."""
    m, p = prob.shape
    n = len(prob.xa)
    side = np.where(active, 1.0, -1.0)  # (n, m)
    rows = np.zeros((n, m, m, p))
    rows[:, np.arange(m), np.arange(m), :] = side[:, :, None] * prob.xa[:, None, :]
    return rows.reshape(n * m, m * p), np.zeros(n * m)


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
    m = active.shape[1]
    prob = _Problem(xa, np.zeros(len(xa)), np.ones(m), 0.0, 1.0, (m, xa.shape[1]))
    rows, offsets = _kink_rows(prob, active)
    found = _first_root(piece, rows, offsets, on_kink.ravel())
    if found is None:
        return None
    tau, hit = found
    return tau, hit.reshape(active.shape)


def _first_root(piece, rows, offsets, at_zero):
    r"""(tau, fired) of the first zero of $h_e(\tau) = r_e \cdot \theta(\tau) + o_e$.

    Each $h_e \ge 0$ at the start (entries `at_zero` exactly 0: they left a kink at
    the previous event) and is a constant plus decaying exponentials on the piece.
    """
    h0 = np.where(at_zero, 0.0, rows @ piece.theta0 + offsets)
    # h_e(tau) = h0_e - sum_k phi_k(tau) b_ek
    b = rows @ (piece.vecs * piece.coefs)
    size = np.linalg.norm(rows, axis=1) * (
        np.linalg.norm(piece.theta0) + np.linalg.norm(piece.coefs / piece.rates)
    ) + np.abs(offsets)
    tol = _DEPTH_RTOL * size
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
    if rates.size == 0:  # a stationary piece
        return None
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
    fired = np.zeros(len(rows), dtype=bool)
    fired[live[crossing[roots <= tau * (1 + _SIMULTANEOUS_RTOL)]]] = True
    return tau, fired


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
