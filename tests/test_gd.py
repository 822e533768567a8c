"""GD against closed forms, its stability edge, and its O(lr) gap to the flow limit."""

import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import implicit_flow as imf
from implicit_flow._gd import compare_gd_flow, run_gd
from implicit_flow._modified import ModifiedGradientFlow
from implicit_flow._sharpness import sharpness


def _names(result):
    return imf.status_names(result.status)


def _linear_problem(seed=0, n=2, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    data = imf.Dataset(x, rng.normal(size=n))
    inits = eqx.filter_vmap(imf.LinearPredictor)(jnp.asarray(rng.normal(size=(3, d))))
    return x, data, imf.LinearPredictor(np.zeros(d)), inits


def test_sgd_matches_a_hand_written_loop_and_t_final_is_k_lr():
    x, data, model, inits = _linear_problem()
    y = np.asarray(data.y)
    lrs = np.array([0.01, 0.05])
    result = run_gd(model, data, inits, learning_rates=lrs, max_steps=7)
    assert result.loss.shape == (2, 3)
    assert np.all(_names(result) == "step_limit")
    for i, lr in enumerate(lrs):
        for j in range(3):
            w = np.asarray(inits.weight[j])
            for _ in range(7):
                w = w - lr * x.T @ (x @ w - y)
            np.testing.assert_allclose(result.model.weight[i, j], w, rtol=1e-12)
    np.testing.assert_allclose(
        result.t_final, 7 * lrs[:, None] * np.ones(3), rtol=1e-15
    )


def test_any_injected_optax_optimizer_runs_as_optax_does():
    x, data, model, inits = _linear_problem(1)
    adam = optax.inject_hyperparams(optax.adam)(learning_rate=0.1)
    result = run_gd(model, data, inits, adam, max_steps=5)
    np.testing.assert_allclose(result.learning_rates, [0.1])
    params = inits.weight[1]
    state = adam.init(params)
    loss = lambda w: 0.5 * jnp.sum((data.x @ w - data.y) ** 2)
    for _ in range(5):
        updates, state = adam.update(jax.grad(loss)(params), state, params)
        params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(result.model.weight[0, 1], params, rtol=1e-12)
    with pytest.raises(ValueError, match="inject_hyperparams"):
        run_gd(model, data, inits, optax.sgd(0.1))


def test_converged_linear_gd_lands_on_the_projection_of_its_start():
    # Theorem 1 of Vardi & Shamir: any convergent GD on linear least squares ends at
    # theta0 + X^+ (y - X theta0), like the flow.
    x, data, model, inits = _linear_problem(2)
    edge = 2 / float(sharpness(model, data))
    result = run_gd(
        model, data, inits, learning_rates=[0.3 * edge, 0.9 * edge], gtol=1e-12
    )
    assert np.all(_names(result) == "converged")
    w0 = np.asarray(inits.weight)
    expected = w0 + (np.linalg.pinv(x) @ (np.asarray(data.y)[:, None] - x @ w0.T)).T
    np.testing.assert_allclose(
        result.model.weight, np.broadcast_to(expected, (2, 3, 4)), atol=1e-11
    )
    assert np.all(np.asarray(result.grad_norm) < 1e-12)


def test_step_sizes_past_two_over_sharpness_never_converge():
    x, data, model, inits = _linear_problem(3)
    lam = np.linalg.eigvalsh(x.T @ x)[-1]
    np.testing.assert_allclose(float(sharpness(model, data)), lam, rtol=1e-12)
    lrs = np.array([1.9, 2.0, 2.01, 2.5, 10.0]) / lam
    result = run_gd(model, data, inits, learning_rates=lrs, max_steps=3000)
    names = _names(result)
    assert np.all(names[0] == "converged")
    assert np.all(np.isin(names[1:], ["diverged", "step_limit"]))
    assert np.all(names[3:] == "diverged")
    # Without a loss bound the iterates overflow instead.
    overflow = run_gd(
        model, data, inits, learning_rates=[10.0 / lam], divergence=np.inf
    )
    assert np.all(_names(overflow) == "nonfinite")


def test_a_new_sweep_of_the_same_length_does_not_recompile():
    traces = []

    class CountingLoss(imf.AbstractLoss):
        def __call__(self, pred, y):
            traces.append(None)  # Python side effect: runs only while tracing
            return 0.5 * jnp.sum((pred - y) ** 2)

    _, data, model, inits = _linear_problem(4)
    run_gd(
        model,
        data,
        inits,
        loss=CountingLoss(),
        learning_rates=[0.01, 0.02],
        max_steps=50,
    )
    first = len(traces)
    assert first > 0
    moved = jax.tree.map(lambda a: a + 1.0, inits)
    result = run_gd(
        model,
        data,
        moved,
        loss=CountingLoss(),
        learning_rates=[0.03, 0.04],
        max_steps=50,
    )
    assert len(traces) == first
    np.testing.assert_allclose(result.learning_rates, [0.03, 0.04])


def _two_layer_problem():
    # Positive data and positive weights keep every pre-activation positive, so the
    # ReLU net is a two-layer linear net on a smooth piece, where GD and GF limits
    # differ at first order in lr.
    rng = np.random.default_rng(0)
    data = imf.Dataset(np.abs(rng.normal(size=(2, 3))) + 0.2, [1.0, 2.0])
    hidden = jnp.asarray(0.5 * np.abs(rng.normal(size=(3, 2, 3))))
    output = jnp.asarray(0.5 * np.abs(rng.normal(size=(3, 2))))
    inits = eqx.filter_vmap(imf.TwoLayerReLU)(hidden, output)
    return data, imf.TwoLayerReLU(hidden[0], output[0]), inits


@pytest.fixture(scope="module")
def two_layer_comparison():
    data, model, inits = _two_layer_problem()
    edge = 2 / float(sharpness(model, data))
    lrs = edge * np.array([1 / 64, 1 / 32, 1 / 16, 1 / 8])
    return compare_gd_flow(
        model, data, inits, learning_rates=lrs, key=jr.key(0), gtol=1e-10, modified=True
    )


def test_gd_limits_approach_the_flow_limit_at_first_order(two_layer_comparison):
    c = two_layer_comparison
    assert np.all(_names(c.gd) == "converged")
    assert np.all(imf.status_names(c.flow.status) == "converged")
    assert np.all(np.asarray(c.same_pattern))
    np.testing.assert_allclose(c.order, 1.0, atol=0.2)
    # The distance itself is far above what the stopping rule (gtol 1e-10) explains.
    assert np.all(np.asarray(c.distance) > 1e-5)


def test_the_modified_flow_tracks_gd_to_second_order(two_layer_comparison):
    c = two_layer_comparison
    assert np.all(imf.status_names(c.modified.status) == "converged")
    ratio = np.asarray(c.modified_distance / c.distance)
    assert np.all(ratio < 0.3)
    assert np.all(ratio[0] < 0.05)  # the smallest step
    lrs = np.asarray(c.gd.learning_rates)
    for j in range(ratio.shape[1]):
        p = np.polyfit(np.log(lrs), np.log(np.asarray(c.modified_distance)[:, j]), 1)[0]
        assert abs(p - 2) < 0.3


def test_stability_edge_and_sharpness_along_the_path(two_layer_comparison):
    c = two_layer_comparison
    data, _, inits = _two_layer_problem()
    members = [jax.tree.map(operator.itemgetter(j), inits) for j in range(3)]
    lam = np.array([float(sharpness(member, data)) for member in members])
    np.testing.assert_allclose(c.sharpness_init, lam, rtol=1e-9)
    # Every swept step converged; the largest is 1/8 of 2 / lambda_max at start 0.
    np.testing.assert_allclose(c.max_stable_lr, c.gd.learning_rates[-1])
    np.testing.assert_allclose(c.edge_ratio_init, lam / lam[0] / 8, rtol=1e-9)
    # Along the path the sharpness only grows here (the weights grow to fit the data),
    # and it ends at the limit's.
    assert np.all(np.asarray(c.sharpness_path) >= np.asarray(c.sharpness_init))
    for j in range(3):
        limit = jax.tree.map(operator.itemgetter((0, j)), c.gd.model)
        at_limit = float(sharpness(limit, data))
        assert float(c.sharpness_path[j]) >= at_limit * (1 - 1e-6)


def test_linear_gd_and_flow_share_their_limit_up_to_the_stability_edge():
    x, data, model, inits = _linear_problem(6)
    lam = np.linalg.eigvalsh(x.T @ x)[-1]
    lrs = np.array([0.5, 1.0, 1.9, 2.2]) / lam
    c = compare_gd_flow(
        model, data, inits, learning_rates=lrs, key=jr.key(0), gtol=1e-12
    )
    assert np.all(_names(c.gd)[:3] == "converged") and np.all(
        _names(c.gd)[3] == "diverged"
    )
    assert np.all(np.asarray(c.distance)[:3] < 1e-11)  # Theorem 1: the same point
    assert c.same_pattern is None  # no activations
    np.testing.assert_allclose(c.max_stable_lr, 1.9 / lam, rtol=1e-12)
    # A constant Hessian: the same edge at the start and along the path.
    np.testing.assert_allclose(c.edge_ratio_init, 0.95, rtol=1e-9)
    np.testing.assert_allclose(c.edge_ratio_path, 0.95, rtol=1e-9)


def test_modified_flow_adds_the_gradient_norm_penalty():
    # For L = |Xw - y|^2 / 2: grad(L + lr/4 |grad L|^2) = g + (lr / 2) X^T X g.
    _, data, model, _ = _linear_problem(5)
    params, skeleton = eqx.partition(model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.SumSquareLoss())
    w = jnp.asarray(np.random.default_rng(0).normal(size=4))
    params = eqx.tree_at(lambda m: m.weight, params, w)
    velocity = ModifiedGradientFlow(0.1).velocity(objective, params, data)
    x, y = np.asarray(data.x), np.asarray(data.y)
    g = x.T @ (x @ w - y)
    np.testing.assert_allclose(velocity.weight, -(g + 0.05 * x.T @ x @ g), rtol=1e-12)
