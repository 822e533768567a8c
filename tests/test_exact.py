"""solve_flow against the exact piecewise-affine flows (exact_flow)."""

import diffrax as dfx
import numpy as np
import pytest

import implicit_flow as imf


TIGHT = dfx.PIDController(rtol=1e-13, atol=1e-15)


def _flat(model) -> np.ndarray:
    if isinstance(model, imf.TwoLayerReLU):
        return np.ravel(model.hidden_weight)
    bias = [] if model.bias is None else [float(model.bias)]
    return np.append(np.asarray(model.weight), bias)


def _neuron_case(seed: int):
    """Teacher labels; d in {2, 5}; every third start near the teacher."""
    rng = np.random.default_rng(seed)
    d = (2, 5)[seed % 2]
    n = 3 if d == 5 else 4
    x = rng.normal(size=(n, d))
    teacher = rng.normal(size=d)
    near = seed % 3 == 0
    w0 = teacher + 0.1 * rng.normal(size=d) if near else rng.normal(size=d)
    return imf.ReLUNeuron(w0), imf.Dataset(x, np.maximum(x @ teacher, 0.0)), near


def test_single_neuron_matches_the_exact_flow():
    switched = 0
    for seed in range(24):
        model, data, near = _neuron_case(seed)
        exact = imf.exact_flow(model, data)
        assert exact.status == imf.Status.converged, seed
        switched += int(exact.num_steps) > 1
        ode = imf.solve_flow(model, data, gtol=1e-10)
        assert ode.status == imf.Status.converged, seed
        err = np.max(np.abs(_flat(ode.model) - _flat(exact.model)))
        assert err <= 1e-7, (seed, err)
        if near:  # starts near the teacher reach a global minimum
            assert float(exact.loss) < 1e-20, seed
    assert switched >= 5  # the activation pattern changed along the way


def test_theorem3_limits_from_the_ode_and_exact_flow_agree():
    for gamma, (lo, hi) in {
        1: (-0.045, -0.035),
        2: (-0.12, -0.10),
        5: (-0.22, -0.20),
    }.items():
        data = imf.Dataset(
            [[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, gamma, gamma]], [16.0, 18.0, 0.0]
        )
        model = imf.ReLUNeuron(np.zeros(3))
        exact = imf.exact_flow(model, data)
        ode = imf.solve_flow(model, data, gtol=1e-10)
        w = np.asarray(exact.model.weight)
        assert lo < w[2] < hi
        np.testing.assert_allclose(w[:2], [5.0, -1.0], atol=1e-12)
        assert np.max(np.abs(ode.model.weight - w)) <= 1e-8


@pytest.mark.parametrize("bias", [False, True])
def test_fixed_output_net_matches_the_exact_flow(bias):
    checked = 0
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        x = rng.normal(size=(5, 3))
        teacher = rng.normal(size=(2, 3))
        v = np.array([1.0, -0.5])
        y = np.maximum(x @ teacher.T, 0.0) @ v
        model = imf.TwoLayerReLU(
            teacher + 0.3 * rng.normal(size=(2, 3)),
            v,
            0.1 * rng.normal(size=2) if bias else None,
            train_output=False,
        )
        data = imf.Dataset(x, y)
        exact = imf.exact_flow(model, data, slide=False)
        if exact.status != imf.Status.converged:
            continue  # sliding: GradientFlow cannot follow it (FilippovFlow can)
        # the limit error is about gtol / (smallest curvature), which is ~1e-3 here
        ode = imf.solve_flow(model, data, gtol=1e-11, stepsize_controller=TIGHT)
        assert ode.status == imf.Status.converged, seed
        np.testing.assert_array_equal(ode.model.output_weight, v)
        err = np.max(np.abs(_flat(ode.model) - _flat(exact.model)))
        if bias:
            err = max(
                err, np.max(np.abs(ode.model.hidden_bias - exact.model.hidden_bias))
            )
        assert err <= 1e-7, (seed, err)
        checked += 1
    assert checked >= 6


def test_a_case_built_to_slide_is_reported_as_sliding():
    # z_1 = w_1. Above the surface (w_1 > 0) the negative label y_1 = -1 pulls
    # w_1 down at rate 1 + w_1, while x_2 pushes it up at 5 - w_1 - w_2: with
    # 4 < w_2 < 5 the field points into w_1 = 0 from both sides.
    data = imf.Dataset([[1.0, 0.0], [1.0, 1.0]], [-1.0, 5.0])
    model = imf.TwoLayerReLU([[0.5, 4.5]], [1.0], train_output=False)
    exact = imf.exact_flow(model, data, slide=False)
    assert exact.status == imf.Status.sliding
    w = np.asarray(exact.model.hidden_weight)[0]
    assert abs(w[0]) < 1e-12 and 4.0 < w[1] < 5.0
    assert 0.0 < float(exact.t_final) < np.inf


def test_exact_flow_rejects_models_without_a_piecewise_quadratic_loss():
    data = imf.Dataset(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="train_output=True"):
        imf.exact_flow(imf.TwoLayerReLU(np.ones((2, 3)), np.ones(2)), data)
