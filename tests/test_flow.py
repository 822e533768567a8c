"""solve_flow against closed forms, conserved quantities and its status contract."""

import diffrax as dfx
import equinox as eqx
import jax
import numpy as np
import pytest
import scipy.linalg

import implicit_flow as imf


def _underdetermined(seed, n=3, d=6):
    rng = np.random.default_rng(seed)
    return rng, imf.Dataset(rng.normal(size=(n, d)), rng.normal(size=n))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("bias", [False, True])
def test_linear_limit_is_the_projection_of_the_start(seed, bias):
    rng, data = _underdetermined(seed)
    x, y = np.asarray(data.x), np.asarray(data.y)
    w0, b0 = rng.normal(size=6), rng.normal()
    model = imf.LinearPredictor(w0, b0 if bias else None)
    result = imf.solve_flow(model, data)
    assert result.status == imf.Status.converged
    xa = np.column_stack([x, np.ones(3)]) if bias else x
    theta0 = np.append(w0, b0) if bias else w0
    expected = theta0 + np.linalg.pinv(xa) @ (y - xa @ theta0)
    got = (
        np.append(result.model.weight, result.model.bias)
        if bias
        else result.model.weight
    )
    assert np.linalg.norm(got - expected) <= 1e-8 * np.linalg.norm(expected)
    assert float(result.loss) < 1e-18


def test_linear_from_zero_is_the_minimum_norm_solution():
    _, data = _underdetermined(7)
    result = imf.solve_flow(imf.LinearPredictor(np.zeros(6)), data)
    expected = np.linalg.pinv(np.asarray(data.x)) @ np.asarray(data.y)
    assert np.linalg.norm(result.model.weight - expected) <= 1e-8 * np.linalg.norm(
        expected
    )


def test_linear_trajectory_and_mean_loss_time_rescaling():
    # theta(t) = theta* + expm(-t A)(theta0 - theta*), A = X^T X (sum) or X^T X / n.
    rng, data = _underdetermined(3)
    x, y = np.asarray(data.x), np.asarray(data.y)
    w0 = rng.normal(size=6)
    star = w0 + np.linalg.pinv(x) @ (y - x @ w0)
    ts = np.array([0.0, 0.1, 0.5, 2.0])
    loss_at = lambda t, a: (
        0.5 * np.sum((x @ (star + scipy.linalg.expm(-t * a) @ (w0 - star)) - y) ** 2)
    )
    model = imf.LinearPredictor(w0)
    summed = imf.solve_flow(model, data, ts=ts)
    mean = imf.solve_flow(model, data, loss=imf.MeanSquareLoss(), ts=3 * ts)
    expected = [loss_at(t, x.T @ x) for t in ts]
    np.testing.assert_allclose(summed.diagnostics["loss"], expected, rtol=1e-8)
    np.testing.assert_allclose(
        mean.diagnostics["loss"], np.array(expected) / 3, rtol=1e-8
    )
    np.testing.assert_allclose(mean.model.weight, summed.model.weight, atol=1e-9)


def test_two_layer_balancedness_is_conserved_and_loss_decreases():
    rng = np.random.default_rng(1)
    data = imf.Dataset(rng.normal(size=(6, 3)), rng.normal(size=6))
    model = imf.TwoLayerReLU(
        rng.normal(size=(4, 3)), rng.normal(size=4), rng.normal(size=4)
    )
    result = imf.solve_flow(model, data, ts=np.linspace(0, 20, 41), t1=20.0)
    inv = np.asarray(result.diagnostics["invariants"])
    start = np.asarray(model.invariants())
    assert np.max(np.abs(inv - start)) <= 1e-8 * np.max(np.abs(start))
    assert np.all(np.diff(result.diagnostics["loss"]) <= 1e-14)
    assert result.diagnostics["loss"][-1] < 0.5 * result.diagnostics["loss"][0]


def test_deep_linear_conserves_its_invariants_and_fits():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4))
    data = imf.Dataset(x, x @ rng.normal(size=4))
    model = imf.DeepLinear(
        [rng.normal(size=(3, 4)), rng.normal(size=(2, 3)), rng.normal(size=(1, 2))]
    )
    result = imf.solve_flow(model, data)
    assert result.status == imf.Status.converged
    assert float(result.loss) < 1e-16
    drift = np.max(np.abs(result.model.invariants() - model.invariants()))
    assert drift <= 1e-8 * np.max(np.abs(model.invariants()))


