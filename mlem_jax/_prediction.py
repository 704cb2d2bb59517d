"""Know before you run: ML-EM's speedup over the best EM, predicted from a calibration."""

from typing import Any, NamedTuple

import numpy as np

from ._levels import needed_levels
from ._probabilities import correction_costs, optimal_probabilities


class EMErrorModel(NamedTuple):
    """Strong error of EM with level l and N steps: sqrt(floor_l^2 + (scale N^-order)^2).

    - `floors`: (K,) the error each level cannot go below (its drift error, carried to
        the final time).
    - `scale`, `order`: the discretisation error scale N^-order, common to the levels
        (it is a property of the dynamics, which the levels approximate).
    """

    floors: np.ndarray
    scale: float
    order: float

    def error(self, level: int, num_steps: Any) -> np.ndarray:
        """The modelled error of EM with `level` (0-based) and `num_steps` steps."""
        discretisation = self.scale * np.asarray(num_steps, np.float64) ** -self.order
        return np.sqrt(self.floors[level] ** 2 + discretisation**2)

    def steps_to_reach(self, level: int, target: float) -> float:
        """The (fractional) number of steps EM with `level` needs for `target`; inf if
        its floor is not below the target."""
        room = target**2 - self.floors[level] ** 2
        return (self.scale**2 / room) ** (0.5 / self.order) if room > 0 else np.inf


def fit_em_error_model(
    levels: Any, steps: Any, errors: Any, orders: Any = np.linspace(0.3, 2.0, 171)
) -> EMErrorModel:
    """Fit an `EMErrorModel` to measured EM errors.

    error^2 = floor_l^2 + scale^2 N^(-2 order) is linear in (floor_l^2, scale^2) for a
    given order: for each order on the grid, non-negative least squares on the squared
    errors relative to themselves, keeping the order with the smallest residual.

    **Arguments:**

    - `levels`: (P,) the 0-based level of each run.
    - `steps`: (P,) its number of steps N.
    - `errors`: (P,) its strong error.
    - `orders`: candidate orders.

    **Returns:**

    The fitted `EMErrorModel` (a level without runs gets floor inf).
    """
    levels = np.asarray(levels, int)
    steps, errors = np.asarray(steps, np.float64), np.asarray(errors, np.float64)
    if not levels.shape == steps.shape == errors.shape or levels.ndim != 1:
        raise ValueError(
            "`levels`, `steps` and `errors` must be 1-d of equal length, got "
            f"{levels.shape}, {steps.shape}, {errors.shape}."
        )
    if (levels < 0).any() or not (np.isfinite(errors) & (errors > 0) & (steps > 0)).all():
        raise ValueError("levels must be >= 0, steps > 0 and errors finite and > 0.")
    count = int(levels.max()) + 1
    best: tuple[float, float, np.ndarray] | None = None
    for order in orders:
        design = np.zeros((len(errors), count + 1))
        design[np.arange(len(errors)), levels] = 1.0
        design[:, -1] = steps ** (-2 * order)
        weights = 1.0 / errors**2  # relative residuals on the squared errors
        solution = _nonnegative_least_squares(design * weights[:, None], errors**2 * weights)
        residual = float(np.sum((design @ solution * weights - 1.0) ** 2))
        if best is None or residual < best[0]:
            best = (residual, order, solution)
    if best is None:
        raise ValueError("`orders` must hold at least one candidate order, got none.")
    _, order, solution = best
    present = np.bincount(levels, minlength=count) > 0
    floors = np.where(present, np.sqrt(solution[:count]), np.inf)
    return EMErrorModel(floors, float(np.sqrt(solution[-1])), float(order))


def _nonnegative_least_squares(a: np.ndarray, b: np.ndarray, sweeps: int = 500) -> np.ndarray:
    """argmin ||a x - b|| over x >= 0, by projected coordinate descent."""
    x = np.maximum(np.linalg.lstsq(a, b, rcond=None)[0], 0.0)
    norms = np.sum(a * a, axis=0)
    for _ in range(sweeps):
        for j in np.flatnonzero(norms > 0):
            residual = b - a @ x + a[:, j] * x[j]
            x[j] = max(0.0, float(a[:, j] @ residual) / norms[j])
    return x


class SpeedupPrediction(NamedTuple):
    """What `predict_speedup` expects at one target error.

    - `speedup`: `em_cost / mlem_cost` (0 where ML-EM cannot reach the target, inf
        where EM cannot).
    - `em_cost`, `em_level`, `em_steps`: the cheapest EM run reaching the target.
    - `mlem_cost`, `mlem_steps`, `probabilities`: the cheapest ML-EM run reaching it
        (per trajectory; `probabilities` the optimal p_l for that N).
    """

    speedup: float
    em_cost: float
    em_level: int
    em_steps: int
    mlem_cost: float
    mlem_steps: int
    probabilities: np.ndarray


