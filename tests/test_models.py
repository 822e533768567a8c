"""Models: formulas, sigma'(0) as chosen, shape errors, invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import implicit_flow as imf


@pytest.mark.parametrize("grad_at_zero", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("negative_slope", [0.0, 0.1])
def test_relu_derivative_at_zero_is_the_chosen_value(grad_at_zero, negative_slope):
    z = jnp.array([-2.0, 0.0, 3.0])
    grads = jax.vmap(jax.grad(imf.leaky_relu), in_axes=(0, None, None))(
        z, negative_slope, grad_at_zero
    )
    np.testing.assert_array_equal(grads, [negative_slope, grad_at_zero, 1.0])
    np.testing.assert_array_equal(
        imf.leaky_relu(z, negative_slope, grad_at_zero), [-2.0 * negative_slope, 0, 3]
    )


def test_neuron_gradient_at_origin_follows_grad_at_zero():
    # At w = 0 every pre-activation is 0: dL/dw = -sigma'(0) sum_i y_i x_i.
    x = jnp.array([[3.0, -1.0, 0.0], [4.0, 2.0, 0.0]])
    y = jnp.array([16.0, 18.0])
    for s in (0.0, 1.0):
        model = imf.ReLUNeuron(jnp.zeros(3), grad_at_zero=s)
        loss = lambda m: 0.5 * jnp.sum((jax.vmap(m)(x) - y) ** 2)
        grad = jax.grad(loss)(model).weight
        np.testing.assert_allclose(grad, -s * (y @ x), rtol=1e-15)


def test_model_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=4)
    w, b, v = rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=3)
    net = imf.TwoLayerReLU(w, v, b, negative_slope=0.1)
    z = w @ x + b
    np.testing.assert_allclose(net(x), v @ np.maximum(z, 0.1 * z), rtol=1e-14)
    neuron = imf.ReLUNeuron(w[0], b[0])
    np.testing.assert_allclose(neuron(x), max(z[0], 0.0), rtol=1e-14)
    mats = [rng.normal(size=(3, 4)), rng.normal(size=(2, 3)), rng.normal(size=(1, 2))]
    np.testing.assert_allclose(
        imf.DeepLinear(mats)(x), (mats[2] @ mats[1] @ mats[0] @ x)[0], rtol=1e-14
    )
    np.testing.assert_allclose(
        imf.LinearPredictor(w[0], 2.0)(x), w[0] @ x + 2, rtol=1e-14
    )
    np.testing.assert_allclose(
        net.invariants(), np.sum(w**2, axis=1) + b**2 - v**2, rtol=1e-14
    )


def test_bad_model_arguments_are_named():
    with pytest.raises(ValueError, match="output_weight"):
        imf.TwoLayerReLU(np.ones((3, 2)), np.ones(4))
    with pytest.raises(ValueError, match="depth >= 2"):
        imf.DeepLinear([np.ones((1, 3))])
    with pytest.raises(ValueError, match="does not chain"):
        imf.DeepLinear([np.ones((2, 3)), np.ones((1, 3))])
    with pytest.raises(ValueError, match="negative_slope"):
        imf.ReLUNeuron(np.ones(3), negative_slope=-1.0)
    with pytest.raises(ValueError, match="weight must be a vector"):
        imf.ReLUNeuron(np.ones((3, 3)))
