"""Calibration along real sampling trajectories: v_l, eps_l, c_l (FLOPs, seconds), gamma."""

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from .._calibrate import fit_gamma, level_costs, level_statistics
from .._family import LevelFamily
from .._probabilities import optimal_probabilities
from .._profile import VarianceProfile, variance_profile
from .._schedule import step_times
from .._sensitivity import error_sensitivity
from .grids import time_grid
from .sample import T_MIN, initial_noise, level_process, sample
from .sde import ScoreDrift


def calibrate(
    levels: Sequence[ScoreDrift] | LevelFamily,
    key: PRNGKeyArray,
    image_shape: Sequence[int],
    *,
    count: int = 16,
    num_steps: int = 64,
    repeats: int = 10,
    bins: int = 16,
    grid: str = "uniform",
) -> dict:
    """Measure the levels on (t, X_t) pairs of real sampling runs.

    **Arguments:**

    - `levels`: `ScoreDrift` levels, cheapest first: the shipped UNets' or your own
        networks' (`score_levels(models, kind, sde, prediction)`); or a `LevelFamily`
        with `sde` and `kind` (a `CascadeFamily`), whose level costs are cumulative.
    - `key`: PRNG key of the sampling run (initial noise, Brownian increments).
    - `count`: images per batch (the levels act on the batch; the numbers reported are
        per image).
    - `num_steps`: EM steps of the run; every step's (t, X_t) is a calibration point.
    - `image_shape`: (C, H, W) of one image.
    - `repeats`: timing repeats per level.
    - `bins`: time bins of the profile v_l(t), log-spaced over [t_min, 1].
    - `grid`: the run's time grid (`mlem_jax.diffusion.GRIDS`): `"uniform"` steps or a
        grid of the levels' SDE that puts more steps near t = 0 (`time_grid`).

    **Returns:**

    A dict of lists: `variances` v_l (K - 1), `errors` eps_l against the largest level
    (K), `flops` and `seconds` per image per evaluation (K), `gamma` (fit on FLOPs) and
    `gamma_seconds` (None with fewer than 3 levels: eps_K = 0 leaves too few points),
    `probabilities` optimal for the FLOPs costs with the largest level evaluated about
    twice per `num_steps` steps, `profile` (v_l(t) per image: `edges`, `variances`,
    `counts`), `sensitivity` (`times` t_(n+1), `gains` w_n of `error_sensitivity`) and
    `grid`, and `shared` (whether `levels` is a `LevelFamily`: `probabilities_for` and
    `schedule_for` then use the costs as cumulative).
    Every statistic is taken at the steps' start points, where the drift is evaluated.
    """
    noise_key, path_key = jax.random.split(key)
    process, shared = level_process(levels), isinstance(levels, LevelFamily)
    sde = process.sde
    x1 = initial_noise(noise_key, count, image_shape, sde)
    grid_ts = None if grid == "uniform" else time_grid(grid, sde, num_steps)
    steps = num_steps if grid_ts is None else None
    run = sample("em", levels, x1, steps, ts=grid_ts, brownian=path_key, saveat="steps")
    ts, ys = run.ts[:-1], run.ys[:-1]
    stats = level_statistics(levels, ts, ys)
    edges = np.geomspace(T_MIN, 1.0, bins + 1)
    profile = variance_profile(levels, ts, ys, bins=edges)
    sde_kind = process.kind == "sde"
    span = (1.0, T_MIN, num_steps) if grid_ts is None else (None, None, None)
    _, gains = error_sensitivity(
        levels[-1],
        x1,
        *span,
        ts=grid_ts,
        diffusion=sde.diffusion if sde_kind else None,
        brownian=path_key if sde_kind else None,
    )
    costs = level_costs(levels, run.ts[0], x1, repeats=repeats)
    flops, seconds = costs.flops / count, costs.seconds / count
    variances, errors = stats.variances / count, stats.errors / np.sqrt(count)
    probabilities = optimal_probabilities(
        flops, variances, top_level_evaluations=2.0, num_steps=num_steps, shared=shared
    )
    return {
        "points": int(len(ts)),
        "images": count,
        "kind": process.kind,
        "variances": variances.tolist(),
        "errors": errors.tolist(),
        "flops": flops.tolist(),
        "seconds": seconds.tolist(),
        "gamma": fit_gamma(flops, errors) if len(levels) > 2 else None,
        "gamma_seconds": fit_gamma(seconds, errors) if len(levels) > 2 else None,
        "probabilities": probabilities.tolist(),
        "profile": {
            "edges": edges.tolist(),
            "variances": (profile.variances / count).tolist(),
            "counts": profile.counts.tolist(),
        },
        "sensitivity": {"times": np.asarray(run.ts[1:]).tolist(), "gains": gains.tolist()},
        "grid": grid,
        "shared": shared,
    }


COSTS = ("flops", "seconds")


