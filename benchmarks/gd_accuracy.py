"""How close gradient descent gets to the W2 flow's limits, and at what cost.

    python benchmarks/gd_accuracy.py              # first 64 W2 starts, eta 0.1 .. 0.003

The flow's limits come from the issue's recipe (`FilippovFlow` in a `LanePool` with
`TailJump`, within ~5e-7 of a converged reference: RESULTS.md), which is accurate
enough to measure GD's errors down to ~1e-5. Each step size is one `run_gd` call on
the same starts (first call, compile included); the error is the largest parameter
difference of a converged run from the flow's limit. GD's limit is off by ~C eta on
these nonsmooth flows, with C varying erratically with eta (so Richardson
extrapolation does not help: tests/test_sliding_exact.py), so the step size and the
steps that the issue's 1e-6 would take follow from the largest error per eta.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import ensemble_kwargs, flat, tail_fields, W2_TAIL, workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
from implicit_flow.cli import cpu_cores  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=64)
    parser.add_argument("--etas", default="0.1,0.03,0.01,0.003")
    parser.add_argument("--lanes", type=int, default=64, help="the flow's LanePool")
    parser.add_argument("--rtol", type=float, default=1e-10, help="the flow's")
    parser.add_argument("--atol", type=float, default=1e-12, help="the flow's")
    parser.add_argument(
        "--max-kinks",
        type=int,
        default=3,
        help="the flow's FilippovFlow(max_kinks=...)",
    )
    parser.add_argument("--save", help="write the flow's and GD's limits to this .npz")
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", cpu_cores())
    model, data, sampler = workload("W2")
    start = time.perf_counter()
    flow = imf.solve_ensemble(
        model,
        data,
        sampler,
        **ensemble_kwargs(
            args.num,
            imf.LanePool(lanes=args.lanes),
            imf.FilippovFlow(max_kinks=args.max_kinks),
            imf.TailJump(**tail_fields(W2_TAIL)),
            retry_kinks=4,
            rtol=args.rtol,
            atol=args.atol,
        ),
    )
    limits = flat(flow.model)
    flow_ok = np.asarray(flow.status == imf.Status.converged)
    tried = np.asarray(flow.num_steps + flow.num_rejected)
    print(
        f"W2, first {args.num} starts; flow: {time.perf_counter() - start:.1f} s, "
        f"{flow_ok.sum()} converged, {tried.sum()} tried steps (median "
        f"{np.median(tried):.0f}, max {tried.max()}), backend {jax.default_backend()}"
    )
    saved = {"flow": limits, "flow_converged": flow_ok}
    print("| eta | GD wall s | median steps | converged | max error | median error |")
    print("|---|---|---|---|---|---|")
    for eta in (float(e) for e in args.etas.split(",")):
        start = time.perf_counter()
        gd = jax.block_until_ready(
            imf.run_gd(
                model,
                data,
                flow.init,
                loss=imf.MeanSquareLoss(),
                learning_rates=[eta],
                gtol=1e-8,
                max_steps=int(2_000 / eta),
            )
        )
        wall = time.perf_counter() - start
        ok = np.asarray(gd.status == imf.Status.converged)[0] & flow_ok
        got = flat(jax.tree.map(lambda a: a[0], eqx.filter(gd.model, eqx.is_array)))
        error = np.max(np.abs(got - limits), axis=1)[ok]
        saved[f"gd_{eta:g}"] = got
        print(
            f"| {eta:g} | {wall:.1f} | {np.median(np.asarray(gd.num_steps)):.0f} | "
            f"{ok.sum()} | {error.max():.2e} | {np.median(error):.2e} |"
        )
    if args.save:
        np.savez(args.save, **saved)


if __name__ == "__main__":
    main()
