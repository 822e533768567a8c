"""Sharpness: Lanczos on Hessian-vector products against dense and closed forms."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import implicit_flow as imf
from implicit_flow._sharpness import (
    hessian_vector_product,
    sharpness,
    sharpness_dense,
    sharpness_lanczos,
)


def _objective(model):
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    return imf.Objective(skeleton, imf.SumSquareLoss()), params


@pytest.mark.parametrize("seed", range(3))
def test_lanczos_matches_the_dense_eigenvalue(seed):
    rng = np.random.default_rng(seed)
    data = imf.Dataset(rng.normal(size=(6, 4)), rng.normal(size=6))
    model = imf.TwoLayerReLU(
        rng.normal(size=(3, 4)), rng.normal(size=3), rng.normal(size=3)
    )
    dense = float(sharpness(model, data))
    # 12 Krylov steps for 18 parameters: converged, but not trivially exact.
    lanczos = float(sharpness(model, data, key=jr.key(seed), num_iters=12))
    assert abs(lanczos - dense) <= 1e-6 * abs(dense)
    # Ritz values converge from below.
    assert lanczos <= dense * (1 + 1e-12)


def test_linear_sharpness_is_the_top_eigenvalue_of_xtx_even_when_rank_deficient():
    # Hessian X^T X of rank 2 in 5 dimensions: the Krylov space is exhausted after
    # 3 steps, and Lanczos must restart rather than divide by zero.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 5))
    data = imf.Dataset(x, rng.normal(size=2))
    model = imf.LinearPredictor(rng.normal(size=5))
    expected = np.linalg.eigvalsh(x.T @ x)[-1]
    objective, params = _objective(model)
    dense = sharpness_dense(objective, params, data)
    lanczos = sharpness_lanczos(objective, params, data, jr.key(0), num_iters=5)
    np.testing.assert_allclose([dense, lanczos], expected, rtol=1e-12)


def test_relu_neuron_sharpness_is_that_of_its_active_rows():
    # On the Theorem 3 minimizers (5, -1, s), s <= 0, only x1 and x2 are active and the
    # Hessian is x1 x1^T + x2 x2^T for every s (paper, section 4).
    data = imf.Dataset(
        [[3.0, -1.0, 0.0], [4.0, 2.0, 0.0], [0.0, 2.0, 2.0]], [16.0, 18.0, 0.0]
    )
    x12 = np.asarray(data.x)[:2]
    expected = np.linalg.eigvalsh(x12.T @ x12)[-1]
    ws = jnp.array([[5.0, -1.0, s] for s in (0.0, -0.1, -0.7, -3.0)])
    objective, _ = _objective(imf.ReLUNeuron(ws[0]))

    def both(w):
        params = eqx.filter(imf.ReLUNeuron(w), eqx.is_inexact_array)
        return (
            sharpness_dense(objective, params, data),
            sharpness_lanczos(objective, params, data, jr.key(1), num_iters=3),
        )

    dense, lanczos = jax.jit(jax.vmap(both))(ws)
    np.testing.assert_allclose(dense, expected, rtol=1e-12)
    np.testing.assert_allclose(lanczos, expected, rtol=1e-10)


def test_hessian_vector_product_matches_the_dense_hessian():
    rng = np.random.default_rng(5)
    data = imf.Dataset(rng.normal(size=(4, 3)), rng.normal(size=4))
    model = imf.DeepLinear([rng.normal(size=(2, 3)), rng.normal(size=(1, 2))])
    objective, params = _objective(model)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    hessian = jax.jit(jax.hessian(lambda t: objective(unravel(t), data)))(flat)
    v = rng.normal(size=flat.size)
    hv = hessian_vector_product(objective, params, data, unravel(jnp.asarray(v)))
    np.testing.assert_allclose(
        jax.flatten_util.ravel_pytree(hv)[0], hessian @ v, rtol=1e-12
    )
