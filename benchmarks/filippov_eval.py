"""Cost of one batched evaluation of the W2 vector field, side by side.

    python benchmarks/filippov_eval.py [--lanes 64] [--without-qp]
    python benchmarks/filippov_eval.py --lanes 64 --max-kinks 6 --kink-neurons 0

`jax.grad`'s field (the obvious alternative, which stalls on W2), `FilippovFlow`'s
field as the steady-state test evaluates it (pieces found from z), and as
`KinkSolver`'s stages evaluate it (pieces frozen at the step's start), each for 256
lanes of W2 with a band wide enough that every neuron has free entries. Ratios to the
plain gradient are what to compare; absolute times drift. `--without-qp` replaces the
box QP by a constant (wrong velocities): the difference is what the QP costs.
"""

import argparse
import os
import time


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
from ensemble import workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
import implicit_flow._nonsmooth as nonsmooth  # noqa: E402


def timed(fn, *args, repeat=20) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeat):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeat


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=256)
    parser.add_argument("--without-qp", action="store_true")
    parser.add_argument("--max-kinks", type=int, default=3)
    parser.add_argument("--kink-neurons", type=int, default=24, help="0: None (all)")
    args = parser.parse_args()
    if args.without_qp:
        nonsmooth._min_norm_slopes = lambda c, u, target, free, *_: jnp.where(
            free, 0.5, 0.0
        )
    model, data, sampler = workload("W2")
    params = eqx.filter(
        imf.sample_inits(sampler, jr.key(0), args.lanes, model), eqx.is_array
    )
    objective = imf.Objective(
        eqx.filter(model, eqx.is_inexact_array, inverse=True), imf.MeanSquareLoss()
    )
    rows = []
    for band in (1e-8, 1e-1):
        flow = imf.FilippovFlow(
            band=band,
            max_kinks=args.max_kinks,
            kink_neurons=args.kink_neurons or None,
        )
        pieces = jax.jit(jax.vmap(lambda p: flow.pieces(objective, p, data)))(params)
        free = float(pieces.free.sum(axis=(1, 2)).mean())
        fields = {
            "jax.grad": jax.vmap(lambda p: objective.grad(p, data)),
            "FilippovFlow": jax.vmap(lambda p: flow.velocity(objective, p, data)),
            "FilippovFlow, frozen pieces": jax.vmap(
                lambda p, pc: flow.velocity(objective, p, data, pc)
            ),
        }
        for name, field in fields.items():
            inputs = (params, pieces) if "frozen" in name else (params,)
            rows.append((band, free, name, timed(jax.jit(field), *inputs)))
    base = {band: t for band, _, name, t in rows if name == "jax.grad"}
    header = f"| band | free entries per lane | field | ms per {args.lanes} lanes |"
    print(header + " x jax.grad |")
    print("|---|---|---|---|---|")
    for band, free, name, t in rows:
        print(
            f"| {band:g} | {free:.0f} | {name} | {1e3 * t:.2f} | {t / base[band]:.1f} |"
        )


if __name__ == "__main__":
    main()
