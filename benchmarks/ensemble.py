"""LanePool against plain `jax.jit(jax.vmap(diffeqsolve))`, side by side in one process.

    python benchmarks/ensemble.py                 # W1 at 4096 inits, both engines
    python benchmarks/ensemble.py --workload W2 --num 64 --max-steps 20000

Reports inits/s, sum and max of steps, the fraction of lane-steps wasted, compile
time (separately) and the ratios. Wall times drift on a shared machine; the step
and lane-step counts do not.
"""

import argparse
import multiprocessing
import os
import time


os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the exact flows' small eigh calls

import jax


jax.config.update("jax_enable_x64", True)

import diffrax as dfx  # noqa: E402
import equinox as eqx  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import jax.random as jr  # noqa: E402
import numpy as np  # noqa: E402

import implicit_flow as imf  # noqa: E402
from implicit_flow.cli import (  # noqa: E402
    cpu_cores,
    default_cache_dir,
    use_compilation_cache,
)
from implicit_flow.exact._piecewise import piecewise_affine_flow  # noqa: E402


def workload(name: str):
    """(model, data, sampler) of the ensemble issue's workloads W1 and W2."""
    key_x, key_t, key_v = jr.split(jr.key(2026), 3)
    if name == "W1":  # single ReLU neuron, d = 10, n = 8, teacher labels
        d, n = 10, 8
        x = jr.normal(key_x, (n, d))
        teacher = jr.normal(key_t, (d,))
        data = imf.Dataset(x, jnp.maximum(x @ teacher, 0.0))
        return imf.ReLUNeuron(jnp.zeros(d)), data, imf.Gaussian(1.0)
    d, m, n, k = 10, 64, 32, 4  # W2: two-layer ReLU, both layers trained
    x = jr.normal(key_x, (n, d))
    teacher_w = jr.normal(key_t, (k, d)) / jnp.sqrt(d)
    teacher_v = jr.normal(key_v, (k,))
    data = imf.Dataset(x, jnp.maximum(x @ teacher_w.T, 0.0) @ teacher_v)
    model = imf.TwoLayerReLU(jnp.zeros((m, d)), jnp.zeros(m))
    scale = imf.TwoLayerReLU(
        jnp.full((m, d), 1 / np.sqrt(d)), jnp.full(m, 1 / np.sqrt(m))
    )
    return (
        model,
        data,
        imf.Gaussian(jax.tree.map(lambda a: a[0, 0] if a.ndim == 2 else a[0], scale)),
    )


