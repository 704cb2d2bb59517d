"""v_l(t): the level differences binned in time, for time-dependent probabilities."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
from jaxtyping import Array, Float, PyTree

from ._calibrate import pointwise_squares
from ._family import LevelFamily
from ._validation import check_levels


class VarianceProfile(NamedTuple):
    """v_l(t) = E||f^l(t, X_t) - f^(l-1)(t, X_t)||^2, piecewise constant in t.

    - `edges`: bin edges in time, increasing, shape (B + 1,).
    - `variances`: shape (B, K - 1), the mean over the points of each bin.
    - `counts`: shape (B,), how many points fell in each bin.
    """

    edges: np.ndarray
    variances: np.ndarray
    counts: np.ndarray

    def at(self, ts: Any) -> np.ndarray:
        """v_l at the times `ts` (e.g. `step_times(t0, t1, N)`), shape (len(ts), K - 1).

        Times outside the edges take the nearest bin; an empty bin takes the nearest
        bin with points.
        """
        ts = np.asarray(ts, dtype=np.float64).reshape(-1)
        index = np.clip(np.searchsorted(self.edges, ts, side="right") - 1, 0, len(self.counts) - 1)
        filled = np.flatnonzero(self.counts > 0)
        centres = (self.edges[:-1] + self.edges[1:]) / 2
        nearest = filled[np.abs(centres[filled][None, :] - centres[:, None]).argmin(axis=1)]
        return self.variances[nearest[index]]


def variance_profile(
    levels: Sequence[Callable] | LevelFamily,
    ts: Float[Array, " P"],
    ys: PyTree,
    args: Any = None,
    *,
    bins: int | Any = 16,
    batch_size: int | None = None,
) -> VarianceProfile:
    """Estimate v_l(t) on points (ts[i], ys[i]) taken along trajectories, binned in t.

    **Arguments:**

    - `levels`: callables `f(t, y, args)`, cheapest first (at least two).
    - `ts`: times, shape (P,).
    - `ys`: states with a leading axis of length P, e.g. `solve(..., saveat="steps")`.
    - `args`: passed to every level.
    - `bins`: a number of equal-width bins over [min ts, max ts], or increasing edges.
    - `batch_size`: points evaluated at once (`lax.map`); None evaluates all at once.

    **Returns:**

    A `VarianceProfile`; `profile.at(times)` feeds `optimal_probabilities`.
    """
    levels = check_levels(levels)
    if len(levels) < 2:
        raise ValueError(
            f"`levels` must hold at least two levels to have differences, got {len(levels)}."
        )
    squares = pointwise_squares(levels, None, ts, ys, args, batch_size)
    times = np.asarray(ts, dtype=np.float64)
    edges = _edges(bins, times)
    index = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2)
    counts = np.bincount(index, minlength=len(edges) - 1)
    sums = np.zeros((len(edges) - 1, len(levels) - 1))
    np.add.at(sums, index, squares[:, : len(levels) - 1])
    variances = sums / np.maximum(counts, 1)[:, None]
    return VarianceProfile(edges=edges, variances=variances, counts=counts)


def _edges(bins: Any, times: np.ndarray) -> np.ndarray:
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, bool):
        if bins < 1:
            raise ValueError(f"`bins` must be a positive int or increasing edges, got {bins}.")
        return np.linspace(times.min(), times.max(), bins + 1)
    edges = np.asarray(bins, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
        raise ValueError(
            "`bins` must be a positive int or a 1-d array of at least two increasing "
            f"edges, got {edges.tolist()}."
        )
    return edges
