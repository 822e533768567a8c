"""solve_ensemble: same limits as one flow at a time, whatever the pool, devices or count."""

import json
import os
import subprocess
import sys
import textwrap

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import implicit_flow as imf


GTOL = 1e-10


def _deep_linear_problem():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    data = imf.Dataset(x, x @ rng.normal(size=4))
    model = imf.DeepLinear([np.zeros((2, 4)), np.zeros((1, 2))])
    return data, model


def _mixed_inits(model, num=7):
    """Scale-1 starts converge fast, scale-1e-3 ones escape the saddle at 0 slowly,
    and one NaN start fails."""
    inits = imf.sample_inits(imf.Gaussian(1.0), jr.key(3), num, model)
    scale = jnp.array([1.0, 1e-3, 1.0, 1e-3, 1.0, 1.0, 1.0])[:num]
    scale = scale.at[4].set(jnp.nan)
    return jax.tree.map(lambda a: a * scale.reshape(-1, *[1] * (a.ndim - 1)), inits)


def test_ensemble_equals_one_flow_at_a_time():
    data, model = _deep_linear_problem()
    inits = _mixed_inits(model)
    result = imf.solve_ensemble(
        model, data, inits, gtol=GTOL, engine=imf.LanePool(lanes=3, refill_every=4)
    )
    names = list(imf.status_names(result.status))
    assert names == ["converged"] * 4 + ["nonfinite"] + ["converged"] * 2
    steps = np.asarray(result.num_steps)
    assert steps[1] > 1.3 * steps[0]  # the small start is slower
    for i in range(7):
        alone = imf.solve_flow(jax.tree.map(lambda a: a[i], inits), data, gtol=GTOL)
        assert imf.status_names(alone.status) == names[i]
        if names[i] == "converged":
            for got, want in zip(result.model.weights, alone.model.weights):
                np.testing.assert_allclose(got[i], want, rtol=0, atol=1e-10)
            assert abs(int(result.num_steps[i]) - int(alone.num_steps)) <= 2


def test_stall_rule_and_a_laxer_retry_engine():
    # a pool whose stall rule cannot be met (t must advance by 1e9 max(1, t) every 8
    # tried steps) ends every running flow as stalled at exactly 8 tried steps; a
    # retry pass in a default pool takes them on from their starts to zero loss,
    # with the balancedness W1 W1^T - W2^T W2 of their starts (a deep linear net's
    # conserved quantity) and the work of both passes
    data, model = _deep_linear_problem()
    inits = _mixed_inits(model)
    harsh = imf.LanePool(lanes=3, refill_every=4, stall_steps=8, stall_advance=1e9)
    first = imf.solve_ensemble(model, data, inits, gtol=GTOL, engine=harsh)
    names = ["stalled"] * 4 + ["nonfinite"] + ["stalled"] * 2
    assert list(imf.status_names(first.status)) == names
    tried = np.asarray(first.num_steps + first.num_rejected)
    assert np.all(np.delete(tried, 4) == 8)
    both = imf.solve_ensemble(
        model,
        data,
        inits,
        gtol=GTOL,
        engine=harsh,
        retry=imf.GradientFlow(),
        retry_engine=imf.LanePool(lanes=4),
    )
    names = ["converged"] * 4 + ["nonfinite"] + ["converged"] * 2
    assert list(imf.status_names(both.status)) == names
    keep = np.array(names) == "converged"
    assert np.all(np.asarray(both.loss)[keep] < 1e-18)
    balance = lambda w: w[0] @ w[0].mT - w[1].mT @ w[1]
    start, end = balance(both.init.weights)[keep], balance(both.model.weights)[keep]
    np.testing.assert_allclose(end, start, rtol=0, atol=1e-8 * np.abs(start).max())
    retried = np.asarray(both.num_steps + both.num_rejected)[keep]
    assert np.all(retried > 8 + 20)
    with pytest.raises(ValueError, match="stall_steps"):
        imf.LanePool(stall_steps=0)
    with pytest.raises(ValueError, match="stall_advance"):
        imf.LanePool(stall_advance=float("nan"))