def pool_lane_steps(steps: np.ndarray, pool: imf.LanePool, devices: int) -> int:
    """Lane-steps `pool` spends on members with `steps` tried steps each, split as
    `LanePool` splits them over `devices`: a contiguous block each, on its own pool."""
    block = -(-len(steps) // devices)
    return sum(
        _block_lane_steps(steps[i : i + block], pool)
        for i in range(0, len(steps), block)
    )


def _block_lane_steps(steps: np.ndarray, pool: imf.LanePool) -> int:
    """One device's pool replayed: refills every `refill_every` steps, then its
    narrow pool once nothing is pending and few lanes are busy."""
    pending = list(steps[::-1])
    width = min(pool.lanes, len(steps))
    narrow = pool.narrow_width(width)
    refill_every = pool.refill_every
    remaining = np.zeros(width, dtype=np.int64)
    busy = np.zeros_like(remaining, dtype=bool)
    total = 0
    while pending or busy.any():
        for lane in np.flatnonzero(~busy):
            if pending:
                remaining[lane], busy[lane] = pending.pop(), True
        remaining[busy] -= refill_every
        busy &= remaining > 0
        total += refill_every * len(remaining)
        if not pending and narrow < len(remaining) and busy.sum() <= narrow:
            keep = np.argsort(~busy, kind="stable")[:narrow]
            remaining, busy = remaining[keep], busy[keep]
    return total


def flat(models) -> np.ndarray:
    """(num, params) from a batch of models."""
    leaves = jax.tree.leaves(eqx.filter(models, eqx.is_inexact_array))
    return np.concatenate([np.asarray(a).reshape(a.shape[0], -1) for a in leaves], 1)


def exact_limits(x, y, v, starts, mean: bool = False) -> np.ndarray:
    """`piecewise_affine_flow`'s limits (output weights `v` fixed, no bias) from each
    hidden layer of `starts`, (k, m, d) -> (k, m, d), one process per core."""
    jobs = [(x, y, v, w, mean) for w in starts]
    chunk = max(1, len(jobs) // (8 * cpu_cores()))
    with multiprocessing.get_context("spawn").Pool(cpu_cores()) as pool:
        return np.stack(pool.map(_exact_limit, jobs, chunksize=chunk))


def _exact_limit(job) -> np.ndarray:
    x, y, v, w, mean = job
    return piecewise_affine_flow(x, y, v, w, bias=False, mean=mean).hidden


def tail_fields(spec: str) -> dict:
    """'threshold=1e-5,iterations=2' -> {'threshold': 1e-5, 'iterations': 2}."""
    fields = dict(item.split("=") for item in spec.split(",") if item)
    return {k: int(v) if k == "iterations" else float(v) for k, v in fields.items()}


# the W2 recipe (fourth round on): TailJump fields for `--tail`
W2_TAIL = "threshold=3e-6,radius=1e-4,iterations=2,retry=3"


def ensemble_kwargs(
    num,
    engine,
    flow,
    tail,
    retry_kinks,
    rtol=1e-10,
    atol=1e-12,
    gtol=1e-8,
    max_steps=8000,
) -> dict:
    """`solve_ensemble` keywords of these benchmarks (Tsit5, mean loss, key 0); with
    `retry_kinks`, members that stall are solved again with that many kink slots."""
    return dict(
        tail=tail,
        flow=flow,
        key=jr.key(0),
        num=num,
        loss=imf.MeanSquareLoss(),
        solver=dfx.Tsit5(),
        stepsize_controller=dfx.PIDController(rtol=rtol, atol=atol),
        gtol=gtol,
        max_steps=max_steps,
        engine=engine,
        retry=imf.FilippovFlow(max_kinks=retry_kinks, kink_neurons=None)
        if retry_kinks
        else None,
    )


def run(engine, tail, flow, args, model, data, sampler):
    kwargs = ensemble_kwargs(
        args.num,
        engine,
        flow,
        tail,
        args.retry_kinks,
        args.rtol,
        args.atol,
        args.gtol,
        args.max_steps,
    )
    start = time.perf_counter()
    if args.warmup:
        jax.block_until_ready(
            imf.solve_ensemble(model, data, sampler, **{**kwargs, "key": jr.key(99)})
        )
    first = time.perf_counter() - start
    start = time.perf_counter()
    result = jax.block_until_ready(imf.solve_ensemble(model, data, sampler, **kwargs))
    return result, time.perf_counter() - start, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", choices=["W1", "W2"], default="W1")
    parser.add_argument("--num", type=int, default=4096)
    parser.add_argument("--rtol", type=float, default=1e-10)
    parser.add_argument("--atol", type=float, default=1e-12)
    parser.add_argument("--gtol", type=float, default=1e-8)
    parser.add_argument("--max-steps", type=int, default=100_000)
    parser.add_argument("--lanes", type=int, default=256)
    parser.add_argument("--refill-every", type=int, default=16)
    parser.add_argument(
        "--narrow", type=int, default=None, help="LanePool(narrow=...); --lanes: none"
    )
    parser.add_argument(
        "--engines",
        default="pool+tail,pool,vmap",
        help="comma-separated; a '-noland' suffix steps FilippovFlow without landing",
    )
    parser.add_argument("--filippov", action="store_true", help="FilippovFlow (W2)")
    parser.add_argument(
        "--max-kinks", type=int, default=3, help="FilippovFlow(max_kinks=...)"
    )
    parser.add_argument(
        "--no-warmup",
        dest="warmup",
        action="store_false",
        help="time the first call (compile included) instead of a second one",
    )
    parser.add_argument(
        "--check-exact",
        type=int,
        default=256,
        help="members checked against exact_flow (W1)",
    )
    parser.add_argument(
        "--reference",
        type=int,
        default=0,
        help="W2: members re-solved as a reference (FilippovFlow without landing, "
        "rtol 1e-12, atol 1e-14, gtol 1e-9)",
    )
    parser.add_argument("--save", help="write statuses, steps and limits to this .npz")
    parser.add_argument(
        "--retry-kinks",
        type=int,
        default=0,
        help="W2: solve_ensemble(retry=FilippovFlow(max_kinks=K, kink_neurons=None)): members that "
        "stall or end at max_steps are solved again (inside the timed call; their "
        "counts hold both passes)",
    )
    parser.add_argument(
        "--tail",
        default="",
        help="TailJump fields for pool+tail, e.g. 'threshold=1e-5,radius=3e-4'",
    )
    parser.add_argument(
        "--cpu-devices",
        type=int,
        default=cpu_cores(),
        help="CPU devices (default one per core); LanePool runs a pool on each",
    )
    parser.add_argument(
        "--cache-dir",
        default="",
        help="XLA's persistent compilation cache (the CLI's default: "
        f"{default_cache_dir()}); none by default, so first calls compile",
    )
    args = parser.parse_args()
    jax.config.update("jax_num_cpu_devices", args.cpu_devices)
    use_compilation_cache(args.cache_dir)
    model, data, sampler = workload(args.workload)
    print(
        f"{args.workload}: n_init={args.num} Tsit5 rtol={args.rtol} atol={args.atol} "
        f"gtol={args.gtol} float64 backend={jax.default_backend()} devices={jax.device_count()}"
    )
    pool = imf.LanePool(
        lanes=args.lanes, refill_every=args.refill_every, narrow=args.narrow
    )
    engines = {
        "pool+tail": (pool, imf.TailJump(**tail_fields(args.tail))),
        "pool": (pool, None),
        "vmap": (imf.PlainVmap(), None),
    }
    flows = {True: imf.GradientFlow(), False: imf.GradientFlow()}
    if args.filippov:  # "-noland": the same without KinkSolver / LandOnKinks
        flows = {
            land: imf.FilippovFlow(land=land, max_kinks=args.max_kinks)
            for land in (True, False)
        }
    rows, results = [], {}
    for name in args.engines.split(","):
        base = name.removesuffix("-noland")
        result, wall, first = run(
            *engines[base], flows[base == name], args, model, data, sampler
        )
        results[name] = result
        tried = np.asarray(result.num_steps + result.num_rejected)
        lane_steps = (
            pool_lane_steps(tried, pool, jax.device_count())
            if name.startswith("pool")
            else len(tried) * tried.max()
        )
        statuses = dict(
            zip(*np.unique(imf.status_names(result.status), return_counts=True))
        )
        rows.append(
            (
                name,
                wall,
                first - wall if args.warmup else float("nan"),
                tried.sum(),
                tried.max(),
                np.median(tried),
                1 - tried.sum() / lane_steps,
                int(np.sum(result.num_vf_evals)),
                statuses,
            )
        )
    print(
        "| engine | wall s | compile s (approx) | inits/s | sum steps | max steps | median | lane-steps wasted | vf evals | statuses |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, wall, compile_s, total, most, median, waste, evals, statuses in rows:
        print(
            f"| {name} | {wall:.2f} | {compile_s:.1f} | {args.num / wall:.0f} | {total} | {most} | "
            f"{median:.0f} | {waste:.1%} | {evals} | {statuses} |"
        )
    for name, result in results.items():
        if name.startswith("pool+tail"):
            jumps = np.asarray(result.num_jumps)
            print(
                f"{name}: {jumps.sum()} tail jumps tried, members ending by a jump: "
                f"{int(np.sum(np.asarray(result.status == imf.Status.converged) & (jumps > 0)))}"
            )
    base = dict((row[0], row[1]) for row in rows)
    if "vmap" in base:
        for name in base:
            print(
                f"wall-time speed-up of {name} over vmap: {base['vmap'] / base[name]:.1f}x"
            )
    names = list(results)
    apart = set()  # members whose limits differ by > 1e-6 between two engines
    for a, b in zip(names, names[1:]):
        both = np.asarray(
            (results[a].status == imf.Status.converged)
            & (results[b].status == imf.Status.converged)
        )
        diff = np.max(np.abs(flat(results[a].model) - flat(results[b].model)), axis=1)
        diff = np.where(both, diff, 0.0)
        far = np.flatnonzero(diff > 1e-6)
        apart.update(far[np.argsort(-diff[far])][:8].tolist())
        print(
            f"max |limit({a}) - limit({b})| over {int(both.sum())} members converged in "
            f"both: {diff.max():.2e}; {far.size} members differ by > 1e-6"
        )
    if args.save:
        np.savez(
            args.save,
            **{
                f"{name}_{field}": np.asarray(value)
                for name, result in results.items()
                for field, value in [
                    ("status", imf.status_names(result.status)),
                    ("steps", result.num_steps + result.num_rejected),
                    ("loss", result.loss),
                    ("limits", flat(result.model)),
                ]
            },
        )
    if args.workload == "W2" and args.reference:
        check_reference(args, model, data, sampler, results)
    if args.workload == "W1" and args.check_exact:
        k = min(args.check_exact, args.num)
        members = np.concatenate([np.arange(k), sorted(apart)]).astype(int)
        exact = np.stack(
            [
                np.asarray(
                    imf.exact_flow(
                        imf.ReLUNeuron(w), data, loss=imf.MeanSquareLoss()
                    ).model.weight
                )
                for w in np.asarray(results[names[0]].init.weight)[members]
            ]
        )
        errors = {
            name: np.max(
                np.abs(np.asarray(result.model.weight)[members] - exact), axis=1
            )
            for name, result in results.items()
        }
        for name, error in errors.items():
            print(
                f"{name}: error vs exact_flow over the first {k} members: max "
                f"{error[:k].max():.2e}, median {np.median(error[:k]):.2e}"
            )
        for i, member in enumerate(members[k:], start=k):
            print(
                f"member {member} (engines apart): error vs exact_flow "
                + ", ".join(f"{name} {error[i]:.2e}" for name, error in errors.items())
            )


def check_reference(args, model, data, sampler, results):
    """Limits against a tighter solve by the other stepping (no landing)."""
    k = min(args.reference, args.num)
    reference = imf.solve_ensemble(
        model,
        data,
        sampler,
        key=jr.key(0),
        num=k,
        loss=imf.MeanSquareLoss(),
        flow=imf.FilippovFlow(land=False),
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-14),
        gtol=1e-9,
        max_steps=100_000,
        engine=imf.LanePool(lanes=min(-(-k // jax.device_count()), args.lanes)),
    )
    for name, result in results.items():
        both = np.asarray(
            (reference.status == imf.Status.converged)
            & np.asarray(result.status == imf.Status.converged)[:k]
        )
        error = np.max(
            [
                np.max(np.abs(np.asarray(a[:k]) - np.asarray(b)).reshape(k, -1), axis=1)
                for a, b in zip(
                    jax.tree.leaves(result.model), jax.tree.leaves(reference.model)
                )
            ],
            axis=0,
        )[both]
        print(
            f"{name}: limit vs reference over {both.sum()}/{k} members (both converged): "
            f"max {error.max():.2e}, median {np.median(error):.2e}, "
            f"> 1e-6: {int(np.sum(error > 1e-6))}"
        )


if __name__ == "__main__":
    main()
