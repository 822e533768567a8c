"""W2's data with the output layer fixed: FilippovFlow against exact Filippov flows.

    python benchmarks/fixed_output.py                       # 64 starts, retry with 6 kinks
    python benchmarks/fixed_output.py --num 16 --exact 4    # the first 4 also exactly

With `train_output=False` the flow is piecewise affine, sliding included, so
`exact_flow` gives its limit (~1-2 min a start here, hundreds of pieces): an
independent truth at W2's size (d = 10, m = 64, n = 32), v fixed at N(0, 1/m).
`solve_ensemble` solves every start with `FilippovFlow()` (3 kink slots), then, with
`--retry K`, again those that stalled with K slots (K > 4: the active-set QP), in a
pool whose stall rule looks at `--retry-stall-steps` tried steps at a time.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import exact_limits, workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
from implicit_flow.cli import cpu_cores  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--retry", type=int, default=6, help="kink slots (0: none)")
    parser.add_argument(
        "--retry-stall-steps", type=int, default=1000, help="the retry pool's rule"
    )
    parser.add_argument("--max-steps", type=int, default=20_000)
    parser.add_argument("--exact", type=int, default=0, help="starts solved exactly")
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", cpu_cores())
    _, data, _ = workload("W2")
    m, d = 64, data.x.shape[1]
    v = jr.normal(jr.key(7), (m,)) / np.sqrt(m)
    keys = jax.vmap(jr.fold_in, in_axes=(None, 0))(jr.key(0), jnp.arange(args.num))
    w0 = jax.vmap(lambda k: jr.normal(k, (m, d)) / np.sqrt(d))(keys)
    model = imf.TwoLayerReLU(w0[0], v, train_output=False)
    inits = eqx.tree_at(
        lambda a: (a.hidden_weight, a.output_weight),
        model,
        (w0, jnp.broadcast_to(v, (args.num, m))),
    )
    lanes = max(args.num // (2 * jax.device_count()), 1)
    start = time.perf_counter()
    result = imf.solve_ensemble(
        model,
        data,
        inits,
        flow=imf.FilippovFlow(),
        max_steps=args.max_steps,
        retry=imf.FilippovFlow(max_kinks=args.retry, kink_neurons=None)
        if args.retry
        else None,
        engine=imf.LanePool(lanes=lanes),
        retry_engine=imf.LanePool(lanes=lanes, stall_steps=args.retry_stall_steps),
    )
    statuses = np.unique(imf.status_names(result.status), return_counts=True)
    tried = np.asarray(result.num_steps + result.num_rejected)
    print(
        f"{args.num} starts, retry with {args.retry} kink slots, stall rule over "
        f"{args.retry_stall_steps} steps: "
        f"{time.perf_counter() - start:.1f} s, {dict(zip(*statuses, strict=True))}, "
        f"tried steps median {np.median(tried):.0f}, max {tried.max()}; not "
        f"converged: {np.flatnonzero(np.asarray(result.status != imf.Status.converged))}",
        flush=True,
    )
    if args.exact:
        x, y = np.asarray(data.x), np.asarray(data.y)
        start = time.perf_counter()
        exact = exact_limits(x, y, np.asarray(v), np.asarray(w0[: args.exact]))
        got = np.asarray(result.model.hidden_weight[: args.exact])
        error = np.max(np.abs(got - exact), axis=(1, 2))
        ok = np.asarray(result.status == imf.Status.converged)[: args.exact]
        print(
            f"exact flows of the first {args.exact}: {time.perf_counter() - start:.1f} s; "
            f"distance of the converged ones' limits: {np.array2string(error[ok], precision=2)}"
        )


if __name__ == "__main__":
    main()
