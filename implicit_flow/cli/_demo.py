"""`implicit-flow demo`: every built-in model, a few starts, one table."""

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .. import (
    Dataset,
    DeepLinear,
    exact_flow,
    LinearPredictor,
    ReLUNeuron,
    solve_flow,
    status_names,
    TwoLayerReLU,
)


# Vardi & Shamir (2021), Theorem 3 with gamma = 2, alpha = 1: from w = 0 the flow
# ends at (5, -1, s) with s in (-0.12, -0.10).
THEOREM3 = Dataset(
    [[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, 2.0, 2.0]], [16.0, 18.0, 0.0]
)


def _flat(model) -> np.ndarray:
    leaves = jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array))
    return np.concatenate([np.ravel(leaf) for leaf in leaves])


def _cases(rng: np.random.Generator, num_inits: int):
    x = rng.normal(size=(4, 6))
    linear_data = Dataset(x, x @ rng.normal(size=6))
    teacher = rng.normal(size=(2, 3))
    x3 = rng.normal(size=(6, 3))
    net_data = Dataset(x3, np.maximum(x3 @ teacher.T, 0.0) @ np.array([1.0, 0.5]))
    leaky_data = Dataset(x3[:2], np.array([1.5, -0.2]))
    small = lambda *shape: 0.5 * rng.normal(size=shape)
    starts = range(num_inits)
    yield "LinearPredictor", linear_data, [LinearPredictor(small(6)) for _ in starts]
    yield (
        "ReLUNeuron (Thm 3)",
        THEOREM3,
        [ReLUNeuron(np.zeros(3) if i == 0 else np.abs(small(3))) for i in starts],
    )
    yield (
        "ReLUNeuron leaky 0.2",
        leaky_data,
        [ReLUNeuron(small(3), negative_slope=0.2) for _ in starts],
    )
    yield (
        "TwoLayerReLU v fixed",
        net_data,
        [
            TwoLayerReLU(teacher + small(2, 3), [1.0, 0.5], train_output=False)
            for _ in starts
        ],
    )
    yield (
        "TwoLayerReLU",
        net_data,
        [TwoLayerReLU(small(4, 3), small(4), small(4)) for _ in starts],
    )
    yield (
        "DeepLinear depth 3",
        linear_data,
        [DeepLinear([small(3, 6), small(3, 3), small(1, 3)]) for _ in starts],
    )


def _reference(model, data, result) -> str:
    """Distance to the exact limit where one exists, else the invariants' drift."""
    try:
        exact = exact_flow(model, data)
    except ValueError:
        drift = jnp.max(jnp.abs(result.model.invariants() - model.invariants()))
        return f"invariant drift {float(drift):.1e}"
    name = str(status_names(exact.status))
    if name != "converged":
        return f"exact: {name}"
    return f"{np.max(np.abs(_flat(result.model) - _flat(exact.model))):.1e}"


def run_demo(seed: int, num_inits: int) -> int:
    """Print the demo table; return the process exit code."""
    rng = np.random.default_rng(seed)
    header = (
        f"{'model':<22}{'init':>4}  {'limit (first 3 params)':<30}{'loss':>10}"
        f"{'|grad L|':>10}{'steps':>7}  {'status':<11}{'vs exact limit':>22}"
    )
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for name, data, inits in _cases(rng, num_inits):
        for i, model in enumerate(inits):
            result = solve_flow(model, data)
            limit = ", ".join(f"{v:+.4f}" for v in _flat(result.model)[:3])
            print(
                f"{name:<22}{i:>4}  {limit:<30}{float(result.loss):>10.1e}"
                f"{float(result.grad_norm):>10.1e}{int(result.num_steps):>7}  "
                f"{str(status_names(result.status)):<11}"
                f"{_reference(model, data, result):>22}",
                flush=True,
            )
    print(
        f"\n{time.perf_counter() - start:.1f} s. Loss: half-sum 1/2 sum (f - y)^2; "
        "sigma'(0) = 1; float64; Tsit5 + PID(rtol 1e-12, atol 1e-14); gtol 1e-9."
    )
    return 0
