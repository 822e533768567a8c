"""The `implicit-flow` commands as a user runs them: subprocesses."""

import os
import re
import subprocess
import sys
from pathlib import Path


def _command() -> list[str]:
    script = Path(sys.executable).parent / "implicit-flow"
    return (
        [str(script)]
        if script.exists()
        else [sys.executable, "-m", "implicit_flow.cli"]
    )


def _check_demo(stdout: str) -> None:
    rows = [line for line in stdout.splitlines() if re.search(r"\s\d+\s+[+-]\d", line)]
    assert len(rows) == 18
    # The paper's Theorem 3 (gamma = 2) from w = 0: (5, -1, s), s in (-0.12, -0.10).
    s = float(
        re.search(r"ReLUNeuron \(Thm 3\)\s+0\s+\+5\.0000, -1\.0000, (\S+)", stdout)[1]
    )
    assert -0.12 < s < -0.10
    errors = [
        float(r.split()[-1])
        for r in rows
        if "converged" in r and re.search(r"e-\d+$", r)
    ]
    assert len(errors) >= 8 and max(errors) < 1e-6


def test_demo_limits_match_the_exact_flows_compiled_and_from_the_cache(tmp_path):
    """Twice: the second run loads its programs from the first run's cache."""
    cache = tmp_path / "xla"
    for run in range(2):
        out = subprocess.run(
            [*_command(), "--cache-dir", str(cache), "demo"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            env={**os.environ, "JAX_LOG_COMPILES": str(run)},
        )
        assert out.returncode == 0, out.stderr
        _check_demo(out.stdout)
        assert any(cache.iterdir()), f"run {run} left nothing in {cache}"
    # Where JAX cannot read its cache back (jax-ml/jax#38445: XLA:CPU reads its
    # tuning flags as required CPU features), it recompiles: right results, no
    # speed-up, and its own message says so.
    rejected = any(
        message in out.stderr
        for message in (
            "Machine type used for XLA:CPU compilation",
            "Error reading persistent compilation cache entry",
        )
    )
    assert rejected or "Persistent compilation cache hit" in out.stderr


def test_a_cache_dir_that_cannot_be_made_is_named_in_an_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = subprocess.run(
        [*_command(), "--cache-dir", str(blocker / "xla"), "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 2 and str(blocker / "xla") in out.stderr, out.stderr
    assert "Not a directory" in out.stderr


def test_reproduce_quick_passes_every_row(tmp_path):
    out = subprocess.run(
        [*_command(), "reproduce", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = (tmp_path / "report.md").read_text()
    claims = report.split("| # | section | the paper says | we computed | pass |")[1]
    claims = claims.split("\n\n")[0].splitlines()[2:]  # the claims table, one row each
    marks = [row.rstrip("| ").rsplit("|", 1)[-1].strip() for row in claims]
    assert len(marks) >= 30 and set(marks) == {"pass"}, marks
    for name in (  # (run_reproduce itself is this command's whole body)
        "fig1_theorem3_trajectories.png",
        "fig2a_depth2_trajectories.png",
        "fig2b_u3_vs_eps.png",
        "theorem8_ratio_histogram.png",
        "init_limit_map.png",
    ):
        assert (tmp_path / name).stat().st_size > 10_000, name
        assert name in report
