r"""Depth 2 with one hidden neuron (Vardi & Shamir 2021, Section 6).

$N_\theta(x) = v\,\sigma(\langle w, x\rangle)$, both layers trained, no bias,
$\sigma'(0) = 1$, from $\theta(0) = (0, \varepsilon)$. The flow conserves the
balancedness $\|w\|^2 - v^2$; one GD step of size $\eta$ changes it by exactly
$\eta^2(\|\nabla_w L\|^2 - (\partial_v L)^2)$ (because
$\langle w, \nabla_w L\rangle = v\,\partial_v L$ for ReLU). The object of study is
$u = v\,w$ as $\varepsilon \to 0^+$.
"""

import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._data import Dataset
from .._loss import SumSquareLoss
from .._objective import Objective
from .._result import Status
from .._solve import solve_flow
from ..models import TwoLayerReLU
from ._batch import two_layer_flows
from ._datasets import depth2_start


def effective_weight(model: TwoLayerReLU) -> Float[np.ndarray, " d"]:
    r"""$u = \sum_j v_j w_j$; for one hidden neuron
    $N_\theta(x) = \sigma(\langle u, x\rangle)$
    when $v > 0$ (positive homogeneity), so u is the effective single-neuron weight."""
    return np.asarray(model.output_weight @ model.hidden_weight)


def flow_path(model: eqx.Module, data: Dataset, ts: Sequence[float], **solve_kwargs):
    """The flow's states at increasing times `ts` (`ts[0] = 0`), by restarting
    `solve_flow` on each interval (it stores no trajectory). Intervals after a
    steady state is reached repeat the limit.

    Returns:
        A list of models, one per time.
    """
    ts = np.asarray(ts, dtype=float)
    if ts[0] != 0 or np.any(np.diff(ts) <= 0):
        raise ValueError("ts must start at 0 and increase")
    path, current, done = [model], model, False
    for dt in np.diff(ts):
        if not done:
            res = solve_flow(current, data, t1=float(dt), **solve_kwargs)
            current = res.model
            done = bool(np.isfinite(float(res.t_final)) and float(res.t_final) < dt)
        path.append(current)
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class BalancednessGD:
    r"""Final. Balancedness along gradient descent, step by step.

    Attributes:
        lr: the step size $\eta$.
        change: (num_steps, m) the change of $\|w_j\|^2 + b_j^2 - v_j^2$ per step.
        predicted: (num_steps, m)
            $\eta^2(\|\nabla_{w_j,b_j} L\|^2 - (\partial_{v_j} L)^2)$.
        scale: (num_steps,) $1 + \|\theta\|^2$ before each step (for relative errors).
        loss: (num_steps + 1,) the loss before each step and at the end.
        final: the model after the last step.
    """

    lr: float
    change: Float[np.ndarray, "num_steps m"]
    predicted: Float[np.ndarray, "num_steps m"]
    scale: Float[np.ndarray, " num_steps"]
    loss: Float[np.ndarray, " num_steps_plus_one"]
    final: TwoLayerReLU

    @property
    def formula_error(self) -> float:
        r"""$\max_k |\text{change}_k - \text{predicted}_k| / (1 + \|\theta_k\|^2)$."""
        return float(np.max(np.abs(self.change - self.predicted) / self.scale[:, None]))


def gd_balancedness(
    model: TwoLayerReLU, data: Dataset, lr: float, num_steps: int
) -> BalancednessGD:
    r"""Runs plain GD $\theta \leftarrow \theta - \eta \nabla L$ (half-sum loss) for
    `num_steps` steps in one `lax.scan`, recording the balancedness change per step and
    the exact formula's prediction."""
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = Objective(skeleton, SumSquareLoss())
    change, predicted, scale, loss, final = _gd_scan(
        objective, params, data, jnp.asarray(lr, dtype=float), num_steps
    )
    return BalancednessGD(
        float(lr),
        np.asarray(change),
        np.asarray(predicted),
        np.asarray(scale),
        np.asarray(loss),
        eqx.combine(final, skeleton),
    )


