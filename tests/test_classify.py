"""classify: limit points against closed forms (curvatures, zero-loss dimensions)."""

import equinox as eqx
import jax
import jax.random as jr
import numpy as np
import pytest

import implicit_flow as imf
from implicit_flow._classify import (
    classify,
    classify_ensemble,
    count_kinds,
    kind_names,
)


def _kind(c) -> str:
    return str(kind_names(c.kind))


def _normal(seed: int, *shape: int) -> np.ndarray:
    """Standard normals of `shape` from `jr.key(seed)`. One draw of a fixed size, so
    every test reuses one compiled sampler; the set-up algebra is numpy."""
    size = int(np.prod(shape))
    assert size <= 64
    return np.asarray(jr.normal(jr.key(seed), (64,)))[:size].reshape(shape)


def _relu(z):
    return np.maximum(z, 0.0)


SEED = 40  # the realizable single neuron


# --- saddles ---------------------------------------------------------------------


def test_planted_relu_saddle_has_the_closed_form_curvature():
    # One hidden neuron with v = 0 and labels orthogonal to its activations
    # sigma(Xw): grad_w L = v(...) = 0 and dL/dv = -y . sigma(Xw) = 0. On its piece
    # (no kinks) the Hessian in (w, v) is [[0, -g], [-g^T, c]] with
    # g = sum_{active} y_i x_i and c = |sigma(Xw)|^2, whose smallest eigenvalue is
    # (c - sqrt(c^2 + 4 |g|^2)) / 2 < 0: a saddle, although the gradient is zero.
    x, w, y = _normal(0, 6, 4), _normal(1, 4), _normal(2, 6)
    act = _relu(x @ w)
    y = y - (y @ act) / (act @ act) * act
    g = ((x @ w > 0) * y) @ x
    c = act @ act
    expected = (c - np.sqrt(c**2 + 4 * g @ g)) / 2

    out = classify(imf.TwoLayerReLU(w[None, :], np.zeros(1)), imf.Dataset(x, y))
    assert _kind(out) == "saddle"
    assert float(out.speed) < 1e-12
    assert int(out.on_kink) == 0
    assert int(out.multiplicity) == -1
    np.testing.assert_allclose(out.min_curvature, expected, rtol=1e-10)
    np.testing.assert_allclose(out.loss, 0.5 * y @ y, rtol=1e-12)


@pytest.mark.parametrize("grad_at_zero", [0.0, 1.0])
def test_relu_net_at_zero_is_a_saddle_for_any_grad_at_zero(grad_at_zero):
    # At theta = 0 every pre-activation is on its kink and v = 0, so the gradient is
    # 0 for every sigma'(0). No direction on the piece (w fixed at 0 for n >= d)
    # curves down: the piece Hessian there is 0. The escape moves w_j off the
    # kinks and v_j together: L changes by b * sum_i r_i relu(x_i . delta) at second
    # order, nonzero for delta = x_k. So it is a saddle, found by the zero-output
    # probe and not by the curvature.
    x, y = _normal(3, 5, 3), _normal(4, 5)
    model = imf.TwoLayerReLU(np.zeros((2, 3)), np.zeros(2), grad_at_zero=grad_at_zero)
    out = classify(model, imf.Dataset(x, y))
    assert _kind(out) == "saddle"
    assert float(out.speed) == 0.0
    assert int(out.on_kink) == 5 * 2
    assert int(out.degenerate_kinks) == 5 * 2
    assert float(out.min_curvature) == 0.0


def test_deep_linear_at_zero_is_a_saddle_with_curvature_minus_norm_xty():
    # f = w2 . (W1 x): at 0 the Hessian of 1/2 |y - f|^2 has only the blocks
    # d^2 L / dW1[k] dw2[k] = -X^T y, so its spectrum is {+-|X^T y|} (h times) and 0.
    x, y = _normal(5, 4, 3), _normal(6, 4)
    model = imf.DeepLinear([np.zeros((2, 3)), np.zeros((1, 2))])
    out = classify(model, imf.Dataset(x, y))
    assert _kind(out) == "saddle"
    np.testing.assert_allclose(out.min_curvature, -np.linalg.norm(x.T @ y), rtol=1e-12)


