r"""The paper's constructions: Theorem 3 data, its symmetries, the depth-2 start.

Vardi & Shamir (COLT 2021), Theorem 3: a single ReLU neuron in d = 3 on three points,
$x_1 = (3, -1, 0)$, $x_2 = (4, 2, 0)$, $x_3 = (0, \gamma, \gamma)$ with labels
$\alpha(16, 18, 0)$, flowed from $w(0) = 0$. Host-side helpers (numpy allowed).
"""

import jax.numpy as jnp
import jax.random as jr
import numpy as np
import scipy.optimize
from jaxtyping import ArrayLike, Float, PRNGKeyArray

from .._data import Dataset
from ..models import TwoLayerReLU


_X12 = np.array([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0]])
_Y = np.array([16.0, 18.0, 0.0])
THEOREM3_TARGET = np.array(
    [5.0, -1.0, 1.0]
)  # solves all three rows of X_gamma, alpha = 1


def theorem3_data(gamma: float, alpha: float = 1.0) -> Dataset:
    r"""The dataset $(X_\gamma, y_\alpha)$ of Theorem 3.

    Args:
        gamma: $\gamma \ge 0$; the third point is $(0, \gamma, \gamma)$.
        alpha: $\alpha > 0$, the label scale: $y = \alpha(16, 18, 0)$.

    Returns:
        A `Dataset` with x of shape (3, 3).

    Raises:
        ValueError: for $\gamma < 0$ or $\alpha \le 0$.

    Example:
        >>> theorem3_data(2.0).x[2].tolist()
        [0.0, 2.0, 2.0]
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    x = np.vstack([_X12, [0.0, gamma, gamma]])
    return Dataset(x, alpha * _Y)


def theorem3_minimizer(s: ArrayLike, alpha: float = 1.0) -> Float[np.ndarray, "... 3"]:
    r"""Points $\alpha(5, -1, s)$ of the line through $W_\alpha$.

    They have zero loss on every $(X_\gamma, y_\alpha)$ for $s \le 0$ (the set
    $W_\alpha$), and for $\gamma > 0$ exactly when $s \le 1$.
    """
    s = np.asarray(s, dtype=float)
    return alpha * np.stack([np.full_like(s, 5.0), np.full_like(s, -1.0), s], axis=-1)


def theorem3_phase1(
    ts: ArrayLike, gamma: float, alpha: float = 1.0
) -> Float[np.ndarray, "n_save 3"]:
    r"""Phase 1 of the flow from 0 in closed form (all three points active).

    $w(t) = \alpha(5, -1, 1) - e^{-t X_\gamma^T X_\gamma}\,\alpha(5, -1, 1)$: linear
    regression on the three rows, valid for $t \le t_1$ (`theorem3_switch_time`).
    """
    ts = np.atleast_1d(np.asarray(ts, dtype=float))
    x = np.asarray(theorem3_data(gamma).x)
    lam, vecs = np.linalg.eigh(x.T @ x)
    target = alpha * THEOREM3_TARGET
    decay = np.exp(-np.outer(ts, lam)) * (vecs.T @ target)
    return target - decay @ vecs.T


def theorem3_switch_time(gamma: float) -> float:
    r"""$t_1$: the first $t > 0$ with $\langle x_3, w(t)\rangle = 0$ in phase 1.

    Found from the closed form alone (Brent's method on a bracket located on a fine
    grid), independently of the piecewise flow; it does not depend on $\alpha$.
    Returns `inf` for $\gamma = 0$ (no crossing: $x_3 = 0$).
    """
    if gamma == 0:
        return np.inf
    x3 = np.array([0.0, gamma, gamma])
    z3 = lambda t: float(x3 @ theorem3_phase1(t, gamma)[0])
    grid = np.geomspace(1e-6, 10.0, 4000)
    values = theorem3_phase1(grid, gamma) @ x3
    below = np.nonzero(values < 0)[0]
    if below.size == 0:
        return np.inf
    k = below[0]
    return float(
        scipy.optimize.brentq(z3, grid[k - 1], grid[k], xtol=1e-16, rtol=1e-15)
    )


def rotate(data: Dataset, rotation: ArrayLike) -> Dataset:
    r"""The dataset $(X M^T, y)$; from a start fixed by M the limit is $M w(\infty)$."""
    m = np.asarray(rotation, dtype=float)
    if m.shape != (data.dim, data.dim):
        raise ValueError(f"rotation must have shape {(data.dim,) * 2}, got {m.shape}")
    if not np.allclose(m @ m.T, np.eye(data.dim), atol=1e-12):
        raise ValueError("rotation must be orthogonal")
    return Dataset(np.asarray(data.x) @ m.T, data.y)


def scale_labels(data: Dataset, scale: float) -> Dataset:
    r"""The dataset $(X, c\,y)$, $c > 0$: a ReLU neuron's limit from 0 scales by c."""
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    return Dataset(data.x, scale * np.asarray(data.y))


def random_rotation(key: PRNGKeyArray, d: int) -> Float[np.ndarray, "d d"]:
    r"""A Haar-random rotation $M \in SO(d)$ (determinant +1)."""
    m = np.array(jr.orthogonal(key, d, dtype=jnp.float64))
    if np.linalg.det(m) < 0:
        m[:, 0] = -m[:, 0]
    return m


def depth2_start(eps: float, d: int = 3) -> TwoLayerReLU:
    r"""The paper's depth-2 start $(w, v) = (0, \varepsilon)$: one hidden neuron, both
    layers trained, no bias, $\sigma'(0) = 1$ ($(0, 0)$ itself is stationary)."""
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    return TwoLayerReLU(np.zeros((1, d)), np.array([eps]), train_output=True)
