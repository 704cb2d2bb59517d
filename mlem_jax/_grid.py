"""The time grid of a solve: `t0, t1, num_steps` or an array `ts`, checked once."""

from typing import Any

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validation import check_num_steps, check_times, concrete_or_none


def uniform_grid(t0: Any, t1: Any, num_steps: int, dtype: Any = None) -> Float[Array, " N+1"]:
    """t_n = t0 + n (t1 - t0) / N for n = 0..N, with t_N exactly t1 (a Brownian path's
    end point)."""
    dtype = jnp.result_type(float) if dtype is None else dtype
    t0, t1 = jnp.asarray(t0, dtype), jnp.asarray(t1, dtype)
    ts = t0 + jnp.arange(num_steps + 1, dtype=dtype) * ((t1 - t0) / num_steps)
    return ts.at[-1].set(t1)


def check_grid(ts: Any) -> Float[Array, " N+1"]:
    """`ts` as a floating array of at least two strictly monotone finite times (checked
    when its values are known at trace time; otherwise its shape only)."""
    array = jnp.asarray(ts)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.result_type(float))
    if array.ndim != 1 or array.shape[0] < 2:
        raise ValueError(
            "`ts` must be a 1-d array of at least two times (the grid t_0, ..., t_N), got "
            f"shape {array.shape}."
        )
    values = concrete_or_none(ts)
    if values is None:
        return array
    values = np.asarray(values, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(
            f"`ts` must be finite, got non-finite times at {_where(~np.isfinite(values))}."
        )
    steps = np.diff(values)
    if (steps == 0).any():
        raise ValueError(
            f"`ts` must not repeat a time, got t_n == t_(n+1) at n = {_where(steps == 0)}."
        )
    if not ((steps > 0).all() or (steps < 0).all()):
        raise ValueError(
            "`ts` must be strictly monotone (increasing, or decreasing to integrate backwards), "
            f"but its steps change sign at n = {_where(np.diff(np.sign(steps)) != 0)}."
        )
    return array


def _where(mask: np.ndarray) -> list[int]:
    return np.flatnonzero(mask)[:5].tolist()


def step_grid(t0: Any, t1: Any, num_steps: Any, ts: Any) -> Float[Array, " N+1"]:
    """The grid of a solve from exactly one of its two forms: `t0, t1, num_steps` (equal
    steps) or `ts`."""
    uniform = (t0, t1, num_steps)
    if ts is None:
        if any(x is None for x in uniform):
            raise ValueError(
                "Pass the time grid as `t0, t1, num_steps` (equal steps) or as `ts=` (any "
                f"strictly monotone times); got t0={t0!r}, t1={t1!r}, num_steps={num_steps!r}."
            )
        num_steps = check_num_steps(num_steps)
        check_times(t0, t1)
        return uniform_grid(t0, t1, num_steps)
    if any(x is not None for x in uniform):
        raise ValueError(
            "Pass the time grid either as `t0, t1, num_steps` or as `ts=`, not both; got "
            f"`ts` and t0={t0!r}, t1={t1!r}, num_steps={num_steps!r}."
        )
    return check_grid(ts)


def grid_indices(times: Any, ts: Float[Array, " N+1"]) -> tuple[int, ...]:
    """The indices n of the grid points t_n that `times` name (to a thousandth of a step)."""
    grid = concrete_or_none(ts)
    if grid is None:
        raise ValueError(
            "`saveat` times need a concrete grid (`ts` or `t0`, `t1`), got traced times."
        )
    grid = np.asarray(grid, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    indices = np.abs(times[:, None] - grid[None, :]).argmin(axis=1)
    step = np.abs(np.diff(grid))
    spacing = np.minimum(step[np.maximum(indices - 1, 0)], step[np.minimum(indices, len(step) - 1)])
    if (np.abs(times - grid[indices]) > 1e-3 * spacing).any():
        raise ValueError(
            "`saveat` times must lie on the step grid (t0 + n (t1 - t0) / num_steps, or the "
            f"points of `ts`); got {times.tolist()}."
        )
    return tuple(int(i) for i in indices)
