"""Candidate implicit regularizers $R$ for the falsification engine (host-side).

"R characterizes the implicit regularization" (Vardi & Shamir 2021, Section 3): for
every dataset on which the flow from the fixed start reaches zero loss, the limit
minimizes R over the zero-loss set. R may depend on the start (it is fixed), never
on the data. Each regularizer acts on the flat parameter vector of a `FlowSample`.
"""

import abc
from collections.abc import Callable

import equinox as eqx
import numpy as np
from jaxtyping import Float

from ._zero_loss import ZeroLossSet


class AbstractRegularizer(eqx.Module):
    """A candidate regularizer $R(w)$, possibly depending on the start $w_0$ (abstract).

    Subclasses implement `__call__`, `name`, and `minimize`: an exact minimizer over a
    single neuron's zero-loss set where one is computable (convex R), else None; the
    engine then bounds the minimum from above by local search.
    """

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """A short label for tables."""

    @abc.abstractmethod
    def __call__(
        self, w: Float[np.ndarray, " p"], start: Float[np.ndarray, " p"]
    ) -> float:
        """R at parameters `w`, for flows from `start`."""

    @abc.abstractmethod
    def minimize(
        self, zero_set: ZeroLossSet, start: Float[np.ndarray, " p"]
    ) -> Float[np.ndarray, " p"] | None:
        """An exact minimizer of R over `zero_set`, or None if not computable."""


class L2Norm(AbstractRegularizer):
    r"""Final. $R(w) = \|w\|_2$; its minimum over $G$ is the projection of 0 (a QP)."""

    @property
    def name(self) -> str:
        return "||w||_2"

    def __call__(self, w, start):
        return float(np.linalg.norm(w))

    def minimize(self, zero_set, start):
        return zero_set.project(np.zeros(zero_set.dim))


class L1Norm(AbstractRegularizer):
    r"""Final. $R(w) = \|w\|_1$; its minimum over $G$ is an LP."""

    @property
    def name(self) -> str:
        return "||w||_1"

    def __call__(self, w, start):
        return float(np.sum(np.abs(w)))

    def minimize(self, zero_set, start):
        return zero_set.minimize_l1()


class DistanceToStart(AbstractRegularizer):
    r"""Final. $R(w) = \|w - w_0\|_2$ with $w_0$ the flow's start; minimum: the
    projection of $w_0$ onto $G$ (Theorem 1's answer for strictly monotone $\sigma$)."""

    @property
    def name(self) -> str:
        return "||w - w0||_2"

    def __call__(self, w, start):
        return float(np.linalg.norm(np.asarray(w) - np.asarray(start)))

    def minimize(self, zero_set, start):
        return zero_set.project(start)


class DistanceToPoint(AbstractRegularizer):
    r"""Final. $R(w) = \|w - c\|_2$ for a fixed point c (field `center`)."""

    center: Float[np.ndarray, " p"] = eqx.field(
        converter=lambda c: np.asarray(c, float)
    )

    @property
    def name(self) -> str:
        return f"||w - c||_2, c = {np.array2string(self.center, precision=3)}"

    def __call__(self, w, start):
        return float(np.linalg.norm(np.asarray(w) - self.center))

    def minimize(self, zero_set, start):
        return zero_set.project(self.center)


class ConstantRegularizer(AbstractRegularizer):
    r"""Final. $R \equiv$ `value`: characterizes every flow (ties allowed), so it must
    never be refuted; the engine's control."""

    value: float = 0.0

    @property
    def name(self) -> str:
        return "constant"

    def __call__(self, w, start):
        return float(self.value)

    def minimize(self, zero_set, start):
        return zero_set.project(start)


class CallableRegularizer(AbstractRegularizer):
    """Final. Any user function $R(w)$ (of the flat parameters; `uses_start=True`
    for $R(w, w_0)$), with an optional exact `minimizer(zero_set, start)`.

    Fields: `fn`, `label`, `uses_start`, `minimizer`.
    """

    fn: Callable
    label: str = eqx.field(static=True)
    uses_start: bool = eqx.field(default=False, static=True)
    minimizer: Callable | None = None

    @property
    def name(self) -> str:
        return self.label

    def __call__(self, w, start):
        w = np.asarray(w, dtype=float)
        return float(
            self.fn(w, np.asarray(start, float)) if self.uses_start else self.fn(w)
        )

    def minimize(self, zero_set, start):
        return None if self.minimizer is None else self.minimizer(zero_set, start)
