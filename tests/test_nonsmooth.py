"""FilippovFlow (sliding along ReLU kinks) and TailJump against independent truths."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import scipy.optimize

import implicit_flow as imf
from implicit_flow.exact._piecewise import piecewise_affine_flow


# z_1 = w_1. Above w_1 = 0 the negative label y_1 = -1 pulls w_1 down; below, x_2
# pushes it up while 4 < w_2 < 5: the field points into w_1 = 0 from both sides.
SLIDE_DATA = imf.Dataset([[1.0, 0.0], [1.0, 1.0]], [-1.0, 5.0])
SLIDE_START = np.array([0.5, 4.5])


def _slide_closed_form():
    """Entry time and state: both points active, w' = -(A w - b) until w_1 = 0;
    then w_1 = 0 and w_2' = 5 - w_2 (the slope of x_1 is 5 - w_2 in [0, 1])."""
    a, b = np.array([[2.0, 1.0], [1.0, 1.0]]), np.array([4.0, 5.0])
    star = np.linalg.solve(a, b)
    path = lambda t: star + scipy.linalg.expm(-t * a) @ (SLIDE_START - star)
    t_in = scipy.optimize.brentq(lambda t: path(t)[0], 1e-9, 10.0, xtol=1e-15)
    return t_in, path(t_in)


def test_filippov_flow_slides_like_the_closed_form():
    t_in, w_in = _slide_closed_form()
    assert 4.0 < w_in[1] < 5.0  # so the face is a sliding one
    ts = np.array([0.5 * t_in, t_in + 0.5, t_in + 3.0])
    result = imf.solve_flow(
        imf.ReLUNeuron(SLIDE_START), SLIDE_DATA, flow=imf.FilippovFlow(), ts=ts
    )
    assert result.status == imf.Status.converged
    np.testing.assert_allclose(result.model.weight, [0.0, 5.0], atol=1e-9)
    assert float(result.loss) == pytest.approx(0.5, abs=1e-12)
    w2 = 5.0 - (5.0 - w_in[1]) * np.exp(-(ts[1:] - t_in))  # on the face
    np.testing.assert_allclose(
        result.diagnostics["loss"][1:], 0.5 + 0.5 * (w2 - 5.0) ** 2, rtol=1e-7
    )
    # the plain gradient flow chatters on the kink and never gets there
    plain = imf.solve_flow(imf.ReLUNeuron(SLIDE_START), SLIDE_DATA, max_steps=3000)
    assert plain.status == imf.Status.step_limit


def _sliding_net(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(6, 3))
    teacher_w, teacher_v = rng.normal(size=(2, 3)) / np.sqrt(3), rng.normal(size=2)
    data = imf.Dataset(x, np.maximum(x @ teacher_w.T, 0) @ teacher_v)
    return imf.TwoLayerReLU(
        rng.normal(size=(4, 3)) / np.sqrt(3), rng.normal(size=4) / 2.0
    ), data


def _gd_at(model, data, lr, horizon):
    """Plain GD on the half-sum loss to flow time `horizon` (horizon / lr steps)."""
    loss = lambda p: imf.SumSquareLoss()(jax.vmap(imf.TwoLayerReLU(*p))(data.x), data.y)

    def step(p, _):
        return jax.tree.map(lambda a, g: a - lr * g, p, jax.grad(loss)(p)), None

    start = (model.hidden_weight, model.output_weight)
    final, _ = jax.lax.scan(step, start, None, length=int(round(horizon / lr)))
    return np.concatenate([np.ravel(final[0]), final[1]])


def test_both_layers_sliding_is_the_small_step_limit_of_gd_and_keeps_balancedness():
    # Both layers trained; the plain flow stalls on a kink before t = 4. GD chatters
    # across the kink surfaces, so it is only a first-order reference: its distance
    # to the Filippov flow must shrink like lr (the nonsmooth-notes measured GD and
    # RK4 references agreeing to ~1e-4 at best).
    model, data = _sliding_net(2)
    horizon = 4.0
    plain = imf.solve_flow(model, data, t1=horizon, max_steps=20_000)
    assert plain.status == imf.Status.step_limit
    result = imf.solve_flow(
        model, data, t1=horizon, flow=imf.FilippovFlow(), ts=np.linspace(0, horizon, 9)
    )
    assert result.status == imf.Status.time_limit
    got = np.concatenate(
        [np.ravel(result.model.hidden_weight), result.model.output_weight]
    )
    lrs = np.array([4e-3, 2e-3, 1e-3, 5e-4])
    dist = np.array(
        [np.max(np.abs(got - _gd_at(model, data, lr, horizon))) for lr in lrs]
    )
    assert np.all(np.diff(dist) < 0)
    order = np.polyfit(np.log(lrs), np.log(dist), 1)[0]
    assert 0.8 < order < 1.3
    assert dist[-1] < 2e-4
    inv = np.asarray(result.diagnostics["invariants"])
    assert np.max(np.abs(inv - inv[0])) <= 1e-8 * np.max(np.abs(inv[0]))