def test_pool_size_does_not_change_results():
    data, model = _deep_linear_problem()
    inits = _mixed_inits(model)
    runs = [
        imf.solve_ensemble(model, data, inits, gtol=GTOL, engine=engine)
        # (XLA rounds batched matmuls of other widths differently, by CPU too: up to
        # 2.7e-12 after 1000 steps on an AVX2 machine; a lane mixed up is off by > 1e-3)
        for engine in (
            imf.LanePool(lanes=4),
            imf.LanePool(lanes=5, refill_every=3, narrow=4),
            imf.LanePool(),
        )
    ]
    for run in runs[1:]:
        for a, b in zip(runs[0].model.weights, run.model.weights):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-10)


def test_lane_pool_matches_plain_vmap_and_the_exact_limits():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 5))
    data = imf.Dataset(x, np.maximum(x @ rng.normal(size=5), 0.0))
    model = imf.ReLUNeuron(np.zeros(5))
    kwargs = dict(key=jr.key(0), num=12, gtol=GTOL)
    pool = imf.solve_ensemble(
        model, data, imf.Gaussian(1.0), engine=imf.LanePool(lanes=4), **kwargs
    )
    plain = imf.solve_ensemble(
        model, data, imf.Gaussian(1.0), engine=imf.PlainVmap(), **kwargs
    )
    assert np.all(np.asarray(pool.status._value) == np.asarray(plain.status._value))
    np.testing.assert_allclose(pool.model.weight, plain.model.weight, rtol=0, atol=1e-9)
    for i in range(12):
        exact = imf.exact_flow(imf.ReLUNeuron(pool.init.weight[i]), data)
        np.testing.assert_allclose(pool.model.weight[i], exact.model.weight, atol=1e-8)


def test_member_i_does_not_depend_on_the_count():
    model = imf.TwoLayerReLU(np.zeros((3, 2)), np.zeros(3))
    for sampler in (imf.Gaussian(0.5), imf.Sphere(2.0)):
        small = imf.sample_inits(sampler, jr.key(7), 4, model)
        large = imf.sample_inits(sampler, jr.key(7), 4096, model)
        for a, b in zip(jax.tree.leaves(small), jax.tree.leaves(large)):
            np.testing.assert_allclose(a, b[:4], rtol=1e-15, atol=0)
    radii = jnp.linalg.norm(
        jnp.concatenate([a.reshape(4096, -1) for a in jax.tree.leaves(large)], axis=1),
        axis=1,
    )
    np.testing.assert_allclose(radii, 2.0, rtol=1e-14)


def test_per_layer_gaussian_scales_and_plane_grid():
    model = imf.TwoLayerReLU(np.zeros((50, 40)), np.zeros(50))
    scale = eqx.tree_at(lambda m: (m.hidden_weight, m.output_weight), model, (0.1, 3.0))
    scale = eqx.filter(scale, lambda s: isinstance(s, float))
    inits = imf.sample_inits(imf.Gaussian(scale), jr.key(0), 8, model)
    assert float(jnp.std(inits.hidden_weight)) == pytest.approx(0.1, rel=0.03)
    assert float(jnp.std(inits.output_weight)) == pytest.approx(3.0, rel=0.1)
    neuron = imf.ReLUNeuron(np.zeros(2))
    grid = imf.PlaneGrid(
        jnp.zeros(2),
        jnp.array([1.0, 0.0]),
        jnp.array([0.0, 1.0]),
        (-1, 1, 0, 2),
        (3, 5),
    )
    points = imf.sample_inits(grid, jr.key(0), grid.size, neuron).weight
    np.testing.assert_allclose(points[0], [-1, 0])
    np.testing.assert_allclose(points[6], [0, 0.5])
    np.testing.assert_allclose(points[14], [1, 2])


def test_no_recompilation_on_repeated_calls():
    traces = []

    class CountingLoss(imf.SumSquareLoss):
        def __call__(self, pred, y):
            traces.append(1)
            return super().__call__(pred, y)

    data, model = _deep_linear_problem()
    run = lambda key, gtol: imf.solve_ensemble(
        model,
        data,
        imf.Gaussian(1.0),
        key=key,
        num=6,
        gtol=gtol,
        loss=CountingLoss(),
        engine=imf.LanePool(lanes=2),
    )
    run(jr.key(0), 1e-9)
    first = len(traces)
    run(jr.key(1), 1e-10)
    assert len(traces) == first


