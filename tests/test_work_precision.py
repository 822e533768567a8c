"""Work-precision on a tiny case: the files, and errors that follow the settings."""

import csv
from pathlib import Path

import diffrax as dfx
import equinox as eqx
import jax.numpy as jnp
import numpy as np
import pytest

import implicit_flow as imf
from implicit_flow._work_precision import work_precision, write_work_precision


EXPLICIT_ADAPTIVE = ("Bosh3", "Tsit5", "Dopri5", "Dopri8")


@pytest.fixture(scope="module")
def points():
    # Theorem 3 of Vardi & Shamir (gamma = 2): from w = 0 and one small positive start
    # the flow crosses the kink <x3, w> = 0; the reference is the exact flow.
    data = imf.Dataset(
        [[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, 2.0, 2.0]], [16.0, 18.0, 0.0]
    )
    inits = eqx.filter_vmap(imf.ReLUNeuron)(
        jnp.array([[0.0, 0.0, 0.0], [0.05, 0.1, 0.02]])
    )
    return work_precision(
        imf.ReLUNeuron(np.zeros(3)),
        data,
        inits,
        adaptive=[getattr(dfx, name)() for name in EXPLICIT_ADAPTIVE],
        fixed=[dfx.Euler()],
        rtols=(1e-4, 1e-6, 1e-8),
        step_fractions=(1 / 4, 1 / 16),
    )


def test_errors_fall_as_tolerances_tighten_and_all_runs_converge(points):
    assert {p.method for p in points} == {*EXPLICIT_ADAPTIVE, "Euler", "GD"}
    assert all(p.statuses == "converged=2" for p in points)
    for method in EXPLICIT_ADAPTIVE:
        mine = [p for p in points if p.method == method]
        assert [p.value for p in mine] == [1e-4, 1e-6, 1e-8]
        errors = [p.error_max for p in mine]
        assert errors[0] > errors[1] > errors[2]
        assert errors[2] < 1e-6
        assert np.all(np.diff([p.vf_evals for p in mine]) > 0)
    # First order: a step 4 times smaller, an error about 4 times smaller.
    for method in ("Euler", "GD"):
        big, small = (p.error_median for p in points if p.method == method)
        assert 2.5 < big / small < 6


def test_euler_with_step_dt_is_gd_with_learning_rate_dt(points):
    euler = [p for p in points if p.method == "Euler"]
    gd = [p for p in points if p.method == "GD"]
    for e, g in zip(euler, gd, strict=True):
        assert e.value == g.value
        assert e.steps == g.steps
        np.testing.assert_allclose(e.error_median, g.error_median, rtol=1e-8)


def test_writes_the_csv_markdown_and_png(points, tmp_path):
    paths = write_work_precision(points, str(tmp_path))
    with open(paths["csv"]) as file:
        rows = list(csv.DictReader(file))
    assert len(rows) == len(points)
    assert float(rows[0]["error_median"]) == points[0].error_median
    table = Path(paths["md"]).read_text().splitlines()
    assert len(table) == 2 + len(points) and table[0].startswith("| method |")
    assert Path(paths["png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
