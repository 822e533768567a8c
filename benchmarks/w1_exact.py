"""W1 limits against `exact_flow`, start by start, for a range of starts.

    python benchmarks/w1_exact.py --num 2000                     # solve_ensemble's defaults
    python benchmarks/w1_exact.py --start 480000 --num 100000 --rtol 1e-10 --atol 1e-12 --gtol 1e-8 --mean
    python benchmarks/w1_exact.py --start 525549 --num 1 --engine vmap --rtol 1e-10 --atol 1e-12 --gtol 1e-8 --mean

Starts `start` .. `start + num - 1` of W1's sampler (key 0, as `ensemble.py`), solved
by each flow of `--flows` in `solve_ensemble`, then exactly (piecewise, on the host,
one process per core). Prints, per flow, the statuses and the distance of each limit
from the exact one: max, median, 99th percentile, counts above 1e-8 and 1e-6, and the
worst starts.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import exact_limits, workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
from implicit_flow._samplers import sample_members  # noqa: E402


FLOWS = {
    "gradient": imf.GradientFlow(),
    "filippov": imf.FilippovFlow(),
    "filippov-band1e-11": imf.FilippovFlow(band=1e-11),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--num", type=int, default=2000)
    parser.add_argument("--flows", default=",".join(FLOWS), help=f"of {list(FLOWS)}")
    parser.add_argument("--engine", choices=["pool", "vmap"], default="pool")
    parser.add_argument("--rtol", type=float, default=1e-12)
    parser.add_argument("--atol", type=float, default=1e-14)
    parser.add_argument("--gtol", type=float, default=1e-9)
    parser.add_argument(
        "--mean", action="store_true", help="MeanSquareLoss (else the sum)"
    )
    args = parser.parse_args()
    model, data, sampler = workload("W1")
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    indices = jnp.arange(args.start, args.start + args.num)
    inits = eqx.combine(sample_members(sampler, jr.key(0), indices, params), skeleton)
    loss = imf.MeanSquareLoss() if args.mean else imf.SumSquareLoss()
    limits = {}
    for name in args.flows.split(","):
        start = time.perf_counter()
        result = imf.solve_ensemble(
            model,
            data,
            inits,
            loss=loss,
            flow=FLOWS[name],
            stepsize_controller=dfx.PIDController(rtol=args.rtol, atol=args.atol),
            gtol=args.gtol,
            max_steps=20_000,
            engine=imf.LanePool() if args.engine == "pool" else imf.PlainVmap(),
        )
        limits[name] = np.asarray(result.model.weight)
        statuses = np.unique(imf.status_names(result.status), return_counts=True)
        print(
            f"{name}: {time.perf_counter() - start:.1f} s, "
            f"{dict(zip(*statuses, strict=True))}",
            flush=True,
        )
    x, y = np.asarray(data.x), np.asarray(data.y)
    starts = np.asarray(inits.weight)[:, None]  # one neuron: (num, 1, d)
    exact = exact_limits(x, y, np.ones(1), starts, args.mean)[:, 0]
    for name, got in limits.items():
        error = np.max(np.abs(got - exact), axis=1)
        worst = args.start + np.argsort(-error)[:5]
        print(
            f"{name}: distance from exact_flow over starts {args.start}.."
            f"{args.start + args.num - 1}: max {error.max():.2e}, median "
            f"{np.median(error):.2e}, 99 % {np.quantile(error, 0.99):.2e}, > 1e-8: "
            f"{np.sum(error > 1e-8)}, > 1e-6: {np.sum(error > 1e-6)}; worst "
            f"{worst.tolist()}"
        )


if __name__ == "__main__":
    main()
