"""How many steps a stiff solver would need for a W2 flow's tail, against Tsit5.

    python benchmarks/stiff_tail.py                  # start 0, tail from t = 50
    python benchmarks/stiff_tail.py --start 28 --from-t 50

The flow of one W2 start is solved to `--from-t` (Tsit5, `FilippovFlow`, rtol 1e-10),
and from there to ||F|| < 1e-8 by: Tsit5 at rtol 1e-12 (the reference), Tsit5 at
rtol 1e-10 (what the engine does), and Diffrax's implicit Kvaerno5 at rtol 1e-10 and
1e-8 (`FilippovFlow(land=False)`'s field, a dense Jacobian and LU per step: its wall
time says nothing about a structured implementation, its step count does). Reported:
accepted and rejected steps, the end time, and the limit's distance to the reference.
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


@eqx.filter_jit
def solve(flow, objective, solver, y0, data, t0, t1, rtol, gtol=1e-8):
    """`flow` from (t0, y0) to t1, or to ||F|| < gtol if t1 is inf: (y, stats, t)."""
    controller = dfx.PIDController(rtol=rtol, atol=rtol * 1e-2)
    if isinstance(solver, dfx.AbstractImplicitSolver):
        chord = dfx.VeryChord(rtol=rtol * 1e-2, atol=rtol * 1e-4)
        solver = eqx.tree_at(lambda s: s.root_finder, solver, chord)
    else:
        solver, controller = flow.integrator(objective, solver, controller)
    stop = lambda t, y, args, **kw: flow.speed(objective, y, args) < gtol
    sol = dfx.diffeqsolve(
        flow.term(objective),
        solver,
        t0,
        t1,
        None,
        y0,
        data,
        stepsize_controller=controller,
        max_steps=20_000,
        event=dfx.Event(stop) if t1 == jnp.inf else None,
    )
    return jax.tree.map(lambda a: a[-1], sol.ys), sol.stats, sol.ts[-1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--from-t", type=float, default=50.0)
    args = parser.parse_args()
    model, data, sampler = workload("W2")
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.MeanSquareLoss())
    inits = imf.sample_inits(sampler, jr.key(0), args.start + 1, model)
    y0 = jax.tree.map(lambda a: a[args.start], eqx.filter(inits, eqx.is_array))
    flow = imf.FilippovFlow()
    y, _, _ = solve(flow, objective, dfx.Tsit5(), y0, data, 0.0, args.from_t, 1e-10)
    runs = [
        ("Tsit5 (reference)", flow, dfx.Tsit5(), 1e-12),
        ("Tsit5", flow, dfx.Tsit5(), 1e-10),
        ("Kvaerno5", imf.FilippovFlow(land=False), dfx.Kvaerno5(), 1e-10),
        ("Kvaerno5", imf.FilippovFlow(land=False), dfx.Kvaerno5(), 1e-8),
    ]
    flat = lambda y: np.concatenate([np.ravel(a) for a in jax.tree.leaves(y)])
    print(f"W2 start {args.start}, from t = {args.from_t:g}")
    print("| solver | rtol | accepted | rejected | t at the end | limit vs reference |")
    print("|---|---|---|---|---|---|")
    reference = None
    for name, run_flow, solver, rtol in runs:
        limit, stats, t = solve(
            run_flow, objective, solver, y, data, args.from_t, jnp.inf, rtol
        )
        limit = flat(limit)
        reference = limit if reference is None else reference
        print(
            f"| {name} | {rtol:g} | {int(stats['num_accepted_steps'])} | "
            f"{int(stats['num_rejected_steps'])} | {float(t):.1f} | "
            f"{np.max(np.abs(limit - reference)):.2e} |"
        )


if __name__ == "__main__":
    main()