def calibration_costs(calibration: dict, costs: str) -> list[float]:
    """The measured cost of each level that p_l are optimised for: `"flops"` (XLA's
    count, the same on every machine) or `"seconds"` (measured where the calibration
    ran: recalibrate on other hardware)."""
    if costs not in COSTS:
        raise ValueError(f"`costs` must be one of {COSTS}, got {costs!r}.")
    if costs not in calibration:
        raise ValueError(
            f"`costs={costs!r}` needs a calibration with measured {costs}; this one holds "
            f"{sorted(k for k in calibration if k in COSTS)}."
        )
    return calibration[costs]


def probabilities_for(
    calibration: dict,
    num_steps: int,
    top_level_evaluations: float = 2.0,
    draws: str = "random",
    *,
    costs: str = "flops",
) -> tuple[float, ...]:
    """Optimal p_l (measured v_l, and the `costs` of `calibration_costs`) for `draws`
    with the largest level drawn about `top_level_evaluations` times in `num_steps`
    steps."""
    p = optimal_probabilities(
        calibration_costs(calibration, costs),
        calibration["variances"],
        top_level_evaluations=top_level_evaluations,
        num_steps=num_steps,
        draws=draws,
        shared=calibration.get("shared", False),
    )
    return tuple(float(x) for x in p)


def schedule_for(
    calibration: dict,
    num_steps: int,
    top_level_evaluations: float = 2.0,
    *,
    weighted: bool = False,
    floor: float = 1.0,
    draws: str = "random",
    costs: str = "flops",
    t_min: float = T_MIN,
    ts: Any = None,
) -> np.ndarray:
    """Optimal p_l(t_n), shape (num_steps, K): the measured v_l(t) (one global
    multiplier, the `costs` of `calibration_costs`) with the largest level drawn about
    `top_level_evaluations` times in `num_steps` steps, for `draws` (`"random"`:
    p proportional to sqrt(v / c); `"stratified"`: to (v / c)^(1/3)). On a grid `ts`
    (then `num_steps` must be its number of steps) the rows are weighted by the squared
    step sizes.

    `weighted` multiplies v_l(t_n) by the sensitivity w of the time the step's error
    lands at, t_(n+1): the final-time error is minimised instead of the sum of the
    per-step errors. That sensitivity is linear, and it is small near t = 1, where it
    would draw a level with a tiny p and weight its correction by 1/p: the correction
    then moves the sample far from where the networks were trained, and the sample can
    be lost. So a weighted schedule keeps at least `floor` times the unweighted one's
    probability at every step: a drawn correction then moves a sample (by
    h sqrt(v_l(t)) / p_l(t) in RMS) at most 1 / `floor` times as far as the unweighted
    optimum moves it, a distance that is the same at every step where p_l < 1. The
    default, 1, lets the weights raise p_l(t) but never lower it. Measured on the
    shipped cascade (64 steps, m = 8, 64 images with draws of their own): floor 0 gave
    p = 0.016 at t = 1 and 4 lost samples (error 543 where the median is 9); floor 0.5
    still lost one (51); floor 1 none (max 16, as unweighted), at 18% more evaluations.
    The floor's cost is in the rows' sums, which exceed `top_level_evaluations` for
    the top level (`schedule.sum(0)`).
    """
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"`floor` must be in [0, 1], got {floor}.")
    profile = calibration["profile"]
    stored = VarianceProfile(
        np.asarray(profile["edges"]),
        np.asarray(profile["variances"]),
        np.asarray(profile["counts"]),
    )
    if ts is None:
        grid = np.append(np.asarray(step_times(1.0, t_min, num_steps), np.float64), t_min)
    else:
        grid = np.asarray(ts, dtype=np.float64)
        if len(grid) != num_steps + 1:
            raise ValueError(
                f"`ts` must hold num_steps + 1 = {num_steps + 1} times, got {len(grid)}."
            )
    variances = stored.at(grid[:-1])

    def optimal(variances: np.ndarray) -> np.ndarray:
        return optimal_probabilities(
            calibration_costs(calibration, costs),
            variances,
            top_level_evaluations=top_level_evaluations,
            num_steps=num_steps,
            step_sizes=None if ts is None else np.abs(np.diff(grid)),
            draws=draws,
            shared=calibration.get("shared", False),
        )

    if not weighted:
        return optimal(variances)
    sensitivity = calibration["sensitivity"]
    times, gains = np.asarray(sensitivity["times"]), np.asarray(sensitivity["gains"])
    order = np.argsort(times)
    gain = np.interp(grid[1:], times[order], gains[order])[:, None]
    return np.maximum(optimal(variances * gain), floor * optimal(variances))


def read_calibration(path: str | os.PathLike, key: str) -> dict | None:
    """The `key` entry of a calibration file written by `write_calibration` (a kind,
    `"sde"` or `"ode"`, or a ladder's key, `mlem_jax.diffusion.levels.ladder_key`), or
    None when the file or the entry is missing."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(key)


def write_calibration(path: str | os.PathLike, result: dict, key: str | None = None) -> None:
    """Store `result` (from `calibrate`) in the JSON file at `path` under `key` (default:
    its kind), keeping the other entries."""
    path = Path(path)
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[result["kind"] if key is None else key] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(stored, indent=2) + "\n")
