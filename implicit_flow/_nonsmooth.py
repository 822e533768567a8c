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
$3^K$ faces (each slope at $\\alpha$, at 1, or free), K at most `max_kinks`.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import Params
from ._data import Dataset
from ._objective import AbstractFlow, Objective
from .models import ReLUNeuron, TwoLayerReLU


class FilippovFlow(AbstractFlow):
    """Final. The minimal-norm subgradient flow of `ReLUNeuron` and `TwoLayerReLU` models.

    Fields: `band`, the half-width of $|z_{ij}|$ within which a kink's slope is free
    (the accuracy of sliding is about `band`); `max_kinks`, the most pre-activations
    of one neuron treated as kinks at once (the nearest to 0); `pull`, a rate $1/\\tau$
    that aims a sliding pre-activation at $\\dot z = -z/\\tau$ instead of 0, so that
    integration errors cannot walk it out of the band (default 1; 0 turns it off).
    """

    band: float = eqx.field(static=True, default=1e-8)
    max_kinks: int = eqx.field(static=True, default=3)
    pull: float = eqx.field(static=True, default=1.0)

    def kinks(self, z: Float[Array, "n m"]) -> tuple[Int[Array, "m k"], Float[Array, "m k"], Bool[Array, "m k"]]:
        """Per neuron, the `max_kinks` entries nearest their kink: indices, z, and
        which of them lie within `band` (those get a free slope)."""
        k = min(self.max_kinks, z.shape[0])
        _, near = jax.lax.top_k(-jnp.abs(z.T), k)
        zk = jnp.take_along_axis(z.T, near, axis=1)
        return near, zk, jnp.abs(zk) < self.band

    def velocity(self, objective: Objective, params: Params, data: Dataset) -> Params:
        model = objective.model(params)
        if not isinstance(model, ReLUNeuron | TwoLayerReLU):
            raise ValueError(
                f"FilippovFlow needs a ReLUNeuron or TwoLayerReLU, got {type(model).__name__}"
            )
        hidden, v, has_bias = hidden_layer(model)
        x = data.x
        if has_bias:
            x = jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=1)
        z = x @ hidden.T  # (n, m)
        pred = jax.vmap(model)(data.x)
        r = jax.grad(objective.loss)(pred, data.y)  # dL/df(x_i)
        alpha = model.negative_slope
        near, zk, free = self.kinks(z)
        slope = jnp.where(z > 0, 1.0, alpha).T  # (m, n)
        columns = jnp.arange(z.shape[1])[:, None]
        slope = slope.at[columns, near].set(jnp.where(free, 0.0, slope[columns, near]))
        c = (slope * v[:, None] * r[None, :]) @ x  # (m, p)
        u = (r[near] * v[:, None])[..., None] * x[near]  # (m, k, p)
        u = jnp.where(free[..., None], u, 0.0)
        target = jnp.where(free, self.pull * zk * r[near] * v[:, None], 0.0)
        a = jax.vmap(_min_norm_slopes, in_axes=(0, 0, 0, 0, None))(c, u, target, free, alpha)
        grad_hidden = c + jnp.einsum("mk,mkp->mp", a, u)
        grad_v = jnp.maximum(z, alpha * z).T @ r
        return _as_params(model, params, -grad_hidden, -grad_v)


def _min_norm_slopes(
    c: Float[Array, " p"], u: Float[Array, "k p"], target: Float[Array, " k"], free, lo: float
) -> Float[Array, " k"]:
    """argmin over a in [lo, 1]^k of |c + u^T a|^2 - 2 target . a, exactly (all 3^k faces)."""
    k = u.shape[0]
    gram = u @ u.T
    lin = u @ c - target
    faces = np.array(list(itertools.product((0, 1, 2), repeat=k)))  # 0: lo, 1: hi, 2: free
    is_free = jnp.asarray(faces == 2) & free[None, :]
    bound = jnp.where(jnp.asarray(faces == 1), 1.0, lo)

    def solve(open_, fixed):
        fixed = jnp.where(open_, 0.0, fixed)
        mask = open_[:, None] & open_[None, :]
        ridge = 1e-14 * (jnp.trace(gram) + 1e-300)
        matrix = jnp.where(mask, gram, 0.0) + jnp.diag(jnp.where(open_, ridge, 1.0))
        rhs = jnp.where(open_, -(lin + gram @ fixed), 0.0)
        a = fixed + jnp.linalg.solve(matrix, rhs)
        feasible = jnp.all(~open_ | ((a >= lo - 1e-12) & (a <= 1.0 + 1e-12)))
        value = a @ gram @ a + 2 * lin @ a
        return jnp.clip(a, lo, 1.0), jnp.where(feasible, value, jnp.inf)

    candidates, values = jax.vmap(solve)(is_free, bound)
    return candidates[jnp.argmin(values)]


def hidden_layer(model) -> tuple[Float[Array, "m p"], Float[Array, " m"], bool]:
    """Rows [w_j, b_j] of the hidden layer, the output weights, and whether b exists."""
    if isinstance(model, ReLUNeuron):
        weight, bias, v = model.weight[None, :], model.bias, jnp.ones(1)
        bias = None if bias is None else bias[None]
    else:
        weight, bias, v = model.hidden_weight, model.hidden_bias, model.output_weight
    hidden = weight if bias is None else jnp.concatenate([weight, bias[:, None]], axis=1)
    return hidden, v, bias is not None


def _as_params(model, params: Params, hidden: Float[Array, "m p"], v: Float[Array, " m"]) -> Params:
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
