"""Trace-time checks shared by `solve`, the step and the diffrax solver.

Every check raises at trace time with a message that names the argument, what was
expected and what was given. Checks on *values* (probabilities, times) run only when
the value is concrete; under an outer `jax.jit` only shapes and dtypes are checked.
"""

from collections.abc import Callable, Sequence
from typing import Any, Literal, get_args

import jax
import jax.core
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np

from ._family import LevelFamily


Coupling = Literal["nested", "independent"]
COUPLINGS: tuple[str, ...] = get_args(Coupling)
Draws = Literal["random", "stratified"]
DRAWS: tuple[str, ...] = get_args(Draws)


def concrete_or_none(x: Any) -> np.ndarray | None:
    """`x` as a NumPy array if its value is known at trace time, else None."""
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jtu.tree_leaves(x)):
        return None
    return np.asarray(x)


def check_coupling(coupling: Any) -> None:
    if coupling not in COUPLINGS:
        raise ValueError(f"`coupling` must be one of {COUPLINGS}, got {coupling!r}.")


def check_draws(draws: Any) -> None:
    if draws not in DRAWS:
        raise ValueError(f"`draws` must be one of {DRAWS}, got {draws!r}.")


def check_throw(throw: Any) -> bool:
    if not isinstance(throw, (bool, np.bool_)):
        raise TypeError(f"`throw` must be a bool, got {type(throw).__name__} {throw!r}.")
    return bool(throw)


def check_levels(levels: Any) -> "tuple[Callable, ...] | LevelFamily":
    """`levels` as a tuple of callables, or the `LevelFamily` itself."""
    if isinstance(levels, LevelFamily):
        if len(levels) < 1:
            raise ValueError(
                f"`levels` must hold at least one level, got a "
                f"{type(levels).__name__} with {len(levels)}."
            )
        return levels
    if callable(levels) or not isinstance(levels, Sequence):
        raise TypeError(
            "`levels` must be a sequence of callables `f(t, y, args)`, cheapest first, or a "
            f"`mlem_jax.LevelFamily`; got {type(levels).__name__}. For plain Euler-Maruyama "
            "pass `[f]`."
        )
    if len(levels) == 0:
        raise ValueError("`levels` must hold at least one callable `f(t, y, args)`, got 0.")
    for index, level in enumerate(levels):
        if not callable(level):
            raise TypeError(
                f"`levels[{index}]` must be a callable `f(t, y, args)`, got {type(level).__name__}."
            )
    return tuple(levels)


def check_num_steps(num_steps: Any) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise TypeError(
            f"`num_steps` must be a positive Python int, got {type(num_steps).__name__} "
            f"{num_steps!r}."
        )
    if num_steps <= 0:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps}.")
    return int(num_steps)


def check_times(t0: Any, t1: Any) -> None:
    for name, t in (("t0", t0), ("t1", t1)):
        if jnp.shape(t) != ():
            raise ValueError(f"`{name}` must be a scalar time, got shape {jnp.shape(t)}.")
        value = concrete_or_none(t)
        if value is not None and not np.isfinite(value):
            raise ValueError(f"`{name}` must be a finite time, got {value}.")
    a, b = concrete_or_none(t0), concrete_or_none(t1)
    if a is not None and b is not None and a == b:
        raise ValueError(f"`t0` and `t1` must differ (t1 < t0 integrates backwards), both are {a}.")


def check_state(y0: Any) -> None:
    leaves = jtu.tree_leaves(y0)
    if not leaves:
        raise ValueError("`y0` must be an array or a pytree of arrays, got no arrays.")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.inexact):
            raise TypeError(
                "`y0` must hold floating-point arrays, got a leaf of dtype "
                f"{jnp.result_type(leaf)}."
            )


def describe(tree: Any) -> str:
    """Shapes and dtypes of a pytree, for error messages."""
    return str(jtu.tree_map(lambda x: f"{x.dtype}{list(x.shape)}", tree))