def test_progress_bar_counts_every_member(capsys):
    data, model = _deep_linear_problem()
    imf.solve_ensemble(
        model,
        data,
        imf.Gaussian(1.0),
        key=jr.key(0),
        num=5,
        progress=True,
        engine=imf.LanePool(lanes=2),
    )
    err = capsys.readouterr().err
    assert "5/5" in err and "converged=5" in err


def test_bad_ensemble_arguments():
    data, model = _deep_linear_problem()
    with pytest.raises(ValueError, match="needs a key"):
        imf.solve_ensemble(model, data, imf.Gaussian(1.0))
    bad = eqx.tree_at(
        lambda m: m.weights, model, (np.zeros((3, 2, 4)), np.zeros((5, 1, 2)))
    )
    with pytest.raises(ValueError, match="member count"):
        imf.solve_ensemble(model, data, bad)
    with pytest.raises(
        ValueError, match="stall_steps must be positive, got 4, 0, 1000"
    ):
        imf.LanePool(lanes=4, refill_every=0)
    with pytest.raises(ValueError, match=r"narrow must be in \[1, lanes\], got 5"):
        imf.LanePool(lanes=4, narrow=5)


MULTI_DEVICE = textwrap.dedent(
    """
    import json, os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.random as jr, numpy as np
    import implicit_flow as imf
    assert len(jax.devices()) == 4
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    data = imf.Dataset(x, x @ rng.normal(size=4))
    model = imf.DeepLinear([np.zeros((2, 4)), np.zeros((1, 2))])
    out = {}
    stacked = imf.sample_inits(imf.Gaussian(1.0), jr.key(1), 10, model)
    for name, devices, inits in (("one", (jax.devices()[0],), imf.Gaussian(1.0)), ("four", tuple(jax.devices()), imf.Gaussian(1.0)), ("four_stacked", tuple(jax.devices()), stacked)):
            res = imf.solve_ensemble(model, data, inits, key=jr.key(1), num=10, gtol=1e-8,
                                     engine=imf.LanePool(lanes=2, devices=devices))
            out[name] = [np.asarray(w).tolist() for w in res.model.weights]
    print(json.dumps(out))
    """
)


def test_four_cpu_devices_equal_one():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        [sys.executable, "-c", MULTI_DEVICE],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    for other in ("four", "four_stacked"):
        for a, b in zip(out["one"], out[other]):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


TWO_PROCESSES = textwrap.dedent(
    """
    import json, sys
    import jax
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=rank)
    jax.config.update("jax_enable_x64", True)
    import jax.random as jr, numpy as np
    import implicit_flow as imf
    assert jax.process_count() == 2
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    data = imf.Dataset(x, x @ rng.normal(size=4))
    model = imf.DeepLinear([np.zeros((2, 4)), np.zeros((1, 2))])
    res = imf.solve_ensemble(model, data, imf.Gaussian(1.0), key=jr.key(1), num=8, gtol=1e-8,
                             engine=imf.LanePool(lanes=4))
    if rank == 0:
        print(json.dumps([np.asarray(w).tolist() for w in res.model.weights]))
    """
)


def test_two_processes_equal_one():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", TWO_PROCESSES, str(rank), str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), (
        outs[0][1][-2000:] + outs[1][1][-2000:]
    )
    two = json.loads(outs[0][0].strip().splitlines()[-1])
    data, model = _deep_linear_problem()
    one = imf.solve_ensemble(
        model,
        data,
        imf.Gaussian(1.0),
        key=jr.key(1),
        num=8,
        gtol=1e-8,
        engine=imf.LanePool(lanes=4),
    )
    for a, b in zip(one.model.weights, two):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


