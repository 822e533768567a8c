"""Gradient descent (any optax optimizer) to a stationary point, batched over
initializations and step sizes, and its comparison with the gradient flow."""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import optax
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from ._custom_types import Params, Scalar
from ._data import Dataset
from ._loss import AbstractLoss, SumSquareLoss
from ._modified import ModifiedGradientFlow
from ._objective import Objective, tree_norm
from ._result import FlowResult, Status, status_names
from ._sharpness import hessian_vector_product, sharpness_lanczos, top_eigenpair
from ._solve import solve_flow
from .exact import exact_flow
from .models import ReLUNeuron, TwoLayerReLU


# Plain SGD whose learning rate lives in the optimizer state, so it can be swept.
_SGD = optax.inject_hyperparams(optax.sgd)(learning_rate=1.0)


class GDResult(eqx.Module):
    """Final. GD runs from `n_init` initializations at `n_lr` step sizes.

    Fields (leading axes (n_lr, n_init) unless said): `learning_rates` (n_lr,);
    `init` (n_init,), the starts; `model`, where each run stopped (the limit when
    `status == Status.converged`); `loss`, `grad_norm` ($\\|\\nabla L\\|$) there;
    `t_final` $= k\\eta$, the flow time the k steps stand for; `num_steps` k (one
    gradient evaluation each, plus one at the start); `status` (`converged`,
    `step_limit`, `diverged` or `nonfinite`); `max_sharpness`, the largest
    $\\lambda_{\\max}(\\nabla^2 L)$ seen along the run, or None if not tracked.
    """

    learning_rates: Float[Array, " n_lr"]
    init: eqx.Module
    model: eqx.Module
    loss: Float[Array, "n_lr n_init"]
    grad_norm: Float[Array, "n_lr n_init"]
    t_final: Float[Array, "n_lr n_init"]
    num_steps: Int[Array, "n_lr n_init"]
    status: Status
    max_sharpness: Float[Array, "n_lr n_init"] | None = None