def randomisation_variance(variances: Any, probabilities: Any, num_steps: int) -> float:
    """sum_l v_l (1/p_l - 1) / N: the variance that N steps of independent level draws add
    to the final state (each step's error has variance h^2 v_l (1/p_l - 1) per level),
    before the factor kappa by which the dynamics carry it to the final time. Stratified
    draws follow the same form with a smaller kappa (fitted on the testbed ladders of
    experiments/ladders.py: 0.35 to 0.63, against 0.42 to 1.15 for random draws)."""
    v = np.asarray(variances, np.float64)
    gap = 1.0 / np.asarray(probabilities, np.float64)[1:] - 1.0
    return float(np.sum(v * gap)) / num_steps


def predict_speedup(
    costs: Any,
    variances: Any,
    em: EMErrorModel,
    target: float,
    *,
    kappa: float = 1.0,
    draws: str = "random",
    shared: bool = False,
    steps: Any = None,
    evaluations: Any = None,
) -> SpeedupPrediction:
    """ML-EM's cost against the best EM's at a target strong error, before running it.

    EM: the cheapest level l and N with `em.error(l, N) <= target`, costing N c_l. ML-EM
    with every level: error^2 = floor_K^2 + (scale N^-order)^2 + kappa V(N, p), V the
    `randomisation_variance`, with p the `optimal_probabilities` of `draws` for N and
    about m top-level evaluations per trajectory, both searched over a grid; its cost is
    N sum_l p_l C_l (`correction_costs`, over the levels that do not cancel, with
    C_1 = c_1). kappa is how much of the summed step variance the dynamics carry to
    the final time; fit it on one or two ML-EM runs (measured on the diffusion
    testbeds: about 1.2 for random draws, 0.4 for stratified draws).

    **Arguments:**

    - `costs`: c_l per evaluation (cumulative per pass for a `LevelFamily`: `shared`).
    - `variances`: v_2..v_K, v_l = E||f^l - f^(l-1)||^2 along trajectories.
    - `em`: the `EMErrorModel` of the levels (`fit_em_error_model`).
    - `target`: the strong error to reach.
    - `kappa`, `draws`, `shared`: as above.
    - `steps`, `evaluations`: the grids of N and of m to search (defaults: 8 to 8192
        steps, 40 values of m from 0.25 to N).

    **Returns:**

    A `SpeedupPrediction`.
    """
    c = np.asarray(costs, np.float64)
    v = np.asarray(variances, np.float64)
    if c.ndim != 1 or v.shape != (len(c) - 1,) or len(em.floors) != len(c):
        raise ValueError(
            f"`costs` (K,), `variances` (K - 1,) and `em.floors` (K,) must agree, got "
            f"{c.shape}, {v.shape} and {np.shape(em.floors)}."
        )
    if not target > 0:
        raise ValueError(f"`target` must be > 0, got {target}.")
    per_correction = np.concatenate([c[:1], correction_costs(c, shared=shared)])
    em_options = [(em.steps_to_reach(level, target), level) for level in range(len(c))]
    em_steps, em_level = min(em_options, key=lambda option: np.ceil(option[0]) * c[option[1]])
    em_steps = int(np.ceil(em_steps)) if np.isfinite(em_steps) else 0
    em_cost = em_steps * c[em_level] if em_steps else np.inf
    steps = np.unique(np.round(np.geomspace(8, 8192, 41))).astype(int) if steps is None else steps
    best = (np.inf, 0, np.ones(len(c)))
    for n in np.asarray(steps, int):
        grid = np.geomspace(0.25, n, 40) if evaluations is None else evaluations
        for m in np.asarray(grid, np.float64)[np.asarray(grid) <= n]:
            p = optimal_probabilities(
                c, v, top_level_evaluations=m, num_steps=int(n), draws=draws, shared=shared
            )
            error2 = em.error(len(c) - 1, n) ** 2 + kappa * randomisation_variance(v, p, int(n))
            # A pass of a family pays every marginal cost up to its depth; separate
            # levels that cancel (`needed_levels`) are never evaluated.
            paid = p.copy()
            if not shared:
                paid[np.setdiff1d(np.arange(len(c)), needed_levels(p))] = 0.0
            cost = n * float(np.sum(paid * per_correction))
            if error2 <= target**2 and cost < best[0]:
                best = (cost, int(n), p)
    mlem_cost, mlem_steps, p = best
    speedup = em_cost / mlem_cost if np.isfinite(mlem_cost) else 0.0
    return SpeedupPrediction(
        float(speedup), float(em_cost), int(em_level), em_steps, float(mlem_cost), mlem_steps, p
    )
