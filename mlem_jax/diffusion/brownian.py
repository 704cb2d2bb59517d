"""A Brownian path on a fine grid over [t_min, 1], shared by runs with different steps.

It is a `mlem_jax.SampledBrownianPath` built from key-drawn fine increments: every step
count N dividing the grid sees the same path at one lookup per step.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jaxtyping import PRNGKeyArray

from .._sampled_path import SampledBrownianPath


def grid_brownian_path(
    key: PRNGKeyArray, shape: Sequence[int], num_intervals: int, t0: float, t1: float = 1.0
) -> SampledBrownianPath:
    """A `SampledBrownianPath` on [t0, t1] with `num_intervals` fine steps, W(t0) = 0.

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
    return SampledBrownianPath(float(t0), float(t1), values)