def test_tail_jump_keeps_the_limit_and_saves_work():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(5, 4))
    data = imf.Dataset(x, np.maximum(x @ rng.normal(size=4), 0.0))
    deep = imf.DeepLinear([rng.normal(size=(2, 4)), rng.normal(size=(1, 2))])
    cases = [
        (
            imf.ReLUNeuron(rng.normal(size=4)),
            data,
            imf.GradientFlow(),
            1e-11,
        ),  # exact piece
        (deep, imf.Dataset(x, x @ rng.normal(size=4)), imf.GradientFlow(), 1e-10),
        (imf.ReLUNeuron(SLIDE_START), SLIDE_DATA, imf.FilippovFlow(), 1e-11),  # sliding
    ]
    tight = dfx.PIDController(rtol=1e-13, atol=1e-15)
    for model, d, flow, gtol in cases:
        full = imf.solve_flow(model, d, flow=flow, gtol=gtol)
        fast = imf.solve_flow(model, d, flow=flow, gtol=gtol, tail=imf.TailJump())
        if isinstance(model, imf.ReLUNeuron):  # the exact (sliding) flow's limit
            ref = imf.exact_flow(model, d)
        else:  # 10x further into the tail, at tighter tolerances
            ref = imf.solve_flow(
                model, d, flow=flow, gtol=gtol / 10, stepsize_controller=tight
            )
        assert all(r.status == imf.Status.converged for r in (full, fast, ref))
        for a, b in zip(jax.tree.leaves(ref.model), jax.tree.leaves(fast.model)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)
        assert int(fast.num_jumps) >= 1
        assert int(fast.num_vf_evals) < int(full.num_vf_evals)


def test_tail_jump_in_the_lane_pool_matches_the_exact_flow():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 5))
    data = imf.Dataset(x, np.maximum(x @ rng.normal(size=5), 0.0))
    model = imf.ReLUNeuron(np.zeros(5))
    result = imf.solve_ensemble(
        model,
        data,
        imf.Gaussian(1.0),
        key=jax.random.key(0),
        num=12,
        gtol=1e-10,
        tail=imf.TailJump(),
        engine=imf.LanePool(lanes=4),
    )
    assert np.all(np.asarray(result.status == imf.Status.converged))
    assert int(jnp.sum(result.num_jumps)) >= 12
    for i in range(12):
        exact = imf.exact_flow(imf.ReLUNeuron(result.init.weight[i]), data)
        np.testing.assert_allclose(
            result.model.weight[i], exact.model.weight, atol=1e-10
        )


def test_filippov_flow_rejects_other_models():
    data = imf.Dataset(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="FilippovFlow needs"):
        imf.solve_flow(imf.LinearPredictor(np.ones(3)), data, flow=imf.FilippovFlow())


