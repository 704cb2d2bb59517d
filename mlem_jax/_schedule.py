"""The level probabilities of a solve as one value, checked once at the entry.

`checked_probabilities` turns what a user passes (constant p_l, a table with one row per
step, or a callable t -> p) into a `Probabilities`: validated, with the levels the
estimate needs worked out. `solve`, `build_step` and the diffrax solver take it as it is.
"""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._levels import needed_levels
from ._validation import check_probabilities, concrete_or_none, describe


def step_times(t0: Any, t1: Any, num_steps: int) -> Float[Array, " N"]:
    """t_n = t0 + n (t1 - t0) / N for n = 0..N-1: the time at which each step starts.
    (On a grid `ts`, the start times are `ts[:-1]`.)"""
    return t0 + jnp.arange(num_steps) * ((t1 - t0) / num_steps)


class Probabilities(eqx.Module):
    """p_1..p_K of a solve, checked: build it with `checked_probabilities`.

    - `values`: None (one level: Euler-Maruyama), an array (K,) used at every step, an
        array (N, K) whose row n is used at step n, or a callable `t -> (K,)` evaluated
        at the start of each step (kept only where the grid is not known in advance, as
        in the diffrax solver; `solve` tabulates it on its grid).
    - `needed`: the 0-based indices of the levels the estimate depends on
        (`needed_levels`); the others cancel and are never evaluated.
    - `coupling`: `"nested"` or `"independent"`, which the values were checked for.
    """

    values: Array | Callable | None
    needed: tuple[int, ...] = eqx.field(static=True)
    coupling: str = eqx.field(static=True)

    def row(self, n: Any, t: Any) -> Array | None:
        """The probabilities of step n, which starts at time t."""
        if self.values is None:
            return None
        if callable(self.values):
            p = self.values(t)
            return eqx.error_if(
                p,
                ~_valid_row(p, self.coupling),
                "`probabilities(t)` returned a row that is not valid: each p_l must lie in "
                "(0, 1] with p_1 == 1"
                + (
                    ", non-increasing in l (nested coupling)." if self.coupling == "nested" else "."
                ),
            )
        return self.values if self.values.ndim == 1 else self.values[n]


def checked_probabilities(
    probabilities: Any,
    num_levels: int,
    coupling: str,
    ts: Float[Array, " N+1"] | None = None,
    needed: Sequence[int] | None = None,
) -> Probabilities:
    """`probabilities` checked once, as a `Probabilities`; one already checked for
    `num_levels` and `coupling` is returned as it is.

    **Arguments:**

    - `probabilities`: p_1..p_K (p_1 == 1, each in (0, 1], non-increasing under the
        nested coupling); a table (N, K), row n at step n; or a callable `t -> (K,)`.
        None for one level.
    - `ts`: the grid, when known: a table must have one row per step, and a callable is
        tabulated at the steps' start times `ts[:-1]`. None (the diffrax solver): a
        callable is kept and checked at run time.
    - `needed`: the levels to evaluate, when the values are traced and the caller knows
        them (`needed_levels` of the concrete values); checked to include the top level.

    **Returns:**

    A `Probabilities`, which `solve`, `build_step` and `MultilevelTerm` take without
    checking it again.
    """
    if isinstance(probabilities, Probabilities):
        _check_matches(probabilities, num_levels, coupling, ts)
        if ts is None or not callable(probabilities.values):
            return probabilities
        probabilities = probabilities.values  # a grid is known now: tabulate on it
    num_steps = None if ts is None else ts.shape[0] - 1
    if callable(probabilities):
        if ts is None:
            _check_callable(probabilities, num_levels)
            return Probabilities(probabilities, tuple(range(num_levels)), coupling)
        values = _tabulated(probabilities, ts, num_levels, coupling)
    else:
        values = check_probabilities(probabilities, num_levels, coupling, num_steps)
    if values is None:
        return Probabilities(None, (num_levels - 1,), coupling)
    chosen = _checked_needed(needed, values, num_levels, coupling)
    return Probabilities(_with_skip_check(values, chosen, num_levels), chosen, coupling)


def _check_matches(p: Probabilities, num_levels: int, coupling: str, ts: Any) -> None:
    levels = None if p.values is None or callable(p.values) else p.values.shape[-1]
    if p.coupling != coupling or (levels is not None and levels != num_levels):
        raise ValueError(
            f"`probabilities` were checked for {levels} levels and coupling {p.coupling!r}, "
            f"but the solve has {num_levels} levels and coupling {coupling!r}."
        )
    if ts is not None and p.values is not None and not callable(p.values) and p.values.ndim == 2:
        if p.values.shape[0] != ts.shape[0] - 1:
            raise ValueError(
                f"`probabilities` as a schedule must have one row per step of the grid, "
                f"{ts.shape[0] - 1}; got {p.values.shape[0]} rows."
            )


def _check_callable(schedule: Callable, num_levels: int, t: Any = 0.0) -> None:
    """A callable schedule must map a time to an array of shape (K,)."""
    out = jax.eval_shape(schedule, t)
    if getattr(out, "shape", None) != (num_levels,):
        raise ValueError(
            f"`probabilities` as a callable must map a time t to an array of shape "
            f"({num_levels},), one per level; got {describe(out)}."
        )


def _tabulated(schedule: Callable, ts: Array, num_levels: int, coupling: str) -> Array | None:
    """The callable at the start of every step of the grid, validated like a table."""
    _check_callable(schedule, num_levels, ts[0])
    try:
        return check_probabilities(
            jax.vmap(schedule)(ts[:-1]), num_levels, coupling, ts.shape[0] - 1
        )
    except ValueError as error:
        if "`probabilities[" not in str(error) or "shape" in str(error):
            raise
        raise ValueError(
            f"{error} Row n is the callable `probabilities` at the step start time t_n."
        ) from None


def _checked_needed(
    needed: Sequence[int] | None, p: Array, num_levels: int, coupling: str
) -> tuple[int, ...]:
    """`needed` as sorted level indices that include every level the estimate needs
    (`needed_levels`, or just the top one for traced `p`); `needed_levels(p)` if None."""
    if needed is None:
        return needed_levels(p, coupling)
    traced = concrete_or_none(p) is None and coupling == "nested"
    required = (num_levels - 1,) if traced else needed_levels(p, coupling)
    chosen = tuple(sorted({int(i) for i in needed}))
    if not set(required) <= set(chosen) or not set(chosen) <= set(range(num_levels)):
        raise ValueError(
            f"`needed` must be level indices in 0..{num_levels - 1} including "
            f"{list(required)} (`needed_levels` of the probabilities), got {list(needed)}."
        )
    return chosen


def _with_skip_check(p: Array, needed: tuple[int, ...], num_levels: int) -> Array:
    """Traced p with levels left out: check at run time that they cancel (p_l == p_(l+1))."""
    skipped = np.array([i for i in range(num_levels) if i not in needed], dtype=int)
    if not len(skipped) or concrete_or_none(p) is not None:
        return p
    return eqx.error_if(
        p,
        jnp.any(p[..., skipped] != p[..., skipped + 1]),
        f"`needed` skips levels {skipped.tolist()}, which cancel only where p_l == p_(l+1); "
        "compute it with `needed_levels` from these probabilities.",
    )


def _valid_row(p: Array, coupling: str) -> Array:
    valid = (p[0] == 1) & jnp.all((p > 0) & (p <= 1))
    if coupling == "nested":
        valid = valid & jnp.all(jnp.diff(p) <= 0)
    return valid