def check_level_outputs(levels: Sequence[Callable], t0: Any, y0: Any, args: Any) -> None:
    """Each level must return the structure and shapes of `y0` in floating dtypes (the
    drift is formed in the state's dtypes, widened to at least float32)."""
    expected = jax.eval_shape(lambda: y0)
    expected_struct = jtu.tree_structure(expected)
    for index, level in enumerate(levels):
        out = jax.eval_shape(lambda lv=level: lv(t0, y0, args))
        same = jtu.tree_structure(out) == expected_struct and all(
            a.shape == b.shape and jnp.issubdtype(a.dtype, jnp.floating)
            for a, b in zip(jtu.tree_leaves(out), jtu.tree_leaves(expected))
        )
        if not same:
            raise ValueError(
                f"`levels[{index}]` must return the structure and shapes of `y0` "
                f"({describe(expected)}) in floating dtypes, got {describe(out)}."
            )


def check_diffusion_output(diffusion: Callable, t0: Any, y0: Any, args: Any) -> None:
    """`diffusion(t, y, args)` must broadcast against `y` leaf by leaf (g * dW)."""
    expected = jax.eval_shape(lambda: y0)
    out = jax.eval_shape(lambda: diffusion(t0, y0, args))
    if jtu.tree_structure(out) != jtu.tree_structure(expected):
        raise ValueError(
            "`diffusion(t, y, args)` must return the pytree structure of `y0` "
            f"({describe(expected)}), got {describe(out)}."
        )
    for g, y in zip(jtu.tree_leaves(out), jtu.tree_leaves(expected)):
        try:
            broadcast = np.broadcast_shapes(g.shape, y.shape)
        except ValueError:
            broadcast = None
        if broadcast != y.shape:
            raise ValueError(
                "`diffusion(t, y, args)` must return arrays that broadcast against `y` "
                f"(diagonal or scalar noise): shape {g.shape} does not broadcast to "
                f"{y.shape}."
            )


def check_probabilities(
    probabilities: Any, num_levels: int, coupling: str, num_steps: int | None = None
) -> jax.Array | None:
    """`probabilities` as a float array of shape (K,) or, for a schedule, (N, K) with
    row n used at step n; None when K == 1.

    `num_steps`, when known, is the N a schedule must have rows for.
    """
    if probabilities is None:
        if num_levels > 1:
            raise ValueError(
                f"`probabilities` (p_1..p_K with p_1 == 1) are required with {num_levels} "
                "levels, got None. See `mlem_jax.optimal_probabilities`."
            )
        return None
    p = jnp.asarray(probabilities)
    if not jnp.issubdtype(p.dtype, jnp.floating):
        p = p.astype(jnp.result_type(float))
    steps = "N" if num_steps is None else num_steps
    if p.ndim not in (1, 2) or p.shape[-1] != num_levels:
        raise ValueError(
            f"`probabilities` must have shape ({num_levels},), one per level, or "
            f"({steps}, {num_levels}), one row per step; got shape {p.shape}."
        )
    if p.ndim == 2 and num_steps is not None and p.shape[0] != num_steps:
        raise ValueError(
            f"`probabilities` as a schedule must have one row per step, shape "
            f"({num_steps}, {num_levels}); got shape {p.shape}."
        )
    values = concrete_or_none(probabilities)
    if values is not None:
        rows = values.astype(np.float64).reshape(-1, num_levels)
        for index, row in enumerate(rows):
            where = "" if p.ndim == 1 else f"{index}"
            _check_probability_row(where, row, coupling)
    return p


def _check_probability_row(row: str, values: np.ndarray, coupling: str) -> None:
    """Check one row of probabilities; `row` is its index in a schedule, or ""."""
    name = f"`probabilities[{row}]`" if row else "`probabilities`"
    first = f"`probabilities[{row}, 0]`" if row else "`probabilities[0]`"
    if np.isnan(values).any():
        raise ValueError(f"{name} must not be NaN, got {values.tolist()}.")
    if ((values <= 0) | (values > 1)).any():
        raise ValueError(f"{name} must lie in (0, 1], got {values.tolist()}.")
    if values[0] != 1:
        raise ValueError(
            f"{first} must be 1: the cheapest level is evaluated at every step; got {values[0]}."
        )
    if coupling == "nested" and (np.diff(values) > 0).any():
        raise ValueError(
            f"{name} must be non-increasing in the level under the nested coupling, got "
            f"{values.tolist()}. Sort them, or use coupling='independent'."
        )