@pytest.mark.parametrize("y3", [1.0, 6.0])
def test_filippov_flow_enters_and_leaves_the_surface_like_the_exact_flow(y3):
    # A third point x_3 = (0, 1) moves the sliding multiplier to a bound in finite
    # time: y3 = 1 leaves to the active side, y3 = 6 to the inactive side.
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    data = imf.Dataset(x, [-1.0, 5.0, y3])
    start = np.array([0.05, 4.6]) if y3 == 1.0 else np.array([0.5, 4.0])
    exact = imf.exact_flow(imf.ReLUNeuron(start), data)
    flow = imf.FilippovFlow()
    result = imf.solve_flow(imf.ReLUNeuron(start), data, flow=flow, gtol=1e-11)
    np.testing.assert_allclose(result.model.weight, exact.model.weight, atol=1e-7)
    pieces = piecewise_affine_flow(
        x, np.asarray(data.y), np.ones(1), start[None], bias=False
    )
    t_in, t_out = pieces.switch_times[:2]
    z1 = lambda t: float(
        imf.solve_flow(imf.ReLUNeuron(start), data, flow=flow, t1=t).model.weight[0]
    )
    eps = 1e-6  # the solver enters within eps of the exact time
    assert z1(t_in - eps) > flow.band and abs(z1(t_in + eps)) <= flow.band
    assert abs(z1(t_out - eps)) <= flow.band
    # z leaves the surface quadratically (dz/dt = 0 at the exit), so the exit is
    # checked on the path after it: z against the exact flow's z.
    for t in (t_out + 1e-3, t_out + 1e-2, t_out + 0.1):
        assert abs(z1(t) - pieces.at(np.array([t]))[0, 0, 0]) <= 2 * flow.band
    assert np.sign(z1(t_out + 0.1)) == (1 if y3 == 1.0 else -1)


def test_fixed_output_nets_that_slide_match_the_exact_filippov_limit():
    checked = 0
    for seed in range(100, 130):
        rng = np.random.default_rng(seed)
        x = rng.normal(size=(5, 3))
        teacher = rng.normal(size=(2, 3))
        v = np.array([1.0, -0.5])
        model = imf.TwoLayerReLU(
            teacher + 0.3 * rng.normal(size=(2, 3)),
            v,
            0.1 * rng.normal(size=2),
            train_output=False,
        )
        data = imf.Dataset(x, np.maximum(x @ teacher.T, 0.0) @ v)
        if imf.exact_flow(model, data, slide=False).status != imf.Status.sliding:
            continue
        exact = imf.exact_flow(model, data)
        assert exact.status == imf.Status.converged
        result = imf.solve_flow(
            model, data, flow=imf.FilippovFlow(), gtol=1e-11, tail=imf.TailJump()
        )
        assert result.status == imf.Status.converged
        np.testing.assert_allclose(
            result.model.hidden_weight, exact.model.hidden_weight, atol=1e-7
        )
        np.testing.assert_allclose(
            result.model.hidden_bias, exact.model.hidden_bias, atol=1e-7
        )
        checked += 1
    assert checked >= 3


