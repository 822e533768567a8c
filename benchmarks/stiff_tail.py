"""How many steps a stiff solver would need for a W2 flow's tail, against Tsit5.

    python benchmarks/stiff_tail.py                  # start 0, tail from t = 50
    python benchmarks/stiff_tail.py --start 28 --from-t 50

The flow of one W2 start is solved to `--from-t` (Tsit5, `FilippovFlow`, rtol 1e-10),
and from there to ||F|| < 1e-8 by `solve_flow` with: Tsit5 at rtol 1e-12 (the
reference), Tsit5 at rtol 1e-10 (what the engine does), and Diffrax's implicit
Kvaerno5 at rtol 1e-10 and 1e-8 on `FilippovFlow(land=False)`'s field (Diffrax's
default Newton iteration at the controller's tolerances, a dense Jacobian and LU
per step: its wall time says nothing about a structured implementation, its step
count does). Reported: accepted and rejected steps, the end time, and the limit's
distance to the reference.
"""

import argparse
import os


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402
from ensemble import workload  # noqa: E402

import implicit_flow as imf  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--from-t", type=float, default=50.0)
    args = parser.parse_args()
    model, data, sampler = workload("W2")
    inits = imf.sample_inits(sampler, jr.key(0), args.start + 1, model)
    solve = lambda model, flow, solver, rtol, **kw: imf.solve_flow(
        model,
        data,
        loss=imf.MeanSquareLoss(),
        solver=solver,
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=rtol * 1e-2),
        gtol=1e-8,
        max_steps=20_000,
        flow=flow,
        **kw,
    )
    flow = imf.FilippovFlow()
    start = jax.tree.map(lambda a: a[args.start], inits)
    middle = solve(start, flow, dfx.Tsit5(), 1e-10, t1=args.from_t).model
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
        result = solve(middle, run_flow, solver, rtol)
        limit = flat(result.model)
        reference = limit if reference is None else reference
        print(
            f"| {name} | {rtol:g} | {int(result.num_steps)} | "
            f"{int(result.num_rejected)} | {args.from_t + float(result.t_final):.1f} | "
            f"{np.max(np.abs(limit - reference)):.2e} |"
        )


if __name__ == "__main__":
    main()
