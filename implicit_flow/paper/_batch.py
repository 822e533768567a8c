"""The one place where many flows are run.

Every study in `implicit_flow.paper` runs its flows through these two functions.
`neuron_flows` runs the exact piecewise flows of single neurons on the host (about
2 ms a flow, exact, and the trajectory checks need `PiecewiseFlow.at`); problems with
different data each are fine. `two_layer_flows` runs many starts on one dataset with
the ensemble engine `solve_ensemble` (one compiled region for the whole batch).
"""

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Bool, Float

from .._data import Dataset
from .._ensemble import solve_ensemble
from .._result import FlowResult
from .._solve import solve_flow
from ..exact._piecewise import piecewise_affine_flow, PiecewiseFlow


@dataclasses.dataclass(frozen=True, eq=False)
class NeuronBatch:
    r"""Final. Exact flows of neurons $\sigma(\langle x, w\rangle)$, one per problem.

    Attributes:
        limits: (n_init, d) where each flow ended (its limit if `converged`).
        loss: (n_init,) the half-sum loss there.
        converged: (n_init,) the flow reached a limit (status "converged").
        slid: (n_init,) the flow spent time on a kink face (a Filippov sliding mode,
            where the field points into the kink from both sides).
        flows: the `PiecewiseFlow`s, for exact trajectories (`flow.at(ts)`).
    """

    limits: Float[np.ndarray, "n_init d"]
    loss: Float[np.ndarray, " n_init"]
    converged: Bool[np.ndarray, " n_init"]
    slid: Bool[np.ndarray, " n_init"]
    flows: tuple[PiecewiseFlow, ...]


def neuron_flows(
    x: Float[np.ndarray, "n_init n_data d"],
    y: Float[np.ndarray, "n_init n_data"],
    starts: Float[np.ndarray, "n_init d"],
    *,
    negative_slope: float = 0.0,
    grad_at_zero: float = 1.0,
) -> NeuronBatch:
    """Flows a bias-free single neuron on each problem i: data (x[i], y[i]), start
    starts[i], exactly (`piecewise_affine_flow`, about 2 ms a flow)."""
    flows = tuple(
        piecewise_affine_flow(
            np.asarray(xi, dtype=float),
            np.asarray(yi, dtype=float),
            np.ones(1),
            np.asarray(wi, dtype=float)[None, :],
            bias=False,
            negative_slope=negative_slope,
            grad_at_zero=grad_at_zero,
        )
        for xi, yi, wi in zip(x, y, starts, strict=True)
    )
    return NeuronBatch(
        limits=np.stack([f.hidden[0] for f in flows]),
        loss=np.array([f.loss for f in flows]),
        converged=np.array([f.status == "converged" for f in flows]),
        slid=np.array([any(face.any() for face in f.faces) for f in flows]),
        flows=flows,
    )


def two_layer_flows(
    models: Sequence, data: Dataset, **solve_kwargs
) -> list[FlowResult]:
    """Flows every model (same structure, different starts) on `data`.

    One `solve_ensemble` call for the batch (`solve_flow` for a single model); keyword
    arguments are passed through. Returns one `FlowResult` per model, in order.
    """
    if len(models) == 1:
        return [solve_flow(models[0], data, **solve_kwargs)]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *models)
    batch = solve_ensemble(models[0], data, stacked, **solve_kwargs)
    return [jax.tree.map(lambda leaf, i=i: leaf[i], batch) for i in range(len(models))]