def test_concave_kink_is_a_saddle_and_convex_kink_is_not():
    # Single neuron w = (1, 0); x1 = (0, 1) sits on its kink (z1 = 0). Points 2 and 3
    # (z = 1) have residuals chosen so that the sigma'(0) = 1 gradient
    # r1 x1 + r2 x2 + r3 x3 vanishes. Tangent space {delta_2 = 0}: piece Hessian
    # x2 x2^T + x3 x3^T gives curvature 2 there.
    # Concave (y1 = 1 > f = 0, r1 = -1): moving z1 below 0 drops point 1 from the
    # gradient, leaving r2 x2 + r3 x3 = (0, 1), so L falls at rate 1 along -x1.
    # Convex (y1 = -1, r1 = +1): the positive side is the all-active convex quadratic
    # (minimized here) and the negative side rises at rate 1: a local minimum.
    x = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, -1.0]])
    model = imf.ReLUNeuron([1.0, 0.0])
    for y1, r2, expected in ((1.0, 0.5, "saddle"), (-1.0, -0.5, "stationary")):
        data = imf.Dataset(x, [y1, 1.0 - r2, 1.0 + r2])
        out = classify(model, data)
        assert _kind(out) == expected
        assert float(out.speed) == 0.0
        assert int(out.on_kink) == 1
        assert int(out.tangent_dim) == 1
        assert int(out.concave_kinks) == (expected == "saddle")
        np.testing.assert_allclose(out.min_curvature, 2.0, rtol=1e-12)
        # The minimal-norm subgradient is 0 too (slope 1 on the kink): the
        # Filippov flow stops here as well, and the verdict is the same.
        assert _kind(classify(model, data, flow=imf.FilippovFlow())) == expected


def test_all_dead_net_is_stationary_not_a_saddle():
    # Every pre-activation negative: f = 0 on a neighborhood, so L = |y|^2 / 2 is
    # constant there. No descent direction at any order: a (non-strict) local
    # minimum with positive loss, i.e. "stationary", with every neuron dead.
    x = np.abs(_normal(7, 5, 3))
    hidden = -np.abs(_normal(8, 4, 3))
    y = _normal(9, 5)
    model = imf.TwoLayerReLU(hidden, _normal(10, 4), -np.ones(4))
    out = classify(model, imf.Dataset(x, y))
    assert _kind(out) == "stationary"
    assert bool(np.all(out.dead)) and not bool(np.any(out.pattern))
    assert out.pattern.shape == (5, 4) and out.dead.shape == (4,)
    assert int(out.on_kink) == 0
    assert float(out.min_curvature) == 0.0
    np.testing.assert_allclose(out.loss, 0.5 * y @ y, rtol=1e-12)


# --- zero-loss points and their multiplicity -------------------------------------


def test_linear_predictor_multiplicity_is_d_minus_n():
    x, y = _normal(11, 3, 7), _normal(12, 3)
    data = imf.Dataset(x, y)
    # any zero-loss point: the pinv solution plus a null-space component
    pinv = np.linalg.pinv(x)
    w = pinv @ y + (np.eye(7) - pinv @ x) @ _normal(13, 7)
    out = classify(imf.LinearPredictor(w), data)
    assert _kind(out) == "global_minimum"
    assert int(out.multiplicity) == 7 - 3
    assert out.pattern is None and out.dead is None
    with_bias = classify(imf.LinearPredictor(w, 0.0), data)
    assert int(with_bias.multiplicity) == 7 + 1 - 3


def test_kink_at_zero_loss_is_free_for_relu_and_an_equation_for_leaky():
    # Exact zero-loss point with a zero-label point exactly on its kink. ReLU: its
    # negative side keeps zero loss, so only the positive-label equations count:
    # d - #(y > 0). Leaky ReLU: sigma(z) = 0 forces z = 0, all n equations count.
    d = 5
    x = _normal(14, 3, d)
    z = np.array([1.0, 2.0, 0.0])  # point 3 on its kink
    w = _normal(15, d)
    w = w - np.linalg.pinv(x) @ (x @ w - z)
    data = imf.Dataset(x, _relu(z))
    for slope, free in ((0.0, d - 2), (0.1, d - 3)):
        out = classify(imf.ReLUNeuron(w, negative_slope=slope), data)
        assert _kind(out) == "global_minimum"
        assert int(out.on_kink) == 1
        assert int(out.tangent_dim) == d - 1
        assert int(out.multiplicity) == free


@pytest.fixture(scope="module")
def realizable_neuron():
    """d = 6, n = 4 inputs in general position, signs set so that the teacher w*
    is active on points 0-2 (y > 0) and inactive on point 3 (y = 0). The start is
    near w* but has z_3 = 0.5 > 0, so the flow must bring z_3 down to 0."""
    d = 6
    teacher, x = _normal(SEED, d), _normal(SEED + 1, 4, d)
    x = (np.array([1.0, 1.0, 1.0, -1.0]) * np.sign(x @ teacher))[:, None] * x
    w0 = teacher + 0.3 * _normal(SEED + 2, d)
    w0 = w0 + (0.5 - x[3] @ w0) * x[3] / (x[3] @ x[3])
    return imf.Dataset(x, _relu(x @ teacher)), imf.ReLUNeuron(w0)


