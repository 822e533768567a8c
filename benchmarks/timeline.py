"""When the members of one W2 ensemble call finish: compile, 99 %, main pass, retry.

    python benchmarks/timeline.py                 # 1024 W2 starts, the issue's recipe

One `solve_ensemble` call as in `ensemble.py --workload W2 --filippov --engines
pool+tail --retry-kinks 4` (first call, compile included), with the pool's progress
callback recording the wall time of every report: the first finished member bounds
the compile from above, and the retry pass (the members that stalled) shows as
reports after all `num` members of the first pass are in.
"""

import argparse
import time

import jax


jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402
from ensemble import ensemble_kwargs, tail_fields, W2_TAIL, workload  # noqa: E402

import implicit_flow as imf  # noqa: E402
import implicit_flow._ensemble as ensemble_module  # noqa: E402
from implicit_flow.cli import cpu_cores  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=1024)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=8000)
    parser.add_argument("--tail", default=W2_TAIL)
    parser.add_argument("--retry-kinks", type=int, default=4)
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", cpu_cores())
    model, data, sampler = workload("W2")
    reports = []
    start = time.perf_counter()

    def record(finished, converged):
        reports.append((time.perf_counter() - start, int(finished), int(converged)))

    ensemble_module.report_progress = record  # the pool's host callback
    result = jax.block_until_ready(
        imf.solve_ensemble(
            model,
            data,
            sampler,
            **ensemble_kwargs(
                args.num,
                imf.LanePool(lanes=args.lanes),
                imf.FilippovFlow(),
                imf.TailJump(**tail_fields(args.tail)),
                args.retry_kinks,
                max_steps=args.max_steps,
            ),
            progress=True,
        )
    )
    total = time.perf_counter() - start
    times, finished, converged = np.array(reports).T
    done, good = np.cumsum(finished), np.cumsum(converged)
    first_pass = np.searchsorted(done, args.num)
    print(f"W2, {args.num} starts, {jax.device_count()} devices x {args.lanes} lanes")
    print("| event | wall s | converged so far |")
    print("|---|---|---|")
    rows = [("first member finished", np.searchsorted(done, 1))]
    rows += [
        (f"{q} finished", np.searchsorted(done, q))
        for q in (args.num // 2, -(-args.num * 99 // 100))
    ]
    rows += [("first pass over", first_pass)]
    for name, i in rows:
        print(f"| {name} | {times[i]:.1f} | {int(good[i])} |")
    print(
        f"| call returned (retry included) | {total:.1f} | "
        f"{int(np.sum(imf.status_names(result.status) == 'converged'))} |"
    )
    print(f"retry pass: {total - times[first_pass]:.1f} s after the first pass")


if __name__ == "__main__":
    main()
