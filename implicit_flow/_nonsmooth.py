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
$3^K$ faces (each slope at $\\alpha$, at 1, or free), K at most 2 per neuron.
"""

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import Params
from ._data import Dataset
from ._objective import AbstractFlow, Objective
from .models import ReLUNeuron, TwoLayerReLU


class FilippovFlow(AbstractFlow):
    """Final. The minimal-norm subgradient flow of `ReLUNeuron` and `TwoLayerReLU` models.

    Fields: `band`, the half-width of $|z_{ij}|$ within which a kink's slope is free
    (the accuracy of sliding is about `band`); `pull`, a rate $1/\\tau$ that aims a
    sliding pre-activation at $\\dot z = -z/\\tau$ instead of 0, so that integration
    errors cannot walk it out of the band (default 1; 0 turns it off). At most two
    pre-activations of one neuron (the two nearest 0) are treated as kinks at once.

    Keep the controller's `atol` well below `band` (the default rtol 1e-12 / atol
    1e-14 does): with atol near the band, integration error walks sliding
    pre-activations out of it, and the solve chatters at the band's edge (on W2,
    rtol 1e-8 / atol 1e-10 ended every flow at max_steps; 1e-10 / 1e-12 converged).
    """

    band: float = eqx.field(static=True, default=1e-8)
    pull: float = eqx.field(static=True, default=1.0)

    def kinks(
        self, z: Float[Array, "n m"]
    ) -> tuple[Int[Array, "m 2"], Float[Array, "m 2"], Bool[Array, "m 2"]]:
        """Per neuron, the two entries nearest their kink: indices, z, and which of
        them lie within `band` (those get a free slope)."""
        # two argmins: XLA's top_k is ~20x slower on CPU for this shape
        size = jnp.abs(z)
        first = jnp.argmin(size, axis=0)
        size = jnp.where(jnp.arange(z.shape[0])[:, None] == first, jnp.inf, size)
        near = jnp.stack([first, jnp.argmin(size, axis=0)], axis=1)
        if z.shape[0] == 1:
            near = near[:, :1]
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
        r = jax.grad(objective.loss)(jax.vmap(model)(data.x), data.y)  # dL/df(x_i)
        alpha = model.negative_slope
        near, zk, free = self.kinks(z)
        onehot = (near[:, :, None] == jnp.arange(z.shape[0])) & free[:, :, None]
        slope = jnp.where(jnp.any(onehot, axis=1), 0.0, jnp.where(z.T > 0, 1.0, alpha))
        c = (slope * v[:, None] * r[None, :]) @ x  # (m, p): gradient off the kinks
        u = jnp.where(free[..., None], (r[near] * v[:, None])[..., None] * x[near], 0.0)
        target = jnp.where(free, self.pull * zk * r[near] * v[:, None], 0.0)
        if u.shape[1] == 1:  # one data point: pad to two kinks that do nothing
            u, target, free = (
                jnp.concatenate([a, jnp.zeros_like(a)], axis=1)
                for a in (u, target, free)
            )
        a = _min_norm_slopes(c, u, target, free, alpha)
        grad_hidden = c + jnp.einsum("mk,mkp->mp", a, u)
        grad_v = jnp.maximum(z, alpha * z).T @ r
        return _as_params(model, params, -grad_hidden, -grad_v)


def _min_norm_slopes(c, u, target, free, lo: float) -> Float[Array, "m 2"]:
    """argmin over a in [lo, 1]^2 of |c + a_1 u_1 + a_2 u_2|^2 - 2 target . a, per neuron.

    Exact: the minimum lies in the relative interior of one of the 9 faces of the
    box, where it is the face's unconstrained minimizer; all 9 are computed in
    closed form, and the feasible one of least value wins.
    """
    g11, g22 = jnp.sum(u[:, 0] ** 2, -1), jnp.sum(u[:, 1] ** 2, -1)
    g12 = jnp.sum(u[:, 0] * u[:, 1], -1)
    h1 = jnp.sum(u[:, 0] * c, -1) - target[:, 0]
    h2 = jnp.sum(u[:, 1] * c, -1) - target[:, 1]
    safe = lambda d: jnp.where(d > 0, d, 1.0)
    options = []
    for b1, b2 in itertools.product((lo, 1.0, None), repeat=2):
        if b1 is None and b2 is None:
            det = g11 * g22 - g12**2
            ok = free[:, 0] & free[:, 1] & (det > 1e-14 * (g11 * g22 + 1e-300))
            a1 = (-h1 * g22 + h2 * g12) / safe(det)
            a2 = (-h2 * g11 + h1 * g12) / safe(det)
        elif b1 is None:
            ok = free[:, 0] & (g11 > 0)
            a1, a2 = -(h1 + g12 * b2) / safe(g11), jnp.full_like(g11, b2)
        elif b2 is None:
            ok = free[:, 1] & (g22 > 0)
            a1, a2 = jnp.full_like(g11, b1), -(h2 + g12 * b1) / safe(g22)
        else:
            ok = jnp.ones(g11.shape, bool)
            a1, a2 = jnp.full_like(g11, b1), jnp.full_like(g11, b2)
        ok = (
            ok
            & (a1 >= lo - 1e-12)
            & (a1 <= 1 + 1e-12)
            & (a2 >= lo - 1e-12)
            & (a2 <= 1 + 1e-12)
        )
        value = g11 * a1**2 + g22 * a2**2 + 2 * g12 * a1 * a2 + 2 * (h1 * a1 + h2 * a2)
        options.append(
            (
                jnp.where(ok, value, jnp.inf),
                jnp.clip(a1, lo, 1.0),
                jnp.clip(a2, lo, 1.0),
            )
        )
    values = jnp.stack([o[0] for o in options])
    best = jnp.argmin(values, axis=0)
    pick = lambda k: jnp.take_along_axis(
        jnp.stack([o[k] for o in options]), best[None], 0
    )[0]
    return jnp.stack([pick(1), pick(2)], axis=1)


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
