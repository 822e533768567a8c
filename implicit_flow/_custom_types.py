"""Shape-annotated type aliases shared across the package."""

from typing import TypeAlias

from jaxtyping import Array, Float, PyTree


Params: TypeAlias = PyTree[Float[Array, "..."]]
Scalar: TypeAlias = Float[Array, ""]
