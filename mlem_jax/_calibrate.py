"""Measuring the levels: v_l, eps_l on given points, c_l in FLOPs and seconds, gamma."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Float, PyTree

from ._family import LevelFamily
from ._timing import median_seconds
from ._validation import check_levels


class LevelStatistics(NamedTuple):
    """Level differences measured on points (t_i, y_i).

    - `variances`: v_l = mean_i ||f^l - f^(l-1)||^2 for l = 2..K, shape (K - 1,).
    - `errors`: eps_l = sqrt(mean_i ||f^l - f_ref||^2), shape (K,); f_ref is the given
        reference drift, or f^K (then eps_K = 0).
    """

    variances: np.ndarray
    errors: np.ndarray


class LevelCosts(NamedTuple):
    """Cost of one evaluation of each level, shape (K,) each.

    - `flops`: from XLA's cost analysis of the jitted level.
    - `seconds`: median measured wall-clock time.
    """

    flops: np.ndarray
    seconds: np.ndarray


def _squared_norm(tree: PyTree) -> Array:
    squares = [jnp.sum(jnp.square(leaf.astype(jnp.float32))) for leaf in jtu.tree_leaves(tree)]
    return jnp.sum(jnp.stack(squares))


def level_statistics(
    levels: Sequence[Callable] | LevelFamily,
    ts: Float[Array, " P"],
    ys: PyTree,
    args: Any = None,
    *,
    reference: Callable | None = None,
    batch_size: int | None = None,
) -> LevelStatistics:
    """Estimate v_l and eps_l on points (ts[i], ys[i]), e.g. taken along trajectories.

    **Arguments:**

    - `levels`: callables `f(t, y, args)`, cheapest first, or a `LevelFamily` (evaluated
        in one pass per point).
    - `ts`: times, shape (P,).
    - `ys`: states with a leading axis of length P.
    - `args`: passed to every level.
    - `reference`: the exact drift, if known; else eps_l is measured against f^K.
    - `batch_size`: points evaluated at once (`lax.map`); None evaluates all at once.

    **Returns:**

    A `LevelStatistics`.
    """
    levels = check_levels(levels)
    measured = pointwise_squares(levels, reference, ts, ys, args, batch_size).mean(axis=0)
    k = len(levels)
    return LevelStatistics(variances=measured[: k - 1], errors=np.sqrt(measured[k - 1 :]))


def pointwise_squares(
    levels: Sequence[Callable] | LevelFamily,
    top: Callable | None,
    ts: Float[Array, " P"],
    ys: PyTree,
    args: Any,
    batch_size: int | None,
) -> np.ndarray:
    """Per point i: ||f^l - f^(l-1)||^2 for l = 2..K, then ||f^l - top||^2 for l = 1..K;
    shape (P, 2K - 1). `top=None` measures against f^K as evaluated with the others, so
    its own error is exactly 0 (a family's separate pass to level K may round
    differently)."""
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or any(leaf.shape[:1] != ts.shape for leaf in jtu.tree_leaves(ys)):
        raise ValueError(
            "`ts` must have shape (P,) and every leaf of `ys` a leading axis of length P; "
            f"got ts {ts.shape} and ys {jtu.tree_map(jnp.shape, ys)}."
        )
    return np.asarray(_measure(levels, top, ts, ys, args, batch_size), dtype=np.float64)


@eqx.filter_jit
def _measure(levels, top, ts, ys, args, batch_size):
    """`pointwise_squares`, compiled once per structure and shapes (not once per call)."""

    def one_point(point):
        t, y = point
        values = (
            list(levels.evaluate(t, y, args, len(levels)))
            if isinstance(levels, LevelFamily)
            else [level(t, y, args) for level in levels]
        )
        exact = values[-1] if top is None else top(t, y, args)
        sub = lambda a, b: jtu.tree_map(jnp.subtract, a, b)  # noqa: E731
        differences = [_squared_norm(sub(upper, lower)) for lower, upper in zip(values, values[1:])]
        errors = [_squared_norm(sub(value, exact)) for value in values]
        return jnp.stack(differences + errors)

    return jax.lax.map(one_point, (ts, ys), batch_size=batch_size)


def _flops(compiled: Any) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return float(analysis.get("flops", np.nan)) if analysis else float("nan")


def level_costs(
    levels: Sequence[Callable] | LevelFamily,
    t: Any,
    y: PyTree,
    args: Any = None,
    *,
    repeats: int = 20,
) -> LevelCosts:
    """FLOPs (XLA's cost analysis) and median seconds of one evaluation of each level at
    (t, y). The arrays inside equinox modules are arguments, not constants, so XLA
    cannot fold them away; a level of the same structure and shapes is compiled once
    per process. For a `LevelFamily`, the cost of level l is that of a pass to level l
    that returns every level up to it, as ML-EM's steps run it (cumulative costs).
    """
    levels = check_levels(levels)
    t = jnp.asarray(t)  # an argument, as in a solve, not a constant to fold
    if isinstance(levels, LevelFamily):
        levels = [_Pass(levels, depth) for depth in range(1, len(levels) + 1)]
    flops, seconds = [], []
    for level in levels:
        lowered = _evaluate.lower(level, t, y, args)  # pyright: ignore[reportFunctionMemberAccess]
        compiled = lowered.compile()  # cached by `_evaluate`
        flops.append(_flops(compiled.compiled))
        seconds.append(median_seconds(compiled, level, t, y, args, repeats=repeats))
    return LevelCosts(flops=np.asarray(flops), seconds=np.asarray(seconds))


class _Pass(eqx.Module):
    """A pass of a family to `depth`, returning every level up to it."""

    family: LevelFamily
    depth: int = eqx.field(static=True)

    def __call__(self, t: Any, y: PyTree, args: Any) -> tuple[PyTree, ...]:
        return self.family.evaluate(t, y, args, self.depth)


@eqx.filter_jit
def _evaluate(level: Callable, t: Any, y: PyTree, args: Any) -> PyTree:
    """One evaluation of `level`: compiled once per level structure and shapes."""
    return level(t, y, args)


def fit_gamma(costs: Any, errors: Any) -> float:
    """gamma: least-squares slope of log c_l against log(1 / eps_l).

    Levels with eps_l == 0 (the top level measured against itself) are left out; at
    least two levels with eps_l > 0 are needed.
    """
    c = np.asarray(costs, dtype=np.float64)
    e = np.asarray(errors, dtype=np.float64)
    if c.shape != e.shape or c.ndim != 1:
        raise ValueError(
            f"`costs` and `errors` must be 1-d of equal length, got {c.shape} and {e.shape}."
        )
    keep = (e > 0) & (c > 0)
    if keep.sum() < 2:
        raise ValueError(
            "fit_gamma needs at least two levels with cost > 0 and error > 0, got "
            f"costs={c.tolist()}, errors={e.tolist()}."
        )
    slope, _ = np.polyfit(np.log(1 / e[keep]), np.log(c[keep]), 1)
    return float(slope)
