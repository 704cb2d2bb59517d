"""Time-dependent probabilities: a schedule p_l(t) as a table (N, K) or a callable."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._validation import check_probabilities, describe


def step_times(t0: Any, t1: Any, num_steps: int) -> Float[Array, " N"]:
    """t_n = t0 + n (t1 - t0) / N for n = 0..N-1: the time at which each step starts."""
    return t0 + jnp.arange(num_steps) * ((t1 - t0) / num_steps)


def check_schedule_callable(schedule: Callable, num_levels: int, t: Any = 0.0) -> None:
    """A callable schedule must map a time to an array of shape (K,)."""
    out = jax.eval_shape(schedule, t)
    if getattr(out, "shape", None) != (num_levels,):
        raise ValueError(
            f"`probabilities` as a callable must map a time t to an array of shape "
            f"({num_levels},), one per level; got {describe(out)}."
        )


def _callable_rows(schedule: Callable, ts: Array, num_levels: int) -> Array:
    check_schedule_callable(schedule, num_levels, ts[0])
    return jax.vmap(schedule)(ts)


def probability_table(
    probabilities: Any, num_levels: int, coupling: str, t0: Any, t1: Any, num_steps: int
) -> Array | None:
    """`probabilities` as `solve` uses them: (K,) constant or (N, K), row n at step n.

    A callable `t -> (K,)` is evaluated at the start of every step (`step_times`); its
    values are validated like a table's whenever the times are concrete.
    """
    if not callable(probabilities):
        return check_probabilities(probabilities, num_levels, coupling, num_steps)
    ts = step_times(jnp.asarray(t0, float), jnp.asarray(t1, float), num_steps)
    try:
        return check_probabilities(
            _callable_rows(probabilities, ts, num_levels), num_levels, coupling, num_steps
        )
    except ValueError as error:
        if "`probabilities[" not in str(error) or "shape" in str(error):
            raise
        raise ValueError(
            f"{error} Row n is the callable `probabilities` at the step start time t_n = "
            "t0 + n (t1 - t0) / num_steps."
        ) from None


def probabilities_at(table: Array | None, n: Any) -> Array | None:
    """The probabilities of step n: row n of a schedule, or the constant ones."""
    if table is None or table.ndim == 1:
        return table
    return table[n]


def checked_schedule_row(
    schedule: Any, n: Any, t: Any, num_levels: int, coupling: str
) -> Array | None:
    """The probabilities of step n at time t, for a solver that cannot see the grid in
    advance (the diffrax solver): a table's row n, or the callable at t, each checked
    at run time (`eqx.error_if`) since the step index and time are traced."""
    if schedule is None or (not callable(schedule) and schedule.ndim == 1):
        return schedule
    if callable(schedule):
        p = _callable_rows(schedule, jnp.reshape(t, (1,)), num_levels)[0]
        p = eqx.error_if(
            p,
            ~_valid_row(p, coupling),
            "`probabilities(t)` returned a row that is not valid: each p_l "
            "must lie in (0, 1] with p_1 == 1"
            + (", non-increasing in l (nested coupling)." if coupling == "nested" else "."),
        )
        return p
    p = eqx.error_if(
        schedule,
        n >= schedule.shape[0],
        f"`probabilities` has {schedule.shape[0]} rows (one per step) but the "
        "solve takes more steps than that.",
    )
    return p[jnp.minimum(n, schedule.shape[0] - 1)]


def _valid_row(p: Array, coupling: str) -> Array:
    valid = (p[0] == 1) & jnp.all((p > 0) & (p <= 1))
    if coupling == "nested":
        valid = valid & jnp.all(jnp.diff(p) <= 0)
    return valid
