"""Work on the few rows of a batch that need it, gathered in chunks.

Much of a pool's per-step work concerns a small, varying subset of its rows (a
lane's neurons with entries on their kinks, the lanes whose first stage must be
evaluated again): solving those rows in fixed-size chunks, as many as their count
needs, costs nothing where there are none, and keeps the shapes static.
"""

import jax
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PyTree


def in_chunks(mask: Bool[Array, " n"], size: int, solve, out: PyTree) -> PyTree:
    """`out` (arrays with n leading rows) with its rows where `mask` replaced by
    `solve`(rows), `size` rows at a time, in as many chunks as `mask` has true
    entries need."""
    n = mask.shape[0]
    order = jnp.full(n + size, n).at[jnp.where(mask, running_count(mask) - 1, n + size)]
    order = order.set(jnp.arange(n), mode="drop")

    def chunk(i, out):
        take = jax.lax.dynamic_slice(order, (i * size,), (size,))
        solved = solve(jnp.minimum(take, n - 1))
        return jtu.tree_map(lambda o, s: o.at[take].set(s, mode="drop"), out, solved)

    count = jnp.sum(mask)
    return jax.lax.fori_loop(0, (count + size - 1) // size, chunk, out)


def running_count(mask: Bool[Array, "*b n"]) -> Int[Array, "*b n"]:
    """`cumsum` along the last axis by a log-depth scan: XLA CPU lowers `cumsum`
    to a window reduction of n^2 work (in W2's search for kink slots, 1.7x the
    cost of the whole search)."""
    return jax.lax.associative_scan(jnp.add, mask.astype(jnp.int32), axis=-1)