def test_single_neuron_zero_loss_multiplicity_is_d_minus_active(realizable_neuron):
    data, start = realizable_neuron
    assert int(np.sum(data.y > 0)) == 3
    res = imf.solve_flow(start, data)
    assert res.status == imf.Status.converged
    out = classify(res.model, data)
    assert _kind(out) == "global_minimum"
    assert float(out.loss) < 1e-15
    # z_3 decays to 0+ (its residual is z_3 itself) and ends on the kink; its
    # inactive side keeps zero loss, so only the 3 positive labels constrain w.
    assert int(out.on_kink) == 1
    assert int(out.multiplicity) == data.dim - 3
    np.testing.assert_array_equal(out.pattern[:3, 0], True)


def test_deep_linear_zero_loss_multiplicity_is_params_minus_n():
    # beta(theta) = (W3 W2 W1)^T; at a zero-loss point with y != 0 the row vector
    # W3 W2 is nonzero, so d beta / d W1 alone is onto R^d and J = X d beta has rank
    # n: the zero-loss set is a manifold of dimension P - n there.
    x, y = _normal(20, 3, 5), _normal(21, 3)
    shapes = ((3, 5), (2, 3), (1, 2))
    weights = [0.7 * _normal(22 + k, *s) for k, s in enumerate(shapes)]
    data = imf.Dataset(x, y)
    res = imf.solve_flow(imf.DeepLinear(weights), data)
    assert res.status == imf.Status.converged
    out = classify(res.model, data)
    assert _kind(out) == "global_minimum"
    assert int(out.multiplicity) == 15 + 6 + 2 - 3


# --- stuck flows, not-stationary points, ensembles -------------------------------


def test_stuck_single_neuron_is_stationary_with_the_closed_form_loss():
    # In a rotated frame: x1 = -e1 (y1 = 2) starts inactive; x2 = e2, x3 = e3 active
    # with positive labels. The flow only moves w in span(e2, e3), so x1 . w = -1
    # forever: the limit fits points 2 and 3, L = y1^2 / 2 = 2. Piece Hessian
    # x2 x2^T + x3 x3^T: curvature 0 along e1, no descent: stationary.
    q, _ = np.linalg.qr(_normal(30, 3, 3))
    x = np.array([[-1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ q.T
    data = imf.Dataset(x, [2.0, 1.5, 0.5])
    res = imf.solve_flow(imf.ReLUNeuron(q @ np.array([1.0, 0.3, 0.4])), data)
    assert res.status == imf.Status.converged
    out = classify(res.model, data)
    assert _kind(out) == "stationary"
    np.testing.assert_allclose(out.loss, 2.0, rtol=1e-10)
    np.testing.assert_array_equal(out.pattern[:, 0], [False, True, True])
    assert abs(float(out.min_curvature)) < 1e-10
    assert int(out.multiplicity) == -1
    # the start, far from stationary
    assert _kind(classify(res.init, data)) == "not_stationary"


def test_ensemble_equals_per_member_classify(realizable_neuron):
    data, start = realizable_neuron
    inits = imf.sample_inits(imf.Gaussian(1.0), jr.key(9), 4, start)
    # member 0 is the realizable start, which converges to zero loss
    inits = eqx.tree_at(lambda m: m.weight, inits, inits.weight.at[0].set(start.weight))
    res = imf.solve_ensemble(start, data, inits, engine=imf.PlainVmap())
    batch = classify_ensemble(res, data)
    assert batch.kind._value.shape == (4,)
    assert batch.pattern.shape == (4, 4, 1)
    exact = ("tangent_dim", "multiplicity", "on_kink", "concave_kinks", "pattern")
    for i in range(4):
        one = classify(jax.tree.map(lambda a: a[i], res.model), data)
        assert str(kind_names(batch.kind)[i]) == _kind(one)
        for field in ("loss", "speed", "min_curvature"):
            np.testing.assert_allclose(
                getattr(batch, field)[i], getattr(one, field), rtol=1e-10, atol=1e-14
            )
        for field in (*exact, "dead"):
            np.testing.assert_array_equal(getattr(batch, field)[i], getattr(one, field))
    counts = count_kinds(batch)
    assert sum(counts.values()) == 4
    assert str(kind_names(batch.kind)[0]) == "global_minimum"
