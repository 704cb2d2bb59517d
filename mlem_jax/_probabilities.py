"""Choosing the level probabilities p_l from measured costs and variances."""

from typing import Any

import numpy as np

from ._validation import check_coupling, check_draws


# The randomisation error of correction l grows as p_l^-POWER: random draws add
# independent errors, variance v_l / p_l; stratified ones leave a quadrature-like error
# of order h / p_l, squared v_l / p_l^2 (taking the correction's rate of change along a
# trajectory to scale with its size).
POWERS = {"random": 1, "stratified": 2}


def _as_positive_vector(name: str, value: Any, length: int | None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1 or (length is not None and array.shape[0] != length):
        expected = "a 1-d array" if length is None else f"shape ({length},)"
        raise ValueError(f"`{name}` must have {expected}, got shape {array.shape}.")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"`{name}` must be finite and >= 0, got {array.tolist()}.")
    return array


def correction_costs(costs: Any, coupling: str = "nested", *, shared: bool = False) -> np.ndarray:
    """Expected extra cost of drawing correction l = 2..K, shape (K - 1,).

    Nested: c_l (f^(l-1) is already evaluated). Independent: c_l + c_(l-1). Shared
    (a `LevelFamily`, whose `costs` are the cumulative costs of a pass to each level;
    nested coupling only): c_l - c_(l-1), what the deeper pass adds.
    """
    check_coupling(coupling)
    c = _as_positive_vector("costs", costs, None)
    if shared:
        if coupling != "nested":
            raise ValueError(
                "`shared=True` (the levels of a LevelFamily) needs coupling='nested', got "
                f"{coupling!r}: under the independent coupling a step's cost is that of "
                "its deepest draw, which is not a sum over the corrections."
            )
        if (np.diff(c) <= 0).any():
            raise ValueError(
                "`costs` of a LevelFamily's levels are cumulative (a pass to level l "
                f"includes levels 1..l-1), so they must increase; got {c.tolist()}."
            )
        return np.diff(c)
    return c[1:] + (c[:-1] if coupling == "independent" else 0.0)


def optimal_probabilities(
    costs: Any,
    variances: Any,
    *,
    top_level_evaluations: float | None = None,
    num_steps: int | None = None,
    variance_budget: float | None = None,
    coupling: str = "nested",
    draws: str = "random",
    shared: bool = False,
    step_sizes: Any = None,
) -> np.ndarray:
    """p_l minimising the expected cost sum_l p_l C_l under sum_l v_l / p_l <= V.

    The Lagrange solution is p_l = min(1, lambda sqrt(v_l / C_l)) for l >= 2 and p_1 = 1,
    where C_l is the cost of drawing correction l (`correction_costs`). For stratified
    draws the constraint is sum_l v_l / p_l^2 <= V (the error of a level drawn at a
    fraction p_l of evenly spread steps is of order h / p_l) and the solution
    p_l = min(1, lambda (v_l / C_l)^(1/3)) spreads the draws more evenly over the
    levels. Under the nested coupling the result is made non-increasing by raising p_l
    to max_{m >= l} p_m; this only lowers the variance. A level with v_l = 0 gets the
    smallest positive probability among the others (it never needs evaluating, but p
    must stay > 0).

    **Time-dependent probabilities.** With `variances` of shape (N, K - 1), row n being
    v_l(t_n) at step n (e.g. `VarianceProfile.at(step_times(t0, t1, N))`), the result
    is a schedule (N, K) minimising sum_n sum_l p_{n,l} C_l under
    sum_n sum_l v_{n,l} / p_{n,l} <= V: p_{n,l} = min(1, lambda sqrt(v_{n,l} / C_l))
    with one global lambda, so the costly levels are drawn where they differ most.
    (The h^2 of equal steps is a common factor and does not change p. On a grid of
    unequal steps h_n, step n's randomisation error has variance h_n^2 v_{n,l} / p_{n,l}:
    pass `step_sizes` and the rows are weighted by h_n^2.)

    **Arguments:**

    - `costs`: c_1..c_K, cost of one evaluation of each level (FLOPs or seconds).
    - `variances`: v_2..v_K, v_l = E||f^l - f^(l-1)||^2, shape (K - 1,), or (N, K - 1)
        per step for a schedule.
    - Exactly one knob fixing lambda:
        - `top_level_evaluations` m with `num_steps` N: the top correction is drawn
          about m times per trajectory, sum_n p_{n,K} = min(m, N) (p_K = min(1, m / N)
          for constant probabilities); a schedule needs N == its number of rows;
        - `variance_budget` V: the sum of v / p above equals V (or is as small as
          p <= 1 allows).
    - `coupling`: `"nested"` or `"independent"`.
    - `draws`: `"random"` or `"stratified"` (see `mlem_jax.draw_levels`).
    - `shared`: True for the levels of a `LevelFamily`, with `costs` the cumulative cost
        of a pass to each level: correction l then costs c_l - c_(l-1)
        (`correction_costs`).
    - `step_sizes`: for a schedule on a grid of unequal steps, |t_(n+1) - t_n| of each
        step, shape (N,) (e.g. `abs(diff(ts))`): row n of `variances` is weighted by
        h_n^2, and `variance_budget` is in those units.

    **Returns:**

    A NumPy array p of shape (K,), or (N, K) for a schedule, with p_1 = 1 and each p_l
    in (0, 1].
    """
    check_draws(draws)
    power = POWERS[draws]
    c = correction_costs(costs, coupling, shared=shared)
    v = _as_variances(variances, len(c))
    if step_sizes is not None:
        v = v * _step_weights(step_sizes, v)[:, None]
    if len(c) == 0:
        return np.ones(v.shape[:-1] + (1,))
    if (c <= 0).any():
        raise ValueError(f"`costs` must be > 0, got {np.asarray(costs).tolist()}.")
    if (top_level_evaluations is None) == (variance_budget is None):
        raise ValueError(
            "Pass exactly one of `top_level_evaluations` (with `num_steps`) or "
            f"`variance_budget`; got top_level_evaluations={top_level_evaluations}, "
            f"variance_budget={variance_budget}."
        )
    shape = (v / c) ** (1 / (power + 1))
    if not (shape > 0).any():
        return np.ones(v.shape[:-1] + (len(c) + 1,))
    if top_level_evaluations is not None:
        scale = _scale_for_top_level(shape, top_level_evaluations, num_steps)
    else:
        scale = _scale_for_budget(shape, v, variance_budget, power)
    p = np.minimum(1.0, scale * shape)
    # A p_l that is 1 up to rounding (m == N gives (m / N / shape_K) * shape_K) is 1, so
    # that the levels that cancel are recognised (`needed_levels`).
    p = np.where(np.isclose(p, 1.0, rtol=0.0, atol=1e-12), 1.0, p)
    p = np.where(p > 0, p, p[p > 0].min())
    if coupling == "nested":
        p = np.maximum.accumulate(p[..., ::-1], axis=-1)[..., ::-1]
    return np.concatenate([np.ones(p.shape[:-1] + (1,)), p], axis=-1)


