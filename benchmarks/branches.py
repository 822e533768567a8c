"""Which limit gradient descent picks, as eta -> 0, from W2 starts where runs disagree.

    python benchmarks/branches.py --runs tight.npz,recipe.npz --starts 234,808,325,17

`--runs`: `.npz` files written by `ensemble.py --workload W2 --save` (limits of the
same starts by different tolerances or code). From each start of `--starts`, `run_gd`
at each eta of `--etas` (mean loss, gtol 1e-8, as the flow); printed: the distance
of GD's limit from each run's. GD's limit is off the flow's by ~C eta, so the run
whose distance falls with eta is on GD's small-step branch; where none falls, the
starts' branches are not decided by eta -> 0 either.
"""

import argparse

import jax


jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import flat, workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
from implicit_flow._samplers import sample_members  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True, help="comma-separated .npz files")
    parser.add_argument("--starts", required=True, help="comma-separated W2 starts")
    parser.add_argument("--etas", default="0.02,0.01,0.005,0.0025")
    args = parser.parse_args()
    model, data, sampler = workload("W2")
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    runs = {name: np.load(name)["pool+tail_limits"] for name in args.runs.split(",")}
    etas = np.array([float(e) for e in args.etas.split(",")])
    for i in [int(s) for s in args.starts.split(",")]:
        start = eqx.combine(
            sample_members(sampler, jr.key(0), jnp.array([i]), params), skeleton
        )
        gd = imf.run_gd(
            model,
            data,
            start,
            loss=imf.MeanSquareLoss(),
            learning_rates=etas,
            gtol=1e-8,
            max_steps=400_000,
        )
        limits = flat(jax.tree.map(lambda a: a[:, 0], gd.model))
        for eta, limit, status in zip(
            etas, limits, imf.status_names(gd.status)[:, 0], strict=True
        ):
            far = ", ".join(
                f"{name} {np.max(np.abs(limit - run[i])):.2e}"
                for name, run in runs.items()
            )
            print(f"start {i}, eta {eta:g} ({status}): from {far}", flush=True)


if __name__ == "__main__":
    main()