def test_flat_layout_round_trip_keeps_shapes_dtypes_and_leaf_order():
    params = {
        "a": np.arange(6.0).reshape(2, 3),
        "b": np.array([0.5, -1.5, 2.5, 3.5], np.float32),
        "c": np.array(7.0),
    }
    layout = imf.FlatLayout(params)
    flat = layout.ravel(params)
    np.testing.assert_array_equal(flat, [0, 1, 2, 3, 4, 5, 0.5, -1.5, 2.5, 3.5, 7])
    back = layout.unravel(flat)
    for key, leaf in params.items():
        assert back[key].shape == leaf.shape and back[key].dtype == leaf.dtype
        np.testing.assert_array_equal(back[key], leaf)


@pytest.mark.parametrize("flow", [imf.GradientFlow(), imf.FilippovFlow(band=0.05)])
def test_lanes_stepped_as_one_state_take_their_own_steps(flow, monkeypatch):
    # The pool steps an explicit Runge-Kutta solver on all lanes at once, each
    # lane's step length as its control (`LaneTerm`). Each lane's end point, error
    # estimate and solver state (FSAL stage; KinkSolver's pieces) must be those of
    # Diffrax stepping that lane alone, with lanes of different step lengths, and
    # (band 0.05) entries inside the band frozen on their pieces, and the first
    # stages of the lanes whose pieces changed evaluated on those lanes alone
    # (`refresh_first_stages`, here in a pool of 4 lanes).
    import implicit_flow._lanes as lanes_module
    from implicit_flow._ensemble import _Problem, _steps_lanes_at_once
    from implicit_flow._objective import FlatLayout, Objective

    monkeypatch.setattr(lanes_module, "_REFRESH_LANES", 1)

    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 3))
    data = imf.Dataset(x, np.maximum(x @ rng.normal(size=(3, 2)), 0.0).sum(axis=1))
    model = imf.TwoLayerReLU(jnp.zeros((5, 3)), jnp.zeros(5))
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    layout = FlatLayout(params)
    problem = _Problem(
        flow,
        Objective(skeleton, imf.MeanSquareLoss(), layout),
        data,
        dfx.Tsit5(),
        dfx.PIDController(rtol=1e-8, atol=1e-10),
        jnp.asarray(1e-10),
        jnp.asarray(jnp.inf),
        None,
        None,
        100,
    )
    solver, _ = problem.stepping
    assert _steps_lanes_at_once(solver, problem.term)
    inits = imf.sample_inits(imf.Gaussian(1.0), jr.key(0), 4, params)
    lanes = jax.vmap(problem.start)(jnp.arange(4), jax.vmap(layout.ravel)(inits))
    lanes = eqx.tree_at(lambda l: l.tnext, lanes, jnp.array([0.01, 0.03, 0.1, 0.3]))
    if isinstance(flow, imf.FilippovFlow):  # lane 0 starts with 2 entries in the band
        assert np.asarray(lanes.solver_state.pieces.free).any()

    @eqx.filter_jit
    def alone(lanes):
        return jax.vmap(
            lambda l: solver.step(
                problem.term, l.tprev, l.tnext, l.y, data, l.solver_state, l.made_jump
            )
        )(lanes)

    together = eqx.filter_jit(problem.solve_lanes)
    step = eqx.filter_jit(problem.step)
    kinks = isinstance(flow, imf.FilippovFlow)
    stale = 0  # lanes that start a step on other pieces than their last one's
    for _ in range(36):  # the first step evaluates every stage, later ones use FSAL
        y, error, state, result = together(lanes)
        want = alone(lanes)
        for got, expected in zip(
            jax.tree.leaves((y, error, state)),
            jax.tree.leaves((want[0], want[1], want[3])),
            strict=True,
        ):
            # to rounding: stale first stages are evaluated on those lanes alone
            np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-15)
        assert np.all(np.asarray(result._value) == 0)
        lanes = step(lanes, 1000, 1e-3)
        if kinks:
            stale += int(np.sum(~np.asarray(lanes.solver_state.fresh)))
    # 36 tried steps each, some accepted (FSAL), some rejected (retaken); with
    # the band, 2 lanes crossed into or out of it (lane 1 after 32 steps)
    assert np.all(np.asarray(lanes.accepted + lanes.rejected) == 36)
    assert np.asarray(lanes.rejected).max() > 0
    if kinks:
        assert stale >= 2