@eqx.filter_jit
def _gd_scan(
    objective: Objective, params, data: Dataset, lr: Float[Array, ""], num_steps: int
):
    def invariants(p):
        return objective.model(p).invariants()

    def step(p, _):
        g = objective.grad(p, data)
        gw = jnp.sum(g.hidden_weight**2, axis=1)
        if g.hidden_bias is not None:
            gw = gw + g.hidden_bias**2
        new = jax.tree.map(lambda a, b: a - lr * b, p, g)
        sq = sum(jnp.sum(leaf**2) for leaf in jax.tree.leaves(p))
        out = (
            invariants(new) - invariants(p),
            lr**2 * (gw - g.output_weight**2),
            1.0 + sq,
            objective(p, data),
        )
        return new, out

    final, (change, predicted, scale, loss) = jax.lax.scan(
        step, params, None, length=num_steps
    )
    return change, predicted, scale, jnp.append(loss, objective(final, data)), final


@dataclasses.dataclass(frozen=True)
class Extrapolation:
    r"""Final. A Richardson extrapolation $v(\varepsilon) = v_0 + C\varepsilon^p$ to
    $\varepsilon \to 0$.

    Attributes:
        value: $v_0$.
        order: the fitted order p (from three consecutive values).
        error: an error estimate (change from the previous extrapolation, plus noise).
        last: the value at the smallest $\varepsilon$.
    """

    value: float
    order: float
    error: float
    last: float


def extrapolate_to_zero(
    eps: Sequence[float], values: Sequence[float], noise: float = 1e-9
) -> Extrapolation:
    r"""Extrapolates `values` measured at `eps` (geometric, any order) to eps -> 0.

    Differences at or below `noise` (the measurement accuracy) are not used to fit:
    the order p comes from the last three values whose two differences exceed it, and
    $v_0 = v_{k+1} - (v_k - v_{k+1}) / (r^p - 1)$ with
    $r = \varepsilon_k/\varepsilon_{k+1}$.
    With fewer than three usable values the last value is returned, with the last
    difference as its error.
    """
    order = np.argsort(eps)[::-1]
    e, v = np.asarray(eps, dtype=float)[order], np.asarray(values, dtype=float)[order]
    if len(v) < 2:
        return Extrapolation(float(v[-1]), np.nan, np.inf, float(v[-1]))
    diff = v[:-1] - v[1:]
    usable = [
        k for k in range(1, len(diff)) if min(abs(diff[k - 1]), abs(diff[k])) > noise
    ]
    if not usable:
        return Extrapolation(
            float(v[-1]), np.nan, float(abs(diff[-1])) + noise, float(v[-1])
        )
    estimates = []
    for k in usable:
        p = (
            np.log(diff[k - 1] / diff[k]) / np.log(e[k - 1] / e[k])
            if diff[k - 1] / diff[k] > 0
            else np.nan
        )
        r = e[k] / e[k + 1]
        estimates.append((p, v[k + 1] - diff[k] / (r**p - 1)))
    p, value = estimates[-1]
    error = (
        abs(value - estimates[-2][1]) if len(estimates) > 1 else abs(diff[usable[-1]])
    )
    return Extrapolation(float(value), float(p), float(error) + noise, float(v[-1]))


@dataclasses.dataclass(frozen=True, eq=False)
class EpsilonSweep:
    r"""Final. Depth-2 limits from $(0, \varepsilon)$ over a range of $\varepsilon$.

    Attributes:
        eps: (k,) the $\varepsilon$ values.
        u: (k, d) the limits' $u = v\,w$.
        loss: (k,) final losses.
        converged: (k,) whether each flow reached a steady state.
        balancedness_error: (k,) $|\|w\|^2 - v^2 + \varepsilon^2|$ at the limit.
        results: the `FlowResult`s.
    """

    eps: Float[np.ndarray, " k"]
    u: Float[np.ndarray, "k d"]
    loss: Float[np.ndarray, " k"]
    converged: np.ndarray
    balancedness_error: Float[np.ndarray, " k"]
    results: tuple


def eps_sweep(data: Dataset, eps: Sequence[float], **solve_kwargs) -> EpsilonSweep:
    r"""Flows the one-hidden-neuron net from $(0, \varepsilon)$ for each eps, as one
    ensemble (`solve_ensemble`); keyword arguments go to it."""
    eps = np.asarray(eps, dtype=float)
    models = [depth2_start(e, data.dim) for e in eps]
    results = tuple(two_layer_flows(models, data, **solve_kwargs))
    u = np.stack([effective_weight(r.model) for r in results])
    inv = np.array([float(r.model.invariants()[0]) for r in results])
    return EpsilonSweep(
        eps=eps,
        u=u,
        loss=np.array([float(r.loss) for r in results]),
        converged=np.array([bool(r.status == Status.converged) for r in results]),
        balancedness_error=np.abs(inv + eps**2),
        results=results,
    )