def test_relu_grad_at_zero_decides_whether_the_flow_leaves_the_origin():
    # Theorem 3 data, gamma = 1, alpha = 1: sigma'(0) = 0 stays at 0 with loss
    # (16^2 + 18^2) / 2 = 290; sigma'(0) = 1 ends at (5, -1, s), s in (-0.045, -0.035).
    data = imf.Dataset(
        [[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, 1.0, 1.0]], [16.0, 18.0, 0.0]
    )
    stuck = imf.solve_flow(imf.ReLUNeuron(np.zeros(3), grad_at_zero=0.0), data)
    assert stuck.status == imf.Status.converged
    np.testing.assert_array_equal(stuck.model.weight, np.zeros(3))
    assert float(stuck.loss) == 290.0
    moved = imf.solve_flow(imf.ReLUNeuron(np.zeros(3)), data)
    w = np.asarray(moved.model.weight)
    np.testing.assert_allclose(w[:2], [5.0, -1.0], atol=1e-8)
    assert -0.045 < w[2] < -0.035


def test_status_without_exceptions():
    _, data = _underdetermined(0)
    model = imf.LinearPredictor(np.ones(6))
    assert imf.solve_flow(model, data, max_steps=3).status == imf.Status.step_limit
    assert imf.solve_flow(model, data, t1=1e-3).status == imf.Status.time_limit
    bad = imf.solve_flow(imf.LinearPredictor(np.full(6, np.nan)), data, max_steps=50)
    assert bad.status == imf.Status.nonfinite
    assert list(imf.status_names(bad.status).ravel()) == ["nonfinite"]


def test_frozen_leaves_stay_put():
    rng, data = _underdetermined(4)
    model = imf.LinearPredictor(rng.normal(size=6), 0.7)
    everything = jax.tree.map(lambda _: True, model)
    frozen = eqx.tree_at(lambda m: m.bias, everything, False)
    result = imf.solve_flow(model, data, trainable=frozen)
    assert float(result.model.bias) == 0.7
    # with b frozen the limit is the projection of w0 for targets y - b.
    x, y = np.asarray(data.x), np.asarray(data.y) - 0.7
    expected = model.weight + np.linalg.pinv(x) @ (y - x @ model.weight)
    assert np.linalg.norm(result.model.weight - expected) <= 1e-8 * np.linalg.norm(
        expected
    )


def test_second_call_with_same_shapes_does_not_recompile():
    traces = []

    class CountingLoss(imf.SumSquareLoss):
        def __call__(self, pred, y):
            traces.append(1)  # runs only while tracing
            return super().__call__(pred, y)

    rng, data = _underdetermined(5)
    imf.solve_flow(imf.LinearPredictor(rng.normal(size=6)), data, loss=CountingLoss())
    first = len(traces)
    assert first > 0
    _, other = _underdetermined(6)
    imf.solve_flow(
        imf.LinearPredictor(rng.normal(size=6)), other, loss=CountingLoss(), gtol=1e-8
    )
    assert len(traces) == first


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"gtol": 0.0}, "gtol must be positive"),
        ({"gtol": float("nan")}, "gtol must be positive"),
        ({"t1": -1.0}, "t1 must be positive"),
        ({"max_steps": 0}, "max_steps"),
        ({"stepsize_controller": dfx.PIDController(rtol=0.0, atol=1e-9)}, "rtol"),
        ({"ts": [0.0, 2.0, 1.0]}, "non-decreasing"),
    ],
)
def test_bad_arguments_raise_named_errors(kwargs, match):
    _, data = _underdetermined(0)
    with pytest.raises(ValueError, match=match):
        imf.solve_flow(imf.LinearPredictor(np.ones(6)), data, **kwargs)


def test_model_data_dimension_mismatch():
    _, data = _underdetermined(0)
    with pytest.raises(ValueError, match="d = 6"):
        imf.solve_flow(imf.LinearPredictor(np.ones(5)), data)
