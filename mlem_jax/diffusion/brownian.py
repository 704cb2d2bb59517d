"""A Brownian path on a fine grid over [t_min, 1], shared by runs with different steps.

It is a `mlem_jax.SampledBrownianPath` built from key-drawn fine increments: every step
count N dividing the grid sees the same path at one lookup per step.
"""

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._sampled_path import SampledBrownianPath
from .grids import time_grid
from .sde import SDE, T_MIN


def _brownian_values(
    key: PRNGKeyArray, shape: Sequence[int], num_intervals: int, scales: Any
) -> Array:
    """W at the nodes, 0 at the first: the cumulative sum of `num_intervals` standard
    normal increments of `shape`, each times its interval's sqrt(length) (`scales`, one
    for all or one per interval)."""
    steps = scales * jax.random.normal(key, (num_intervals, *shape))
    return jnp.concatenate([jnp.zeros((1, *shape)), jnp.cumsum(steps, axis=0)])


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
    values = _brownian_values(key, shape, num_intervals, jnp.sqrt((t1 - t0) / num_intervals))
    return SampledBrownianPath(float(t0), float(t1), values)


def brownian_path_on(key: PRNGKeyArray, shape: Sequence[int], times: Any) -> SampledBrownianPath:
    """A `SampledBrownianPath` with W = 0 at the first node, stored at `times`: e.g. the
    fine grid of a family of grids (`time_grid(name, sde, G)`), which every grid of the
    family whose step count divides G reads exactly.

    **Arguments:**

    - `key`: PRNG key of the increments.
    - `shape`: shape of W (that of the batch of images).
    - `times`: the nodes, in any order (a decreasing sampling grid is stored increasing;
        times equal in the default float dtype are stored once).

    **Returns:**

    The path.
    """
    nodes = np.unique(np.asarray(times).astype(jnp.result_type(float)))
    if np.ndim(times) != 1 or len(nodes) < 2:
        raise ValueError(
            f"`times` must be at least two distinct times, got shape {np.shape(times)}."
        )
    nodes = jnp.asarray(nodes)
    scales = jnp.sqrt(jnp.diff(nodes)).reshape(-1, *(1,) * len(shape))
    values = _brownian_values(key, shape, len(nodes) - 1, scales)
    return SampledBrownianPath(float(nodes[0]), float(nodes[-1]), values, nodes)


def family_brownian_path(
    key: PRNGKeyArray, shape: Sequence[int], grid: str, sde: SDE, num_intervals: int
) -> SampledBrownianPath:
    """A path on the grid of `num_intervals` steps of the family `grid` from 1 down to
    `T_MIN` (`time_grid`), which every grid of that family whose step count divides
    `num_intervals` reads exactly; for `"uniform"`, `grid_brownian_path`."""
    if grid == "uniform":
        return grid_brownian_path(key, shape, num_intervals, T_MIN)
    return brownian_path_on(key, shape, time_grid(grid, sde, num_intervals))
