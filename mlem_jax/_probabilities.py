"""Choosing the level probabilities p_l from measured costs and variances."""

from typing import Any

import numpy as np

from ._validation import check_coupling


def _as_positive_vector(name: str, value: Any, length: int | None) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1 or (length is not None and array.shape[0] != length):
        expected = "a 1-d array" if length is None else f"shape ({length},)"
        raise ValueError(f"`{name}` must have {expected}, got shape {array.shape}.")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"`{name}` must be finite and >= 0, got {array.tolist()}.")
    return array


def correction_costs(costs: Any, coupling: str = "nested") -> np.ndarray:
    """Expected extra cost of drawing correction l = 2..K, shape (K - 1,).

    Nested: c_l (f^(l-1) is already evaluated). Independent: c_l + c_(l-1).
    """
    check_coupling(coupling)
    c = _as_positive_vector("costs", costs, None)
    return c[1:] + (c[:-1] if coupling == "independent" else 0.0)


def optimal_probabilities(
    costs: Any,
    variances: Any,
    *,
    top_level_evaluations: float | None = None,
    num_steps: int | None = None,
    variance_budget: float | None = None,
    coupling: str = "nested",
) -> np.ndarray:
    """p_l minimising the expected cost sum_l p_l C_l under sum_l v_l / p_l <= V.

    The Lagrange solution is p_l = min(1, lambda sqrt(v_l / C_l)) for l >= 2 and p_1 = 1,
    where C_l is the cost of drawing correction l (`correction_costs`). Under the nested
    coupling the result is made non-increasing by raising p_l to max_{m >= l} p_m; this
    only lowers the variance. A level with v_l = 0 gets the smallest positive
    probability among the others (it never needs evaluating, but p must stay > 0).

    **Arguments:**

    - `costs`: c_1..c_K, cost of one evaluation of each level (FLOPs or seconds).
    - `variances`: v_2..v_K, v_l = E||f^l - f^(l-1)||^2, shape (K - 1,).
    - Exactly one knob fixing lambda:
        - `top_level_evaluations` m with `num_steps` N: p_K = min(1, m / N), i.e. the
          top correction is drawn about m times per trajectory;
        - `variance_budget` V: sum_l v_l / p_l = V (or as small as p <= 1 allows).
    - `coupling`: `"nested"` or `"independent"`.

    **Returns:**

    A NumPy array p of shape (K,) with p_1 = 1 and each p_l in (0, 1].
    """
    c = correction_costs(costs, coupling)
    v = _as_positive_vector("variances", variances, len(c))
    if len(c) == 0:
        return np.ones(1)
    if (c <= 0).any():
        raise ValueError(f"`costs` must be > 0, got {np.asarray(costs).tolist()}.")
    if (top_level_evaluations is None) == (variance_budget is None):
        raise ValueError(
            "Pass exactly one of `top_level_evaluations` (with `num_steps`) or "
            f"`variance_budget`; got top_level_evaluations={top_level_evaluations}, "
            f"variance_budget={variance_budget}."
        )
    shape = np.sqrt(v / c)
    if not (shape > 0).any():
        return np.ones(len(c) + 1)
    if top_level_evaluations is not None:
        if not isinstance(num_steps, int) or num_steps <= 0:
            raise ValueError(
                "`num_steps` must be a positive int with `top_level_evaluations`, got "
                f"{num_steps!r}."
            )
        if not top_level_evaluations > 0:
            raise ValueError(
                f"`top_level_evaluations` must be > 0, got {top_level_evaluations}."
            )
        if shape[-1] == 0:
            raise ValueError(
                "`top_level_evaluations` needs v_K > 0 to fix the scale, got v_K = 0."
            )
        scale = (top_level_evaluations / num_steps) / shape[-1]
    else:
        scale = _scale_for_budget(shape, v, variance_budget)
    p = np.minimum(1.0, scale * shape)
    p = np.where(p > 0, p, p[p > 0].min())
    if coupling == "nested":
        p = np.maximum.accumulate(p[::-1])[::-1]
    return np.concatenate([[1.0], p])


def _scale_for_budget(shape: np.ndarray, v: np.ndarray, budget: float | None) -> float:
    """lambda with sum_l v_l / min(1, lambda shape_l) = budget, by bisection."""
    if budget is None or not budget > 0:
        raise ValueError(f"`variance_budget` must be > 0, got {budget}.")
    active = shape > 0

    def variance(scale):
        p = np.minimum(1.0, scale * shape[active])
        return float((v[active] / p).sum())

    low, high = 1e-30, 1.0 / shape[active].min()
    if variance(high) >= budget:
        return high
    for _ in range(200):
        middle = np.sqrt(low * high)
        low, high = (middle, high) if variance(middle) > budget else (low, middle)
    return high
