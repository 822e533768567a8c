"""Initializations: member i depends only on (key, i), never on the count or chunking."""

import abc

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
from jax.flatten_util import ravel_pytree
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray

from ._custom_types import Params


class AbstractSampler(eqx.Module):
    """Draws initial parameters shaped like a model's trainable leaves (abstract)."""

    @abc.abstractmethod
    def sample(self, key: PRNGKeyArray, index: Int[Array, ""], like: Params) -> Params:
        """Member `index` of the ensemble; `key` is already folded with `index`."""


class Gaussian(AbstractSampler):
    """Final. $\\theta \\sim \\mathcal N(0, s^2)$ entrywise, with a scale per leaf.

    Field: `scale`, a scalar for every leaf or a pytree of scalars shaped like the
    trainable parameters (e.g. $1/\\sqrt d$ for the hidden layer, $\\alpha/\\sqrt m$
    for the output layer). Scales are arrays, so sweeping them does not recompile.
    """

    scale: Params

    def __init__(self, scale: ArrayLike | Params = 1.0):
        self.scale = jtu.tree_map(lambda s: jnp.asarray(s, dtype=float), scale)

    def sample(self, key, index, like):
        del index
        leaves, treedef = jtu.tree_flatten(like)
        scales = self.scale
        if not isinstance(scales, jax.Array):
            scales = treedef.flatten_up_to(scales)
        else:
            scales = [scales] * len(leaves)
        keys = jr.split(key, len(leaves))
        return jtu.tree_unflatten(
            treedef,
            [
                s * jr.normal(k, x.shape, x.dtype)
                for s, k, x in zip(scales, keys, leaves, strict=True)
            ],
        )


class Sphere(AbstractSampler):
    """Final. Uniform on the sphere of radius `radius` around `center`.

    Fields: `radius`; `center`, parameters to centre on (None: the origin). The
    sphere lives in the space of all trainable parameters taken together.
    """

    radius: Float[Array, ""]
    center: Params | None

    def __init__(self, radius: ArrayLike, center: Params | None = None):
        self.radius = jnp.asarray(radius, dtype=float)
        self.center = center

    def sample(self, key, index, like):
        del index
        flat, unravel = ravel_pytree(like)
        direction = jr.normal(key, flat.shape, flat.dtype)
        point = self.radius * direction / jnp.linalg.norm(direction)
        if self.center is not None:
            point = point + ravel_pytree(self.center)[0]
        return unravel(point)


class PlaneGrid(AbstractSampler):
    """Final. A regular `shape[0]` x `shape[1]` grid on a 2-D plane of parameter space.

    Member $i = (a, b)$ in row-major order is $\theta = c + u_a e_1 + v_b e_2$, with
    $u, v$ evenly spaced over `extent` = (u_min, u_max, v_min, v_max). Fields:
    `center`, `e1`, `e2`, vectors over all trainable parameters taken together
    (in `jax.flatten_util.ravel_pytree` order), `extent`, `shape`. No randomness.
    """

    center: Float[Array, " p"]
    e1: Float[Array, " p"]
    e2: Float[Array, " p"]
    extent: Float[Array, "4"]
    shape: tuple[int, int] = eqx.field(static=True)

    def __init__(self, center, e1, e2, extent, shape):
        self.center, self.e1, self.e2 = (
            jnp.asarray(v, dtype=float) for v in (center, e1, e2)
        )
        self.extent = jnp.asarray(extent, dtype=float)
        self.shape = (int(shape[0]), int(shape[1]))

    @property
    def size(self) -> int:
        """The number of grid points."""
        return self.shape[0] * self.shape[1]

    def coordinates(self, index: Int[Array, ""]) -> Float[Array, "2"]:
        """The plane coordinates (u, v) of member `index`."""
        a, b = jnp.divmod(index, self.shape[1])
        lo_u, hi_u, lo_v, hi_v = self.extent
        u = lo_u + (hi_u - lo_u) * a / max(self.shape[0] - 1, 1)
        v = lo_v + (hi_v - lo_v) * b / max(self.shape[1] - 1, 1)
        return jnp.stack([u, v])

    def sample(self, key, index, like):
        del key
        u, v = self.coordinates(index)
        flat, unravel = ravel_pytree(like)
        if self.center.shape != flat.shape:
            raise ValueError(
                f"PlaneGrid vectors have {self.center.shape[0]} entries but the model "
                f"has {flat.shape[0]} trainable parameters"
            )
        return unravel(self.center + u * self.e1 + v * self.e2)


def ensemble_keys(key: PRNGKeyArray, indices: Int[Array, " k"]) -> PRNGKeyArray:
    """Per-member keys: member i's key is `fold_in(key, i)` whatever the count."""
    return jax.vmap(jr.fold_in, in_axes=(None, 0))(key, indices)


def sample_members(
    sampler: AbstractSampler, key: PRNGKeyArray, indices: Int[Array, " k"], like: Params
) -> Params:
    """Members `indices` of the ensemble, stacked along a leading axis."""
    keys = ensemble_keys(key, indices)
    return jax.vmap(sampler.sample, in_axes=(0, 0, None))(keys, indices, like)


def sample_inits(
    sampler: AbstractSampler,
    key: PRNGKeyArray,
    num: int,
    model: eqx.Module,
    trainable=eqx.is_inexact_array,
) -> eqx.Module:
    """Members 0..num-1 as `model` with a leading member axis on its trainable leaves.

    The same members `solve_ensemble(model, data, sampler, key=key, num=num)` flows.
    """
    params, skeleton = eqx.partition(model, trainable)
    return eqx.combine(sample_members(sampler, key, jnp.arange(num), params), skeleton)