def _as_variances(variances: Any, length: int) -> np.ndarray:
    v = np.asarray(variances, dtype=np.float64)
    if v.ndim not in (1, 2) or v.shape[-1] != length:
        raise ValueError(
            f"`variances` must have shape ({length},) (v_2..v_K) or (N, {length}) (one row "
            f"per step), got shape {v.shape}."
        )
    if not np.isfinite(v).all() or (v < 0).any():
        raise ValueError(f"`variances` must be finite and >= 0, got {v.tolist()}.")
    return v


def _step_weights(step_sizes: Any, v: np.ndarray) -> np.ndarray:
    """h_n^2 for the rows of a schedule's variances."""
    h = np.asarray(step_sizes, dtype=np.float64)
    if v.ndim != 2 or h.shape != v.shape[:1]:
        raise ValueError(
            "`step_sizes` weight the rows of a schedule: `variances` must be (N, K - 1) and "
            f"`step_sizes` (N,); got variances {v.shape} and step_sizes {h.shape}."
        )
    if not np.isfinite(h).all() or (h <= 0).any():
        raise ValueError(f"`step_sizes` must be finite and > 0, got {h.tolist()}.")
    return h**2


def _scale_for_top_level(shape: np.ndarray, evaluations: Any, num_steps: Any) -> float:
    """lambda with sum_n min(1, lambda shape_{n,K}) = min(m, N); m / N / shape_K when the
    probabilities are constant."""
    if not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
        raise ValueError(
            f"`num_steps` must be a positive int with `top_level_evaluations`, got {num_steps!r}."
        )
    if not evaluations > 0:
        raise ValueError(f"`top_level_evaluations` must be > 0, got {evaluations}.")
    top = shape[..., -1]
    if shape.ndim == 2 and shape.shape[0] != num_steps:
        raise ValueError(
            f"`num_steps` ({num_steps}) must equal the number of rows of `variances` "
            f"({shape.shape[0]}) for a schedule."
        )
    if not (top > 0).any():
        raise ValueError("`top_level_evaluations` needs v_K > 0 to fix the scale, got v_K = 0.")
    if shape.ndim == 1:
        return (evaluations / num_steps) / top
    target = min(float(evaluations), float((top > 0).sum()))
    return _bisect(
        lambda scale: np.minimum(1.0, scale * top).sum() < target, 1.0 / top[top > 0].min()
    )


def _scale_for_budget(shape: np.ndarray, v: np.ndarray, budget: float | None, power: int) -> float:
    """lambda with sum v / min(1, lambda shape)^power = budget over every entry, by
    bisection."""
    if budget is None or not budget > 0:
        raise ValueError(f"`variance_budget` must be > 0, got {budget}.")
    active = shape > 0

    def too_much_variance(scale):
        p = np.minimum(1.0, scale * shape[active])
        return float((v[active] / p**power).sum()) > budget

    return _bisect(too_much_variance, 1.0 / shape[active].min())


def _bisect(too_small: Any, high: float) -> float:
    """The smallest scale in (0, high] with `too_small(scale)` False (high if none)."""
    low = 1e-30
    if too_small(high):
        return high
    for _ in range(200):
        middle = np.sqrt(low * high)
        low, high = (middle, high) if too_small(middle) else (low, middle)
    return high