def run_gd(
    model: eqx.Module,
    data: Dataset,
    inits: eqx.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    learning_rates: ArrayLike | None = None,
    gtol: float = 1e-9,
    max_steps: int = 100_000,
    divergence: float = 1e6,
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    sharpness_key: PRNGKeyArray | None = None,
) -> GDResult:
    """Run an optax optimizer from every start at every step size, in one compiled call.

    Each run stops at the first iterate with $\\|\\nabla L\\| <$ `gtol`
    (`converged`), when its loss exceeds `divergence` times its initial loss
    (`diverged`) or is NaN/inf (`nonfinite`), or after `max_steps` (`step_limit`).
    All runs are one `lax.while_loop` under `jax.vmap` over step sizes and starts:
    the batch runs until its slowest member stops.

    Args:
        model: the model structure: its non-trainable parts (static fields, frozen
            leaves) are used for every run.
        data: the dataset.
        inits: the starts: `model`-shaped with a leading n_init axis on every
            trainable leaf, or one unbatched model (n_init = 1). Default: `model`.
        optimizer: an optax optimizer made with `optax.inject_hyperparams`, so its
            `learning_rate` can be set per run (e.g.
            `optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)`). Default:
            plain SGD, $\\theta_{k+1} = \\theta_k - \\eta\\nabla L(\\theta_k)$.
        loss: `SumSquareLoss()` (default) or `MeanSquareLoss()`.
        learning_rates: (n_lr,) step sizes $\\eta$, swept as an array: a new sweep of
            the same length reuses the compiled run. Default: the optimizer's own.
        gtol: the stopping threshold on $\\|\\nabla L\\|_2$.
        max_steps: the step cap (static).
        divergence: the loss bound, as a multiple of the initial loss.
        trainable: which leaves are trained, as in `solve_flow`.
        sharpness_key: if given, also track the largest $\\lambda_{\\max}(\\nabla^2 L)$
            along each run (Lanczos at the start from a vector drawn with this key,
            then one power-iteration step per GD step, warm-started; about doubles
            the cost per step). A lower bound, tight when the top eigenvalue moves
            slowly.

    Returns:
        A `GDResult` with leading axes (n_lr, n_init).

    Raises:
        ValueError: if `inits` does not match `model`, the optimizer has no
            injected `learning_rate`, or the arguments are out of range.
    """
    if optimizer is None and learning_rates is None:
        raise ValueError("plain SGD needs learning_rates")
    optimizer = _SGD if optimizer is None else optimizer
    params, skeleton = eqx.partition(model, trainable)
    starts = _batched_params(params, inits if inits is not None else model, trainable)
    first = jtu.tree_map(lambda leaf: leaf[0], starts)
    state = optimizer.init(first)
    hyperparams = getattr(state, "hyperparams", {})
    if "learning_rate" not in hyperparams or "learning_rate" in getattr(
        state, "hyperparams_states", {}
    ):
        raise ValueError(
            "the optimizer must be made with optax.inject_hyperparams and a numeric "
            "learning_rate, so that its step size can be swept"
        )
    if learning_rates is None:
        learning_rates = hyperparams["learning_rate"][None]
    learning_rates = jnp.asarray(learning_rates, dtype=data.x.dtype)
    if learning_rates.ndim != 1 or learning_rates.size == 0:
        raise ValueError(
            f"learning_rates must be a non-empty vector, got {learning_rates.shape}"
        )
    if not (np.isfinite(gtol) and gtol > 0):
        raise ValueError(f"gtol must be positive and finite, got {gtol}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    if not divergence > 1:
        raise ValueError(f"divergence must exceed 1, got {divergence}")
    return _run_gd(
        Objective(skeleton, loss),
        optimizer,
        starts,
        learning_rates,
        data,
        jnp.asarray(gtol, dtype=data.x.dtype),
        jnp.asarray(divergence, dtype=data.x.dtype),
        max_steps,
        sharpness_key,
    )


def _batched_params(params: Params, inits: eqx.Module, trainable) -> Params:
    """The trainable leaves of `inits` with a leading n_init axis (added if absent)."""
    starts = eqx.filter(inits, trainable)
    if jtu.tree_structure(starts) != jtu.tree_structure(params):
        raise ValueError("inits must have the structure of model")
    pairs = list(zip(jtu.tree_leaves(starts), jtu.tree_leaves(params), strict=True))
    if all(s.shape == p.shape for s, p in pairs):
        return jtu.tree_map(lambda s: jnp.asarray(s)[None], starts)
    sizes = {s.shape[0] for s, p in pairs if s.shape[1:] == p.shape}
    if len(sizes) != 1 or any(s.shape[1:] != p.shape for s, p in pairs):
        raise ValueError(
            "inits must be one model like `model`, or such models stacked along a "
            f"leading axis; got leaf shapes {[s.shape for s, _ in pairs]} for "
            f"{[p.shape for _, p in pairs]}"
        )
    return starts


@eqx.filter_jit
def _run_gd(
    objective: Objective,
    optimizer: optax.GradientTransformation,
    starts: Params,
    learning_rates: Float[Array, " n_lr"],
    data: Dataset,
    gtol: Scalar,
    divergence: Scalar,
    max_steps: int,
    sharpness_key: PRNGKeyArray | None,
) -> GDResult:
    track = sharpness_key is not None

    def run(lr, params):
        value_and_grad = lambda p: jax.value_and_grad(objective)(p, data)
        state = optimizer.init(params)
        lr = lr.astype(state.hyperparams["learning_rate"].dtype)
        state = state._replace(hyperparams={**state.hyperparams, "learning_rate": lr})
        loss0, grad = value_and_grad(params)
        bound = divergence * loss0
        if track:
            top, vector = top_eigenpair(objective, params, data, sharpness_key)
        else:
            top, vector = jnp.zeros_like(loss0), None

        def keep_going(carry):
            k, _, _, loss, grad, _, _ = carry
            norm = tree_norm(grad)
            return (
                (k < max_steps) & (norm >= gtol) & (loss <= bound) & jnp.isfinite(norm)
            )

        def step(carry):
            k, params, state, _, grad, vector, top = carry
            updates, state = optimizer.update(grad, state, params)
            params = optax.apply_updates(params, updates)
            loss, grad = value_and_grad(params)
            if track:
                # One warm-started power step, v <- Hv / |Hv|; record v^T H v.
                hv = hessian_vector_product(objective, params, data, vector)
                rayleigh = sum(
                    jnp.vdot(a, b)
                    for a, b in zip(
                        jtu.tree_leaves(vector), jtu.tree_leaves(hv), strict=True
                    )
                )
                top = jnp.maximum(top, rayleigh)
                scale = tree_norm(hv)  # zero only if v is in the null space: keep v
                vector = jtu.tree_map(
                    lambda h, v: jnp.where(scale > 0, h / scale, v), hv, vector
                )
            return k + 1, params, state, loss, grad, vector, top

        carry = (jnp.asarray(0), params, state, loss0, grad, vector, top)
        k, params, _, loss, grad, _, top = jax.lax.while_loop(keep_going, step, carry)
        norm = tree_norm(grad)
        status = Status.where(
            jnp.isfinite(loss) & jnp.isfinite(norm),
            Status.where(
                loss > bound,
                Status.diverged,
                Status.where(norm < gtol, Status.converged, Status.step_limit),
            ),
            Status.nonfinite,
        )
        return params, loss, norm, k * lr, k, status, top

    per_lr = jax.vmap(run, in_axes=(None, 0))
    params, loss, norm, t_final, k, status, top = jax.vmap(per_lr, in_axes=(0, None))(
        learning_rates, starts
    )
    return GDResult(
        learning_rates=learning_rates,
        init=objective.model(starts),
        model=objective.model(params),
        loss=loss,
        grad_norm=norm,
        t_final=t_final,
        num_steps=k,
        status=status,
        max_sharpness=top if track else None,
    )


class GDFlowComparison(eqx.Module):
    """Final. GD limits at several step sizes against the flow limit, per start.

    Fields: `gd`, the `GDResult` (axes (n_lr, n_init)); `flow`, the flow from each
    start (a batched `FlowResult`, axis n_init); `distance` (n_lr, n_init),
    $\\|\\theta_{GD}(\\eta) - \\theta_{GF}\\|_2$ over all trainable parameters;
    `same_pattern` (n_lr, n_init), whether the GD limit has the flow limit's
    activation pattern (signs of all pre-activations on the data; None for models
    without one); `order` and `constant` (n_init,), $p$ and $C$ of the least-squares
    fit $\\log d = \\log C + p \\log \\eta$ over the converged runs with the same
    pattern and $\\eta \\le$ `fit_max_lr` (NaN with fewer than two); `modified` and
    `modified_distance`, the modified flows (`ModifiedGradientFlow`, axes
    (n_lr, n_init)) and their distances to GD, or None; `sharpness_init`,
    $\\lambda_{\\max}$ at each start, and `sharpness_path`, its maximum along the GD
    run at the smallest step (a stand-in for the flow's path); `max_stable_lr`, the
    largest swept step whose run converged (NaN if none). `edge_ratio_init` and
    `edge_ratio_path` give it in units of $2/\\lambda_{\\max}$.
    """

    gd: GDResult
    flow: FlowResult
    distance: Float[Array, "n_lr n_init"]
    same_pattern: Bool[Array, "n_lr n_init"] | None
    order: Float[Array, " n_init"]
    constant: Float[Array, " n_init"]
    modified: FlowResult | None
    modified_distance: Float[Array, "n_lr n_init"] | None
    sharpness_init: Float[Array, " n_init"]
    sharpness_path: Float[Array, " n_init"]
    max_stable_lr: Float[Array, " n_init"]

    @property
    def edge_ratio_init(self) -> Float[Array, " n_init"]:
        """`max_stable_lr` over $2/\\lambda_{\\max}$ at the start."""
        return self.max_stable_lr * self.sharpness_init / 2

    @property
    def edge_ratio_path(self) -> Float[Array, " n_init"]:
        """`max_stable_lr` over $2/\\lambda_{\\max}$, the maximum along the path."""
        return self.max_stable_lr * self.sharpness_path / 2


def compare_gd_flow(
    model: eqx.Module,
    data: Dataset,
    inits: eqx.Module | None = None,
    optimizer: optax.GradientTransformation | None = None,
    *,
    learning_rates: ArrayLike,
    key: PRNGKeyArray,
    loss: AbstractLoss = SumSquareLoss(),
    gtol: float = 1e-9,
    max_steps: int = 100_000,
    exact: bool = True,
    modified: bool = False,
    fit_max_lr: float = np.inf,
) -> GDFlowComparison:
    """GD at each step size against the gradient flow, from each start (host-side).

    Runs `run_gd` (tracking the sharpness with `key`) and the flow from each start:
    `exact_flow` where it covers the model and `exact` is True, else `solve_flow`
    (Tsit5, rtol 1e-12), and with `modified` also the modified flow of each step
    size. All starts go through one compiled call per kind of run.

    Args:
        model, data, inits, optimizer, learning_rates, loss, gtol, max_steps: as for
            `run_gd` (the flow uses the same `loss` and `gtol`).
        key: for the Lanczos start vectors of the sharpness estimates.
        exact: use `exact_flow` where it applies.
        modified: also solve GD's modified flow (`ModifiedGradientFlow`) for each
            step size.
        fit_max_lr: the largest step size used in the fit of the order $p$.

    Returns:
        A `GDFlowComparison`.
    """
    gd = run_gd(
        model,
        data,
        inits,
        optimizer,
        loss=loss,
        learning_rates=learning_rates,
        gtol=gtol,
        max_steps=max_steps,
        sharpness_key=key,
    )
    options = {"loss": loss, "gtol": gtol}
    flow = _flow_limits(gd.init, data, options, exact)
    lrs = np.asarray(gd.learning_rates)
    distance = jnp.linalg.norm(_flat(gd.model, 2) - _flat(flow.model, 1), axis=-1)
    patterns = _pattern(gd.model, data.x), _pattern(flow.model, data.x)
    same = None
    if patterns[0] is not None:
        same = jnp.all(patterns[0] == patterns[1], axis=(-2, -1))
    converged = status_names(gd.status) == "converged"
    fit = converged & (lrs[:, None] <= fit_max_lr) & (np.asarray(distance) > 0)
    if same is not None:
        fit &= np.asarray(same)
    order, constant = np.transpose(
        [
            _fit_power(lrs[m], d[m])
            for m, d in zip(fit.T, np.asarray(distance).T, strict=True)
        ]
    )
    modified_flow, modified_distance = None, None
    if modified:
        modified_flow = _solve_flows(gd.init, data, options, gd.learning_rates)
        modified_distance = jnp.linalg.norm(
            _flat(gd.model, 2) - _flat(modified_flow.model, 2), axis=-1
        )
    stable = np.where(converged, lrs[:, None], -np.inf).max(axis=0)
    return GDFlowComparison(
        gd=gd,
        flow=flow,
        distance=distance,
        same_pattern=same,
        order=jnp.asarray(order),
        constant=jnp.asarray(constant),
        modified=modified_flow,
        modified_distance=modified_distance,
        sharpness_init=_sharpness_each(gd.init, data, loss, key),
        sharpness_path=gd.max_sharpness[np.argmin(lrs)],
        max_stable_lr=jnp.asarray(np.where(np.isfinite(stable), stable, np.nan)),
    )


def _sharpness_each(
    models: eqx.Module, data: Dataset, loss: AbstractLoss, key: PRNGKeyArray
) -> Float[Array, " n"]:
    """$\\lambda_{\\max}$ (Lanczos) at each member of a batched model."""
    params, skeleton = eqx.partition(models, eqx.is_inexact_array)
    objective = Objective(skeleton, loss)
    return jax.vmap(lambda p: sharpness_lanczos(objective, p, data, key))(params)


def _member(model: eqx.Module, i: int) -> eqx.Module:
    """Member i of a model whose array leaves have a leading batch axis."""
    return jtu.tree_map(lambda a: a[i] if eqx.is_array(a) else a, model)


def _flow_limits(
    inits: eqx.Module, data: Dataset, options: dict, exact: bool
) -> FlowResult:
    """The flow from each start (leading n_init axis), exact where `exact_flow` can."""
    if exact:
        num = jtu.tree_leaves(eqx.filter(inits, eqx.is_array))[0].shape[0]
        try:
            results = [
                exact_flow(_member(inits, i), data, loss=options["loss"])
                for i in range(num)
            ]
        except ValueError:  # exact_flow does not cover this model
            pass
        else:
            return jtu.tree_map(lambda *xs: jnp.stack(xs), *results)
    return _solve_flows(inits, data, options)


def _solve_flows(
    inits: eqx.Module,
    data: Dataset,
    options: dict,
    learning_rates: Float[Array, " n_lr"] | None = None,
) -> FlowResult:
    """`solve_flow(init, data, **options)` from each start (leading n_init axis), in
    one call of its compiled solve under `vmap`; with `learning_rates`, the modified
    flow of each instead, with leading axes (n_lr, n_init).

    Not jitted itself, so that `solve_flow` checks the options on concrete values.
    """
    if learning_rates is None:
        return eqx.filter_vmap(lambda init: solve_flow(init, data, **options))(inits)
    solve = lambda lr, init: solve_flow(
        init, data, flow=ModifiedGradientFlow(lr), **options
    )
    per_init = eqx.filter_vmap(solve, in_axes=(None, 0))
    return eqx.filter_vmap(per_init, in_axes=(0, None))(learning_rates, inits)


def _flat(model: eqx.Module, batch_ndim: int) -> Float[Array, "... p"]:
    """The trainable leaves of a model with `batch_ndim` leading batch axes, as one
    vector per member."""
    leaves = jtu.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return jnp.concatenate(
        [leaf.reshape(*leaf.shape[:batch_ndim], -1) for leaf in leaves], axis=-1
    )


def _pattern(
    model: eqx.Module, x: Float[Array, "n_data d"]
) -> Bool[Array, "... n_data m"] | None:
    """Signs of the pre-activations on the data (any leading batch axes), None for
    models without them."""
    if isinstance(model, ReLUNeuron):
        weight, bias = model.weight[..., None, :], model.bias
        bias = None if bias is None else bias[..., None]
    elif isinstance(model, TwoLayerReLU):
        weight, bias = model.hidden_weight, model.hidden_bias
    else:
        return None
    z = jnp.einsum("nd,...md->...nm", x, weight)
    return (z if bias is None else z + bias[..., None, :]) > 0


def _fit_power(lrs: np.ndarray, distances: np.ndarray) -> tuple[float, float]:
    """(p, C) of the least-squares fit $\\log d = \\log C + p \\log \\eta$, or NaNs."""
    if np.unique(lrs).size < 2:
        return np.nan, np.nan
    p, log_c = np.polyfit(np.log(lrs), np.log(distances), 1)
    return p, np.exp(log_c)