def _fixed_output_net(seed, kinks):
    """A random fixed-output net (2 neurons, 11 points in 7-d, a teacher's labels)
    whose exact flow converges, sliding on faces with at most `kinks` entries of
    one neuron: (model, data, exact flow)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(11, 7))
    teacher_w, teacher_v = rng.normal(size=(2, 7)) / np.sqrt(7), rng.normal(size=2)
    y = np.maximum(x @ teacher_w.T, 0.0) @ teacher_v
    v, w0 = rng.normal(size=2) / np.sqrt(2), rng.normal(size=(2, 7)) / np.sqrt(7)
    exact = piecewise_affine_flow(x, y, v, w0, bias=False)
    assert exact.status == "converged"
    assert max(face.sum(axis=0).max() for face in exact.faces) == kinks
    return imf.TwoLayerReLU(w0, v, train_output=False), imf.Dataset(x, y), exact


def test_five_entries_of_one_neuron_slide_at_once_with_more_kink_slots():
    # a fixed-output net whose exact flow slides on a face with five entries of one
    # neuron: 4 slots stall there (3, the default, too: not run, to save its
    # compile); 6 go through the active-set QP and reach the exact limit
    model, data, exact = _fixed_output_net(927326485, 5)
    flow = imf.FilippovFlow(max_kinks=4, kink_neurons=None)
    result = imf.solve_flow(model, data, flow=flow, max_steps=3000)
    assert result.status == imf.Status.step_limit
    flow = imf.FilippovFlow(max_kinks=6, kink_neurons=None)
    result = imf.solve_flow(model, data, flow=flow, max_steps=3000)
    assert result.status == imf.Status.converged
    np.testing.assert_allclose(result.model.hidden_weight, exact.hidden, atol=1e-7)
    assert float(result.loss) == pytest.approx(exact.loss, rel=1e-10)


def test_four_entries_of_one_neuron_slide_in_the_lane_pool_with_four_kink_slots(
    monkeypatch,
):
    # in a pool the lanes' box QPs are solved together (here forced, on 2 rows a
    # lane), a fourth slot's 81 faces only where one exists. Member 0's exact flow
    # slides on a face with four entries of one neuron (3 slots stall there: not
    # run, to save its compile); member 1 is another start on the same data. With
    # max_kinks=4 both reach their exact limits
    import implicit_flow._nonsmooth as nonsmooth

    monkeypatch.setattr(nonsmooth, "_POOLED_ROWS", 1)
    model, data, exact = _fixed_output_net(32, 4)
    v = model.output_weight
    w1 = np.random.default_rng(1).normal(size=(2, 7)) / np.sqrt(7)
    other = piecewise_affine_flow(data.x, data.y, v, w1, bias=False)
    assert other.status == "converged"
    inits = jax.vmap(lambda w: imf.TwoLayerReLU(w, v, train_output=False))(
        jnp.stack([model.hidden_weight, w1])
    )
    kwargs = dict(engine=imf.LanePool(lanes=2), max_steps=3000)
    four = imf.solve_ensemble(
        model, data, inits, flow=imf.FilippovFlow(max_kinks=4), **kwargs
    )
    assert np.all(np.asarray(four.status == imf.Status.converged))
    for i, flow in enumerate([exact, other]):
        np.testing.assert_allclose(four.model.hidden_weight[i], flow.hidden, atol=1e-7)
        assert float(four.loss[i]) == pytest.approx(flow.loss, rel=1e-10)


def test_tail_jump_holds_sliding_entries_at_a_nonzero_loss_limit():
    # SLIDE_DATA's first point (label -1) cannot be fitted: the flow slides on
    # w_1 = 0 to the limit (0, 5) at loss 1/2. A jump that fitted the held row in
    # least squares with that point's residual would land at (-0.5, 5.5) instead.
    flow = imf.FilippovFlow()
    mid = imf.solve_flow(imf.ReLUNeuron(SLIDE_START), SLIDE_DATA, flow=flow, t1=6.0)
    assert 1e-5 < abs(float(mid.model.weight[1]) - 5.0) < 1e-2  # still in the tail
    params, skeleton = eqx.partition(mid.model, eqx.is_inexact_array)
    objective = imf.Objective(skeleton, imf.SumSquareLoss())
    jumped, ok = imf.TailJump(radius=1.0).jump(
        flow, objective, params, SLIDE_DATA, jnp.asarray(1e-11)
    )
    assert bool(ok)
    np.testing.assert_allclose(
        objective.model(jumped).weight, [0.0, 5.0], rtol=0, atol=1e-12
    )


def test_retry_solves_again_the_members_that_ended_at_max_steps():
    # jax.grad's flow chatters on SLIDE_START's kink surface from the closed-form
    # entry time on, and the pool ends it there as stalled, long before max_steps;
    # the retry with FilippovFlow reaches the sliding limit (0, 5). The second start
    # never meets a kink: it converges in the first pass, to (-2, 7) (its flow moves
    # along x_2 = (1, 1) until w . x_2 = 5), and is left as it is.
    inits = jax.vmap(imf.ReLUNeuron)(jnp.array([SLIDE_START, [-3.0, 6.0]]))
    kwargs = dict(gtol=1e-10, max_steps=20_000, engine=imf.LanePool(lanes=2))
    first = imf.solve_ensemble(imf.ReLUNeuron(np.zeros(2)), SLIDE_DATA, inits, **kwargs)
    assert imf.status_names(first.status).tolist() == ["stalled", "converged"]
    t_in, _ = _slide_closed_form()
    assert abs(float(first.t_final[0]) - t_in) < 1e-6
    assert int(first.num_steps[0] + first.num_rejected[0]) <= 3000
    both = imf.solve_ensemble(
        imf.ReLUNeuron(np.zeros(2)),
        SLIDE_DATA,
        inits,
        retry=imf.FilippovFlow(),
        **kwargs,
    )
    assert np.all(np.asarray(both.status == imf.Status.converged))
    np.testing.assert_allclose(
        both.model.weight, [[0.0, 5.0], [-2.0, 7.0]], rtol=0, atol=1e-8
    )
    np.testing.assert_allclose(both.loss, [0.5, 0.5], rtol=1e-8)
    # the work of both passes is counted
    assert int(both.num_steps[0] + both.num_rejected[0]) > int(
        first.num_steps[0] + first.num_rejected[0]
    )
    assert int(both.num_steps[1]) == int(first.num_steps[1])


def test_sliding_flows_in_the_lane_pool_match_the_exact_filippov_limits():
    # FilippovFlow in the lane pool: limits vs exact_flow, and the work that of
    # solve_flow (engines differ in cost, not results: a first stage that the
    # pool got wrong after a crossing would cost rejections, +6 % with a zero one)
    rng = np.random.default_rng(115)  # 4 of the 8 starts slide
    x = rng.normal(size=(5, 3))
    teacher = rng.normal(size=(2, 3))
    v = np.array([1.0, -0.5])
    data = imf.Dataset(x, np.maximum(x @ teacher.T, 0.0) @ v)
    starts = [
        imf.TwoLayerReLU(
            teacher + 0.3 * rng.normal(size=(2, 3)),
            v,
            0.1 * rng.normal(size=2),
            train_output=False,
        )
        for _ in range(8)
    ]
    exact = [imf.exact_flow(model, data) for model in starts]
    slides = [
        imf.exact_flow(model, data, slide=False).status == imf.Status.sliding
        for model in starts
    ]
    assert sum(slides) >= 3 and all(e.status == imf.Status.converged for e in exact)
    result = imf.solve_ensemble(
        starts[0],
        data,
        jax.tree.map(lambda *a: jnp.stack(a), *starts),
        gtol=1e-11,
        flow=imf.FilippovFlow(),
        engine=imf.LanePool(lanes=4, refill_every=3),
    )
    assert np.all(np.asarray(result.status == imf.Status.converged))
    single = [
        imf.solve_flow(m, data, gtol=1e-11, flow=imf.FilippovFlow()) for m in starts
    ]
    rejected = sum(int(one.num_rejected) for one in single)  # 4 277; pool 4 275
    assert abs(int(jnp.sum(result.num_rejected)) - rejected) <= 0.01 * rejected
    for i, e in enumerate(exact):
        np.testing.assert_allclose(
            result.model.hidden_weight[i], e.model.hidden_weight, atol=1e-7
        )
        np.testing.assert_allclose(
            result.model.hidden_bias[i], e.model.hidden_bias, atol=1e-7
        )


def test_a_sliding_entry_stays_on_its_surface_when_that_turns_repelling():
    # W2's start 17 (`benchmarks/ensemble.py`; both layers trained): entry (10, 31)
    # slides from t ~ 3 while v_31 falls through 0 (0.12 -> -0.04 by t = 8), which
    # turns its surface repelling. The minimal-norm rule keeps it there; judged
    # "passing" (the other side no longer pushes back), it left the surface
    # and the path went 2e-3 off by t = 8 (6e-3 at the limit). The reference:
    # no landings, in-band slopes from the QP alone, rtol 1e-12.
    key_x, key_t, key_v = jax.random.split(jax.random.key(2026), 3)
    x = jax.random.normal(key_x, (32, 10))
    teacher = jax.random.normal(key_t, (4, 10)) / np.sqrt(10)
    labels = jnp.maximum(x @ teacher.T, 0.0) @ jax.random.normal(key_v, (4,))
    data = imf.Dataset(x, labels)
    model = imf.TwoLayerReLU(jnp.zeros((64, 10)), jnp.zeros(64))
    scales = (1 / np.sqrt(10), 1 / 8.0)
    sampler = imf.Gaussian(
        eqx.tree_at(lambda m: (m.hidden_weight, m.output_weight), model, scales)
    )
    inits = imf.sample_inits(sampler, jax.random.key(0), 18, model)
    start = jax.tree.map(lambda a: a[17], inits)
    kwargs = dict(loss=imf.MeanSquareLoss(), t1=8.0)
    reference = imf.solve_flow(
        start,
        data,
        flow=imf.FilippovFlow(land=False),
        stepsize_controller=dfx.PIDController(rtol=1e-12, atol=1e-14),
        **kwargs,
    )
    assert (
        float(start.output_weight[31]) > 0.1 > -0.03 > reference.model.output_weight[31]
    )
    got = imf.solve_flow(
        start,
        data,
        flow=imf.FilippovFlow(),
        stepsize_controller=dfx.PIDController(rtol=1e-10, atol=1e-12),
        **kwargs,
    )
    for a, b in zip(
        jax.tree.leaves(got.model), jax.tree.leaves(reference.model), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)  # measured: 8.9e-9
