"""A Brownian path stored on a fine uniform grid, for strong errors across step counts."""

from typing import ClassVar

import diffrax
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class SampledBrownianPath(diffrax.AbstractBrownianPath):
    """W at the points t0 + k (t1 - t0) / G, k = 0..G, read back exactly.

    Every step grid with N dividing G lands on stored points, so solves with different
    step counts see the same path, as with a `diffrax.VirtualBrownianTree`, at the cost
    of one array lookup per step instead of a tree descent. Times between stored points
    are rounded to the nearest one: use it only with such grids.

    Build it with `sample_brownian_path`. Pass it as `brownian=` to `solve`.
    """

    t0: float
    t1: float
    values: Float[Array, "G+1 ..."]
    levy_area: ClassVar[type] = diffrax.BrownianIncrement

    def _at(self, t) -> Array:
        num_intervals = self.values.shape[0] - 1
        index = jnp.rint((t - self.t0) / (self.t1 - self.t0) * num_intervals)
        return self.values[jnp.clip(index, 0, num_intervals).astype(jnp.int32)]

    def evaluate(self, t0, t1=None, left=True, use_levy=False) -> Array:
        """W(t0), or the increment W(t1) - W(t0) when `t1` is given."""
        del left
        if use_levy:
            raise ValueError("SampledBrownianPath stores increments only, no Levy area.")
        return self._at(t0) if t1 is None else self._at(t1) - self._at(t0)


def sample_brownian_path(
    path: diffrax.AbstractBrownianPath, num_intervals: int
) -> SampledBrownianPath:
    """Store `path` (e.g. a `VirtualBrownianTree` on [t0, t1]) at `num_intervals + 1`
    equally spaced times. `vmap` it over paths built from a batch of keys."""
    t0, t1 = float(path.t0), float(path.t1)
    times = jnp.linspace(t0, t1, num_intervals + 1)
    # `lax.map`, not `vmap`: a batched tree descent takes several times longer to compile.
    values = jax.lax.map(lambda t: path.evaluate(t0, t), times)
    return SampledBrownianPath(t0, t1, values)
