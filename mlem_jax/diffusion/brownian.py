"""A Brownian path on a fine grid over [t_min, 1], shared by runs with different steps."""

from collections.abc import Sequence
from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class GridBrownianPath(diffrax.AbstractBrownianPath):
    """W stored at t0 + k (t1 - t0) / G, k = 0..G (cumulative sums of fine increments).

    Every step grid with N dividing G lands on stored points, so EM with N steps, ML-EM
    and the reference see the same path: their strong errors are comparable. Times are
    rounded to the nearest stored point, so use it only with such grids. Reading an
    increment is one lookup, cheap next to a UNet, so timings are not distorted.
    """

    t0: float
    t1: float
    values: Float[Array, "G+1 ..."]
    levy_area: ClassVar[type] = diffrax.BrownianIncrement

    def _at(self, t: Array) -> Array:
        intervals = self.values.shape[0] - 1
        index = jnp.rint((t - self.t0) / (self.t1 - self.t0) * intervals)
        return self.values[jnp.clip(index, 0, intervals).astype(jnp.int32)]

    def evaluate(self, t0, t1=None, left=True, use_levy=False) -> Array:
        """W(t0), or the increment W(t1) - W(t0)."""
        del left
        if use_levy:
            raise ValueError("GridBrownianPath stores W only, no Levy area.")
        return self._at(t0) if t1 is None else self._at(t1) - self._at(t0)


def grid_brownian_path(key: PRNGKeyArray, shape: Sequence[int], num_intervals: int,
                       t0: float, t1: float = 1.0) -> GridBrownianPath:
    """A `GridBrownianPath` on [t0, t1] with `num_intervals` fine steps, W(t0) = 0.

    **Arguments:**

    - `key`: PRNG key of the increments.
    - `shape`: shape of W (that of the batch of images).
    - `num_intervals`: G; step counts N must divide it.
    - `t0`, `t1`: the time span, t0 < t1.

    **Returns:**

    The path.
    """
    if num_intervals < 1 or not t0 < t1:
        raise ValueError(
            f"need num_intervals >= 1 and t0 < t1, got {num_intervals}, t0={t0}, t1={t1}."
        )
    scale = jnp.sqrt((t1 - t0) / num_intervals)
    steps = scale * jax.random.normal(key, (num_intervals, *shape))
    values = jnp.concatenate([jnp.zeros((1, *shape)), jnp.cumsum(steps, axis=0)])
    return GridBrownianPath(float(t0), float(t1), values)
