import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


class Dataset(eqx.Module):
    """Final. Inputs `x` of shape (n, d) and scalar targets `y` of shape (n,).

    Built from anything array-like, converted to the default float dtype (float64
    when x64 is on). Raises `ValueError` naming the problem for a wrong rank,
    mismatched lengths, empty data, or NaN/inf entries.
    """

    x: Float[Array, "n d"]
    y: Float[Array, " n"]

    def __init__(self, x: ArrayLike, y: ArrayLike):
        x = jnp.asarray(x, dtype=float)
        y = jnp.asarray(y, dtype=float)
        if x.ndim != 2:
            raise ValueError(f"x must have shape (n, d), got shape {x.shape}")
        if y.ndim != 1:
            raise ValueError(f"y must have shape (n,), got shape {y.shape}")
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]} entries")
        if x.size == 0:
            raise ValueError(f"the dataset is empty: x has shape {x.shape}")
        for name, value in (("x", x), ("y", y)):
            if not isinstance(value, jax.core.Tracer):
                bad = np.argwhere(~np.isfinite(np.asarray(value)))
                if bad.size:
                    raise ValueError(
                        f"{name} has {len(bad)} non-finite entries, the first at "
                        f"index {tuple(int(i) for i in bad[0])}"
                    )
        self.x = x
        self.y = y

    @property
    def num_points(self) -> int:
        """n, the number of data points."""
        return self.y.shape[0]

    @property
    def dim(self) -> int:
        """d, the input dimension."""
        return self.x.shape[1]
