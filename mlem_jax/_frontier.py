"""Cost-error frontiers: the lower envelope of (error, cost) points, its slope, speedups."""

from typing import Any

import numpy as np


def _errors_and_costs(errors: Any, costs: Any) -> tuple[np.ndarray, np.ndarray]:
    e = np.asarray(errors, dtype=np.float64)
    c = np.asarray(costs, dtype=np.float64)
    if e.ndim != 1 or e.shape != c.shape:
        raise ValueError(
            f"`errors` and `costs` must be 1-d of equal length, got {e.shape} and {c.shape}."
        )
    if not (np.isfinite(e) & np.isfinite(c)).all() or (e <= 0).any() or (c <= 0).any():
        raise ValueError("`errors` and `costs` must be finite and > 0.")
    return e, c


def pareto_frontier(errors: Any, costs: Any) -> np.ndarray:
    """Indices of the points on the lower envelope of cost against error.

    A point is on the frontier when every cheaper point has a larger error (ties in cost
    keep the smaller error). The indices come sorted by increasing cost, so by decreasing
    error.
    """
    e, c = _errors_and_costs(errors, costs)
    order = np.lexsort((e, c))
    kept, best = [], np.inf
    for index in order:
        if e[index] < best:
            kept.append(index)
            best = e[index]
    return np.asarray(kept, dtype=int)


def cost_to_reach(errors: Any, costs: Any, target: float) -> float:
    """The smallest cost among points with error <= `target`; inf when none reaches it."""
    e, c = _errors_and_costs(errors, costs)
    reached = e <= target
    return float(c[reached].min()) if reached.any() else float("inf")


def frontier_slope(errors: Any, costs: Any, *, error_range: tuple[float, float]) -> float:
    """Least-squares slope of log cost against log(1 / error) along the frontier.

    Only frontier points with error in `error_range = (low, high)` enter the fit; at
    least two are needed. A slope s means cost ~ error^-s.
    """
    e, c = _errors_and_costs(errors, costs)
    low, high = error_range
    front = pareto_frontier(e, c)
    inside = front[(e[front] >= low) & (e[front] <= high)]
    if len(inside) < 2:
        raise ValueError(
            f"frontier_slope needs two frontier points with error in [{low}, {high}], got "
            f"{len(inside)} (frontier errors: {np.sort(e[front]).tolist()})."
        )
    slope, _ = np.polyfit(np.log(1 / e[inside]), np.log(c[inside]), 1)
    return float(slope)
