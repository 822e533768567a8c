"""Where a W2 flow's steps go at its kinks, with and without `FilippovFlow.cross`.

    python benchmarks/crossings.py               # start 0
    python benchmarks/crossings.py --starts 0 28

Each start is solved by `diffeqsolve` with `FilippovFlow`'s integrator (Tsit5, rtol
1e-10, atol 1e-12), once passing transversal crossings through the band in one step
(`cross=True`, the default) and once landing in the band first (`cross=False`),
saving every accepted step. Reported: accepted steps per stretch of time, rejected
steps, and the times an entry entered the band, by what it did next (went straight
through; slid and came back out on its side; slid to the end), and how far apart
the two limits are. Step counts do not drift with the machine's load.
"""

import argparse
import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import workload  # noqa: E402

import implicit_flow as imf  # noqa: E402


STRETCHES = (0.0, 1.0, 5.0, 20.0, 50.0, np.inf)


def solve(flow, objective, params, data, max_steps):
    """The flow to ||F|| < 1e-8, every accepted step saved: (ts, sides, stats, limit)."""
    solver, controller = flow.integrator(
        objective, dfx.Tsit5(), dfx.PIDController(rtol=1e-10, atol=1e-12)
    )
    stop = dfx.Event(lambda t, y, args, **kw: flow.speed(objective, y, args) < 1e-8)
    sol = dfx.diffeqsolve(
        flow.term(objective),
        solver,
        0.0,
        jnp.inf,
        None,
        params,
        data,
        stepsize_controller=controller,
        max_steps=max_steps,
        event=stop,
        saveat=dfx.SaveAt(steps=True),
    )
    sides = jax.vmap(lambda y: flow.sides(flow.pre_activations(objective, y, data)))
    last = jnp.sum(jnp.isfinite(sol.ts)) - 1  # (unused save slots hold inf)
    return sol.ts, sides(sol.ys), sol.stats, jax.tree.map(lambda a: a[last], sol.ys)


def episodes(sides: np.ndarray) -> dict[str, int]:
    """Kink crossings in one step, and each stay of an entry in the band after
    arriving from outside, by its end."""
    passed = int(np.sum(sides[1:] * sides[:-1] == -1))
    count = {"one step": passed, "straight through": 0, "slid, back out": 0}
    count["slid to the end"] = 0
    for i, j in zip(*np.nonzero((sides == 0).any(0)), strict=True):
        col = sides[:, i, j]
        k = 1
        while k < len(col):
            if col[k] == 0 and col[k - 1] != 0:
                end = k
                while end < len(col) and col[end] == 0:
                    end += 1
                if end == len(col):
                    count["slid to the end"] += 1
                elif col[end] == -col[k - 1]:
                    count["straight through"] += 1
                else:
                    count["slid, back out"] += 1
                k = end
            k += 1
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, nargs="+", default=[0])
    parser.add_argument("--max-steps", type=int, default=8000)
    args = parser.parse_args()
    model, data, sampler = workload("W2")
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.MeanSquareLoss())
    inits = imf.sample_inits(sampler, jr.key(0), max(args.starts) + 1, model)
    for start in args.starts:
        p = jax.tree.map(lambda a: a[start], eqx.filter(inits, eqx.is_array))
        limits = {}
        print(f"\nW2 start {start}")
        print(
            "| cross | "
            + " | ".join(
                f"accepted t in [{a:g}, {b:g})"
                for a, b in zip(STRETCHES[:-1], STRETCHES[1:], strict=True)
            )
            + " | rejected | crossings in one step / entries in the band: straight"
            " through, slid back, slid to the end |"
        )
        print("|---" * (len(STRETCHES) + 3) + "|")
        for cross in (True, False):
            flow = imf.FilippovFlow(cross=cross)
            ts, sides, stats, y = eqx.filter_jit(solve)(
                flow, objective, p, data, args.max_steps
            )
            ok = np.isfinite(np.asarray(ts))
            ts, sides = np.asarray(ts)[ok], np.asarray(sides)[ok]
            limits[cross] = np.concatenate([np.ravel(a) for a in jax.tree.leaves(y)])
            counts = np.histogram(ts, STRETCHES)[0]
            kinds = episodes(sides)
            print(
                f"| {cross} | "
                + " | ".join(str(c) for c in counts)
                + f" | {int(stats['num_rejected_steps'])} | "
                + " / ".join(str(v) for v in kinds.values())
                + " |"
            )
        gap = np.max(np.abs(limits[True] - limits[False]))
        print(f"limits apart by {gap:.2e} (max abs)")


if __name__ == "__main__":
    main()
