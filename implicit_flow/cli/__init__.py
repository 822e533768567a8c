"""The `implicit-flow` command line: a thin front end over the library."""

import argparse
import os
import sys

import jax


def use_every_core() -> None:
    """One CPU device per core, so that `LanePool` runs a pool on each.

    XLA runs one device's computation on one core at a time (a W2 step at 32
    lanes takes the same wall time pinned to one core as on two). Only possible
    before JAX's first operation; later it leaves the devices as they are.
    """
    try:
        jax.config.update("jax_num_cpu_devices", cpu_cores())
    except RuntimeError:  # the backend is already up (main called in-process)
        pass


def use_compilation_cache(path: str) -> None:
    """Keep XLA's compiled programs in `path`, so that a later run loads them.

    Only before JAX's first compile: JAX decides once whether it uses a cache.
    A W2 pool compiles for ~33 s on 2 cores; from the cache it starts in ~7 s
    (tracing and lowering remain). An empty `path` turns the cache off, and a
    cache the user set already (`JAX_COMPILATION_CACHE_DIR`) is left as it is.
    """
    if path and jax.config.jax_compilation_cache_dir is None:
        os.makedirs(path, exist_ok=True)  # OSError here, not a warning per program
        jax.config.update("jax_compilation_cache_dir", path)
        # JAX's default keeps programs that took 1 s; the demo's take up to 0.9 s.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


def default_cache_dir() -> str:
    """`$XDG_CACHE_HOME/implicit_flow/xla`, or `~/.cache/implicit_flow/xla`."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache"
    )
    return os.path.join(root, "implicit_flow", "xla")


def cpu_cores() -> int:
    """The cores this process may run on (all of them where that is unknown)."""
    if hasattr(os, "sched_getaffinity"):  # Linux
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `implicit-flow` console script."""
    # float64 is set once here, at start-up, never inside library code.
    jax.config.update("jax_enable_x64", True)
    use_every_core()
    parser = argparse.ArgumentParser(
        prog="implicit-flow",
        description="Gradient flows to their limit points (implicit-bias research).",
    )
    parser.add_argument(
        "--cache-dir",
        default=default_cache_dir(),
        help="where compiled programs are kept between runs; '' for none "
        "(default: %(default)s)",
    )
    commands = parser.add_subparsers(dest="command")
    demo = commands.add_parser(
        "demo", help="flow every built-in model from a few starts and print a table"
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the starts")
    demo.add_argument(
        "--num-inits", type=int, default=3, help="starts per model (default 3)"
    )
    reproduce = commands.add_parser(
        "reproduce",
        help="reproduce Vardi & Shamir (2021): every check, a report and figures",
    )
    reproduce.add_argument("--quick", action="store_true", help="the 1-minute version")
    reproduce.add_argument("--out", default="reproduction", help="output folder")
    bench = commands.add_parser(
        "bench-solvers",
        help="work-precision table and plot: ODE solvers and GD against the exact limit",
    )
    bench.add_argument("--out-dir", default="bench-solvers", help="where to write")
    bench.add_argument("--num-inits", type=int, default=4, help="starts (default 4)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument(
        "--gamma", type=float, default=2.0, help="Theorem 3 data's gamma"
    )
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args([*(argv or []), "reproduce"])
    try:
        use_compilation_cache(args.cache_dir)  # before JAX's first compile
    except OSError as err:
        parser.error(
            f"--cache-dir {args.cache_dir!r} cannot be used ({err.strerror}); "
            "--cache-dir '' runs without a cache"
        )
    if getattr(args, "num_inits", 1) < 1:
        parser.error(f"--num-inits must be at least 1, got {args.num_inits}")
    if args.command == "reproduce":
        from ..paper import run_reproduce

        return run_reproduce(quick=args.quick, out_dir=args.out)
    if args.command == "bench-solvers":
        from .._work_precision import run_bench_solvers

        return run_bench_solvers(
            out_dir=args.out_dir,
            num_inits=args.num_inits,
            seed=args.seed,
            gamma=args.gamma,
        )
    from ._demo import run_demo

    return run_demo(seed=args.seed, num_inits=args.num_inits)


if __name__ == "__main__":
    sys.exit(main())
