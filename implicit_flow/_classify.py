"""Limit-point classification: what kind of point did a flow stop at?

Given an end point $\\theta$ of a flow (a `FlowResult.model`), `classify` decides
whether it is a global minimum, a saddle, another stationary point, or not
stationary at all, and measures it: the loss, the smallest curvature on the active
piece, the activation pattern, dead neurons, and, at a zero-loss point, how many
directions of global minima pass through it.

**Pre-activations and kinks.** For `ReLUNeuron` and `TwoLayerReLU` models the
pre-activations are $z_{ij} = w_j^\\top x_i + b_j$ (data point i, hidden neuron j).
An entry is *on its kink* when $|z_{ij}| <$ `kink_tol`; it is then treated as exactly
0. Every other entry has a definite slope $s_{ij} = 1$ ($z_{ij} > 0$) or $\\alpha$
(`negative_slope`, $z_{ij} < 0$).

**The active piece.** The set $M = \\{\\theta : z_{ij}(\\theta) = 0$ for every on-kink
entry$\\}$ near the point, on which every other entry keeps its sign. The
constraints are linear in $\\theta$ (rows $c_{ij} = \\partial z_{ij}/\\partial\\theta$,
the input $[x_i; 1]$ placed in neuron j's block), so $M$ is an affine subspace with
tangent space $T = \\{\\delta : c_{ij}^\\top \\delta = 0\\}$, computed as the null space
of the constraint rows by SVD. On $M$ the loss equals the smooth (polynomial)
*piece loss* $L_s$ in which $\\sigma(z_{ij})$ is replaced by $s_{ij} z_{ij}$, whatever
slope an on-kink entry is given (its term is 0 on $M$). A frozen output layer
(`train_output=False`) adds its coordinates as constraints. For other models there
are no kinks: $T$ is the whole parameter space and $L_s = L$.

**Why the piece Hessian is the right second-order object on a kink.** Moving off
the kink surface changes $L$ at *first* order: along a direction that moves only
$z_{ij}$ by $t$, $L$ changes by $\\beta t + \\gamma\\, \\sigma(t)$ with
$\\gamma = r_i v_j$ ($r_i = \\partial L / \\partial f(x_i)$). If
$\\gamma (1 - \\alpha) > 0$ (a *convex* kink) and the point is Clarke-stationary with
the kink's slope strictly inside $(\\alpha, 1)$, both sides go up at first order, so
second-order terms cannot create descent there; the directions in which first
order is silent (the critical cone) are exactly $T$. Since $M$ is affine, the
constraints contribute no curvature, and the second-order test is the spectrum of
$P^\\top \\nabla^2 L_s P$ with $P$ an orthonormal basis of $T$: `min_curvature`. A
negative value certifies a descent curve $\\theta + tP u$ that stays on the piece.
Two kink situations are tested separately:

- a *concave* kink, $\\gamma (1-\\alpha) < 0$: one side goes down at first order
  (when the kink's constraint row is independent of the other kink rows, so that
  $z_{ij}$ can move alone; checked by its leverage). Such a point is a saddle.
- a zero output weight, $|v_j| <$ `kink_tol` (e.g. $\\theta = 0$): moving $w_j$ by
  $\\delta$ and $v_j$ by $b$ changes $L$ by $b\\,\\varphi_j(\\delta) + O(b^2)$ at
  second order, with $\\varphi_j(\\delta) = \\sum_i r_i\\, [\\sigma(z_{ij} +
  c_{ij}^\\top \\delta) - \\sigma(z_{ij})]$ to first order in $\\delta$ (nonsmooth at
  kinks). If $\\varphi_j \\ne 0$ anywhere, the point is a saddle. It is probed at
  $\\delta = \\pm c_{ij}$ (every i) and $\\pm$ the off-kink gradient of neuron j.

Kink entries with $|\\gamma|(1-\\alpha)\\|c_{ij}\\|$ below `speed_tol` (e.g. every kink
at a zero-loss point) leave the first-order test silent and second order beyond $T$
untested (except through the zero-output probe): they are counted in
`degenerate_kinks`, and a nonzero count at a positive-loss point means "stationary"
is not certified as a local minimum.

**Kinds**, in this order of precedence:

- `not_stationary`: the flow's speed $\\|F(\\theta)\\|$ (`flow.speed`: $\\|\\nabla L\\|$
  for `GradientFlow`, the minimal-norm Clarke subgradient for `FilippovFlow`) is
  not below `speed_tol`, or is not finite. Exactly on a kink, $\\|\\nabla L\\|$
  depends on the $\\sigma'(0)$ convention; pass `flow=FilippovFlow()` to test
  Clarke stationarity itself.
- `global_minimum`: loss $\\le$ `loss_tol`. The losses here are nonnegative, so zero
  loss is a global minimum; a global minimum with positive loss (unrealizable data)
  reports as `stationary`.
- `saddle`: `min_curvature` $<$ -`curvature_tol`, a concave kink, or a zero-output
  neuron with $\\varphi_j \\ne 0$ (all certify a nearby point with lower loss).
- `stationary`: positive loss, a stopped flow, and no descent direction found
  (curvature $\\ge$ -`curvature_tol` on the piece, no concave kink, no revivable
  zero-output neuron): a local minimum, or a saddle of higher order or with
  degenerate kinks. E.g. all-dead nets and stuck single neurons (local minima),
  and the symmetric critical points of two identical ReLU neurons, which are
  *not* saddles: off kinks, the two neurons share one pattern and $L$ depends on
  $v_1 w_1 + v_2 w_2$ only, through a convex piece loss.

**Multiplicity** (zero-loss points only, else -1): the local dimension of the
zero-loss set, $p - \\operatorname{rank} J$, where p counts the trainable (not
frozen) parameters and $J = \\partial f_s(x_i)/\\partial \\theta$ is the Jacobian of
the piece predictions with on-kink entries on their $\\alpha$ side. For ReLU that
side is flat ($\\alpha = 0$), so moving an on-kink entry negative keeps zero loss,
and in general position $\\operatorname{rank} J = \\operatorname{rank} (J P)$, the
Jacobian restricted to the kink-constraint tangent space; for leaky ReLU an on-kink
entry is a genuine equation $z_{ij} = 0$ and is counted. Rank uses the relative
singular-value cutoff `rank_rtol` (a limit point is only within the solver's
accuracy of the zero-loss set, so its Jacobian has tiny rather than zero singular
values in degenerate directions).

**Tolerances** are absolute except `rank_rtol`: `kink_tol` on $|z_{ij}|$ and
$|v_j|$, `speed_tol` on the flow speed and on first-order rates along unit
directions, `curvature_tol` on eigenvalues, `loss_tol` on the loss. They are traced
arrays, so changing them does not recompile.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.flatten_util as jfu
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from ._custom_types import Params, Scalar
from ._data import Dataset
from ._loss import AbstractLoss, SumSquareLoss
from ._nonsmooth import hidden_layer, hidden_rows
from ._objective import AbstractFlow, GradientFlow, Objective
from ._result import FlowResult
from ._solve import check_model_data
from .models import ReLUNeuron, TwoLayerReLU


# A kink row whose leverage in the span of all constraint rows is at least this can
# be moved on its own (it is independent of the other rows).
_INDEPENDENT_LEVERAGE = 1 - 1e-6

KIND_NAMES = ("global_minimum", "saddle", "stationary", "not_stationary")


class LimitKind(eqx.Enumeration):
    """What kind of point a flow ended at; compare with `==`.

    E.g. `c.kind == LimitKind.saddle`; `kind_names` turns kinds into strings.
    """

    global_minimum = "Zero loss (within loss_tol): a global minimum."
    saddle = (
        "A nearby point has lower loss: negative curvature on the active piece, a "
        "concave kink, or a zero-output neuron that can be revived."
    )
    stationary = (
        "Positive loss and no descent direction found on the active piece: a local "
        "minimum or a degenerate saddle."
    )
    not_stationary = "The flow's speed is not below speed_tol: not a limit point."


class Classification(eqx.Module):
    """Final. The classification of one end point (or, batched, of many).

    Fields: `kind` (a `LimitKind`); `loss`; `speed`, the flow's speed there;
    `min_curvature`, the smallest eigenvalue of the piece Hessian on the tangent
    space of the kink constraints (+inf if that space is {0}); `tangent_dim`, its
    dimension; `multiplicity`, the local dimension of the zero-loss set at a
    `global_minimum` (-1 otherwise); `on_kink`, the number of entries with
    $|z_{ij}| <$ `kink_tol`; `concave_kinks` and `degenerate_kinks` (see the module
    docstring); `pattern`, $z_{ij} > 0$ of shape (n, m) for ReLU models, else None;
    `dead`, per hidden neuron, no data point with $z_{ij} \\ge$ `kink_tol` (m,), else
    None. With a leading member axis when from `classify_ensemble`.
    """

    kind: LimitKind
    loss: Scalar
    speed: Scalar
    min_curvature: Scalar
    tangent_dim: Int[Array, ""]
    multiplicity: Int[Array, ""]
    on_kink: Int[Array, ""]
    concave_kinks: Int[Array, ""]
    degenerate_kinks: Int[Array, ""]
    pattern: Bool[Array, "n m"] | None
    dead: Bool[Array, " m"] | None


class _Tolerances(eqx.Module):
    loss_tol: Scalar = eqx.field(converter=jnp.asarray)
    kink_tol: Scalar = eqx.field(converter=jnp.asarray)
    speed_tol: Scalar = eqx.field(converter=jnp.asarray)
    curvature_tol: Scalar = eqx.field(converter=jnp.asarray)
    rank_rtol: Scalar = eqx.field(converter=jnp.asarray)


def classify(
    model: eqx.Module,
    data: Dataset,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    flow: AbstractFlow = GradientFlow(),
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    loss_tol: float = 1e-12,
    kink_tol: float = 1e-7,
    speed_tol: float = 1e-6,
    curvature_tol: float = 1e-6,
    rank_rtol: float = 1e-6,
) -> Classification:
    """Classify one end point of a flow (definitions in the module docstring).

    The Hessian is dense (`jax.hessian` on the flattened trainable parameters),
    so this is for models with up to a few thousand parameters.

    Args:
        model: the point, e.g. `solve_flow(...).model`.
        data: the dataset the loss is taken over.
        loss, flow, trainable: as for `solve_flow`; `flow` gives the speed tested
            against `speed_tol`.
        loss_tol: zero loss means loss <= loss_tol.
        kink_tol: a pre-activation (or output weight) within this of 0 is 0.
        speed_tol: the flow is stopped when its speed is below this; also the
            threshold for first-order descent rates at kinks.
        curvature_tol: a saddle needs an eigenvalue below -curvature_tol.
        rank_rtol: relative singular-value cutoff for ranks.

    Returns:
        A `Classification`.

    Raises:
        ValueError: for data that is not a `Dataset` or a model that rejects it.

    Example:
        >>> import implicit_flow as imf
        >>> data = imf.Dataset([[1.0, 0.0]], [1.0])
        >>> c = imf.classify(imf.LinearPredictor([1.0, 5.0]), data)
        >>> bool(c.kind == imf.LimitKind.global_minimum), int(c.multiplicity)
        (True, 1)
    """
    check_model_data(model, data)
    tols = _Tolerances(loss_tol, kink_tol, speed_tol, curvature_tol, rank_rtol)
    return _classify_jit(model, data, loss, flow, trainable, tols)


def classify_ensemble(
    result: FlowResult,
    data: Dataset,
    *,
    loss: AbstractLoss = SumSquareLoss(),
    flow: AbstractFlow = GradientFlow(),
    trainable: Callable[[object], bool] | Params = eqx.is_inexact_array,
    loss_tol: float = 1e-12,
    kink_tol: float = 1e-7,
    speed_tol: float = 1e-6,
    curvature_tol: float = 1e-6,
    rank_rtol: float = 1e-6,
) -> Classification:
    """`classify` every member of a batched `FlowResult` (from `solve_ensemble`).

    One compiled `vmap` over the leading member axis of `result.model`; arguments
    as for `classify`. Returns a `Classification` whose leaves have that axis.
    """
    if not isinstance(result, FlowResult):
        raise ValueError(f"result must be a FlowResult, got {type(result).__name__}")
    member = jtu.tree_map(lambda a: a[0], result.model)
    check_model_data(member, data)
    tols = _Tolerances(loss_tol, kink_tol, speed_tol, curvature_tol, rank_rtol)
    return _classify_batch(result.model, data, loss, flow, trainable, tols)


def kind_names(kind: LimitKind) -> np.ndarray:
    """Host-side: the kind names (str array of the kind's shape)."""
    lookup = {int(getattr(LimitKind, name)._value): name for name in KIND_NAMES}
    return np.vectorize(lookup.__getitem__, otypes=[str])(np.asarray(kind._value))


def count_kinds(classification: Classification) -> dict[str, int]:
    """Host-side: how many points of each kind, e.g. for an ensemble."""
    names = kind_names(classification.kind)
    return {name: int(np.sum(names == name)) for name in KIND_NAMES}


@eqx.filter_jit
def _classify_jit(model, data, loss, flow, trainable, tols) -> Classification:
    return _classify_one(model, data, loss, flow, trainable, tols)


@eqx.filter_jit
def _classify_batch(models, data, loss, flow, trainable, tols) -> Classification:
    one = lambda model: _classify_one(model, data, loss, flow, trainable, tols)
    return eqx.filter_vmap(one)(models)


def _classify_one(
    model: eqx.Module,
    data: Dataset,
    loss: AbstractLoss,
    flow: AbstractFlow,
    trainable,
    tols: _Tolerances,
) -> Classification:
    params, skeleton = eqx.partition(model, trainable)
    objective = Objective(skeleton, loss)
    flat, unravel = jfu.ravel_pytree(params)
    num_params = flat.size
    loss_value = objective(params, data)
    speed = flow.speed(objective, params, data)
    zero = jnp.zeros((), int)

    relu = isinstance(model, ReLUNeuron | TwoLayerReLU) and model.negative_slope < 1.0
    if relu:
        piece = _ReLUPiece(objective, unravel, flat, data, tols)
        predict = piece.predict
        constraints, num_frozen = piece.constraints()
    else:
        piece = None
        predict = lambda theta: jax.vmap(objective.model(unravel(theta)))(data.x)
        constraints, num_frozen = None, 0

    # The tangent space of the constraint rows C: the eigenvectors of C^T C with
    # eigenvalues at most rank_rtol^2 times the largest (singular values of C at
    # most rank_rtol times the largest). The P x P eigenproblem is much cheaper than
    # an SVD of C, which has a row per (point, neuron).
    if constraints is None:
        basis = jnp.eye(num_params, dtype=flat.dtype)
        tangent = jnp.ones(num_params, bool)
        leverage = None
    else:
        eigenvalues, basis = jnp.linalg.eigh(constraints.T @ constraints)
        cut = tols.rank_rtol**2 * eigenvalues[-1]
        normal = (eigenvalues > cut) & (eigenvalues > 0)
        tangent = ~normal
        # leverage of row k: c_k^T (C^T C)^+ c_k, 1 iff c_k is independent of the rest
        coords = constraints @ basis
        scale = jnp.where(normal, 1.0 / jnp.where(normal, eigenvalues, 1.0), 0.0)
        leverage = jnp.sum(coords**2 * scale[None, :], axis=1)
    tangent_dim = jnp.sum(tangent)

    piece_loss = lambda theta: loss(predict(theta), data.y)
    hessian = basis.T @ jax.hessian(piece_loss)(flat) @ basis
    shift = jnp.linalg.norm(hessian) + 1.0  # above every tangent eigenvalue
    both = tangent[:, None] & tangent[None, :]
    masked = jnp.where(both, hessian, 0.0) + jnp.diag(jnp.where(tangent, 0.0, shift))
    min_curvature = jnp.where(
        tangent_dim > 0, jnp.linalg.eigvalsh(masked)[0], jnp.inf
    ).astype(flat.dtype)

    jacobian = jax.jacfwd(predict)(flat)
    rank = _rank(jnp.linalg.svd(jacobian, compute_uv=False), tols.rank_rtol)

    if relu:
        kinks = piece.kink_tests(leverage)
        on_kink, concave, degenerate, escape, pattern, dead = kinks
    else:
        on_kink = concave = degenerate = zero
        escape = jnp.asarray(False)
        pattern = dead = None

    saddle = (min_curvature < -tols.curvature_tol) | (concave > 0) | escape
    kind = LimitKind.where(
        ~(speed < tols.speed_tol),
        LimitKind.not_stationary,
        LimitKind.where(
            loss_value <= tols.loss_tol,
            LimitKind.global_minimum,
            LimitKind.where(saddle, LimitKind.saddle, LimitKind.stationary),
        ),
    )
    multiplicity = jnp.where(
        kind == LimitKind.global_minimum, num_params - num_frozen - rank, -1
    )
    return Classification(
        kind=kind,
        loss=loss_value,
        speed=speed,
        min_curvature=min_curvature,
        tangent_dim=tangent_dim,
        multiplicity=multiplicity,
        on_kink=on_kink,
        concave_kinks=concave,
        degenerate_kinks=degenerate,
        pattern=pattern,
        dead=dead,
    )


def _rank(singular_values: Float[Array, " k"], rtol: Scalar) -> Int[Array, ""]:
    """Number of singular values above rtol times the largest (0 for a zero matrix)."""
    if singular_values.size == 0:
        return jnp.zeros((), int)
    top = singular_values[0]
    return jnp.sum((singular_values > rtol * top) & (singular_values > 0))


class _ReLUPiece:
    """The active piece of a `ReLUNeuron` / `TwoLayerReLU` at the flat point `flat`."""

    def __init__(self, objective: Objective, unravel, flat, data: Dataset, tols):
        self.objective, self.unravel, self.flat, self.data, self.tols = (
            objective,
            unravel,
            flat,
            data,
            tols,
        )
        self.model = objective.model(unravel(flat))
        self.alpha = self.model.negative_slope
        self.two_layer = isinstance(self.model, TwoLayerReLU)
        params = unravel(flat)
        # v moves only if it is a trainable leaf and its gradient is not stopped.
        self.v_trainable = (
            self.two_layer
            and self.model.train_output
            and params.output_weight is not None
        )
        self.v_frozen_in_params = (
            self.two_layer
            and not self.model.train_output
            and params.output_weight is not None
        )
        self.z = self.pre_activations(flat)  # (n, m)
        self.kink = jnp.abs(self.z) < tols.kink_tol
        self.slope = jnp.where((self.z > 0) & ~self.kink, 1.0, self.alpha)
        # dz_ij / d theta: the constraint rows, (n, m, P); data only, theta-free.
        self.dz = jax.jacfwd(self.pre_activations)(flat)

    def _layers(self, theta):
        model = self.objective.model(self.unravel(theta))
        hidden, v, x = hidden_rows(model, self.data.x)
        if self.two_layer and not model.train_output:
            v = jax.lax.stop_gradient(v)
        return x @ hidden.T, v

    def pre_activations(self, theta) -> Float[Array, "n m"]:
        return self._layers(theta)[0]

    def predict(self, theta) -> Float[Array, " n"]:
        """Piece predictions: sigma replaced by its slope pattern (alpha on kinks)."""
        z, v = self._layers(theta)
        return (self.slope * z) @ v

    def output_weight(self, theta) -> Float[Array, " m"]:
        return hidden_layer(self.objective.model(self.unravel(theta)))[1]

    def constraints(self) -> tuple[Float[Array, "r P"], int]:
        """Kink rows (zero where off-kink) and, for a frozen v, its coordinate rows."""
        n, m, p = self.dz.shape
        rows = jnp.where(self.kink.reshape(-1)[:, None], self.dz.reshape(n * m, p), 0.0)
        if not self.v_frozen_in_params:
            return rows, 0
        frozen = jax.jacfwd(self.output_weight)(self.flat)
        return jnp.concatenate([rows, frozen]), m

    def kink_tests(self, leverage):
        n, m, p = self.dz.shape
        tols, alpha, kink = self.tols, self.alpha, self.kink
        v = hidden_layer(self.model)[1]  # the value, frozen or not
        pred = jax.vmap(self.model)(self.data.x)
        r = jax.grad(self.objective.loss)(pred, self.data.y)  # dL/df(x_i)
        row_norm = jnp.linalg.norm(self.dz, axis=2)  # (n, m)
        rate = r[:, None] * v[None, :] * (1 - alpha) * row_norm
        independent = leverage[: n * m].reshape(n, m) >= _INDEPENDENT_LEVERAGE
        concave = jnp.sum(kink & (rate < -tols.speed_tol) & independent)
        degenerate = jnp.sum(kink & (jnp.abs(rate) <= tols.speed_tol))

        escape = jnp.asarray(False)
        if self.v_trainable:
            escape = jnp.any(self._zero_output_escape(r, v))
        pattern = self.z > 0
        dead = ~jnp.any(self.z >= tols.kink_tol, axis=0)
        return jnp.sum(kink), concave, degenerate, escape, pattern, dead

    def _zero_output_escape(self, r, v) -> Bool[Array, " m"]:
        """Per neuron with |v_j| < kink_tol: is phi_j nonzero at some probe?"""
        tols, alpha, kink, slope = self.tols, self.alpha, self.kink, self.slope
        dz = jnp.swapaxes(self.dz, 0, 1)  # (m, n, P)
        off = jnp.where(kink, 0.0, slope * r[:, None]).T  # (m, n)
        g_off = jnp.einsum("mn,mnp->mp", off, dz)
        probes = jnp.concatenate([dz, -dz, g_off[:, None], -g_off[:, None]], axis=1)
        t = jnp.einsum("mnp,mqp->mnq", dz, probes)  # (m, n, q): z changes per probe
        kink_t = kink.T[:, :, None]
        change = jnp.where(kink_t, jnp.maximum(t, alpha * t), slope.T[:, :, None] * t)
        phi = jnp.einsum("n,mnq->mq", r, change)
        size = jnp.linalg.norm(probes, axis=2)
        found = jnp.any((jnp.abs(phi) > tols.speed_tol * size) & (size > 0), axis=1)
        return (jnp.abs(v) < tols.kink_tol) & found
