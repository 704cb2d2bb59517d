"""Sampling by EM, ML-EM and T-Stitch, all through `mlem_jax.solve`, from t = 1 to t_min."""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._family import FamilyLevel, LevelFamily, marginal_costs
from .._solve import Solution, solve
from .sde import SDE, T_MIN, VPSDE, Drift, NoisePredictor, ScoreDrift, StitchedDrift


METHODS = ("em", "mlem", "tstitch")


def score_levels(
    models: Sequence[NoisePredictor],
    kind: str = "sde",
    sde: SDE = VPSDE(),
    prediction: str = "noise",
) -> list[ScoreDrift]:
    """One reverse-drift level per network `model(t, x)` of one sample, cheapest first:
    the shipped UNets, or your own noise-, score- or x0-prediction networks (see
    `ScoreDrift`).

    **Arguments:**

    - `models`: the networks, cheapest first, each returning an array of x's shape.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    - `sde`: the forward SDE the networks were trained for (`VPSDE` or `VESDE`).
    - `prediction`: what every network returns: `"noise"`, `"score"` or `"x0"`.

    **Returns:**

    A list of `ScoreDrift` levels for `sample`, `solve` and `calibrate`.
    """
    return [ScoreDrift(model, sde, kind, prediction) for model in models]


def initial_noise(
    key: PRNGKeyArray, count: int, image_shape: Sequence[int], sde: SDE | None = None
) -> Array:
    """X_1 ~ N(0, s^2 I), the start of the reverse process, shape (count, *image_shape):
    s = 1 (the VP-SDE), or `sde.prior_std` (e.g. sigma_max for a VE-SDE)."""
    if count < 1:
        raise ValueError(f"`count` must be >= 1, got {count}.")
    noise = jax.random.normal(key, (count, *image_shape))
    return noise if sde is None else sde.prior_std * noise


def stitch_switch(fraction: float, t_min: float = T_MIN) -> float:
    """The switch time of T-Stitch when the small model takes the first `fraction` of
    the time span [t_min, 1] (the steps nearest t = 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
    return 1.0 - fraction * (1.0 - t_min)


def stitch_evaluations(
    num_steps: int, switch: float, t_min: float = T_MIN, ts: Any = None
) -> np.ndarray:
    """How many steps of T-Stitch use the small and the large model, shape (2,), on
    `num_steps` equal steps from 1 to `t_min` or on the grid `ts`."""
    if ts is None:
        times = 1.0 + np.arange(num_steps) * ((t_min - 1.0) / num_steps)
    else:
        times = np.asarray(ts, dtype=np.float64)[:-1]
        num_steps = len(times)
    small = int(np.sum(times > switch))
    return np.array([small, num_steps - small])


def level_process(levels: Sequence[Drift] | LevelFamily) -> Any:
    """What carries the levels' `kind` and `sde`: the family, or the top level (the
    family of a `FamilyLevel`)."""
    if isinstance(levels, LevelFamily):
        return levels
    top = levels[-1]
    return top.family if isinstance(top, FamilyLevel) else top


def sample(
    method: str,
    levels: Sequence[Drift] | LevelFamily,
    x1: Array,
    num_steps: int | None = None,
    *,
    ts: Any = None,
    key: PRNGKeyArray | None = None,
    brownian: Any = None,
    probabilities: Any = None,
    draws: str = "random",
    groups: int = 1,
    switch: float | None = None,
    small: int = -2,
    t_min: float = T_MIN,
    saveat: Any = None,
    throw: bool = True,
) -> Solution:
    """Integrate the reverse process of `levels` from t = 1 to `t_min` with `solve`.

    **Arguments:**

    - `method`: `"em"` (the last, largest level alone), `"mlem"` (all levels, drawn
        with `probabilities`) or `"tstitch"` (level `small` while t > `switch`, then
        the largest).
    - `levels`: `ScoreDrift` levels of one kind, cheapest first, or a
        `mlem_jax.LevelFamily` with `kind` and `sde` attributes (e.g. an `ExitFamily`),
        whose ML-EM steps run one pass each. For `"sde"` levels the reverse SDE is
        sampled and `brownian` is required; for `"ode"` it is ignored.
    - `x1`: the initial noise, a batch (B, C, H, W) of images or (B, d) of latents.
    - The time grid, one of:
        - `num_steps`: that many equal steps from t = 1 to `t_min`;
        - `ts=`: any decreasing grid from 1 (or below) to `t_min`, e.g.
          `time_grid("logsnr", sde, N)`, which takes small steps near t = 0.
    - `key`: PRNG key of the ML-EM level draws (unused by the other methods).
    - `brownian`: a PRNG key or a diffrax Brownian path of the shape of `x1`.
    - `probabilities`: p_1..p_K for `"mlem"`, or a schedule (N, K), one row per step of
        the grid (see `mlem_jax.diffusion.calibrate.schedule_for`).
    - `draws`: ML-EM's level draws, `"random"` or `"stratified"` (see
        `mlem_jax.draw_levels`).
    - `groups`: ML-EM: G groups of the batch (a divisor of its size) with level draws
        of their own (see `mlem_jax.solve`). 1: the batch shares one draw sequence, so
        all its samples carry the same randomisation error and statistics over the
        batch (a mean, an FD) do not average it out; `len(x1)`: every sample its own.
    - `switch`, `small`: the T-Stitch switch time and the index of its small level.
    - `t_min`: the final time of `num_steps` equal steps (a grid `ts` ends where it
        ends).
    - `saveat`: passed to `solve`.
    - `throw`: stop at the first non-finite state with an error naming the step, its
        time and the levels evaluated there (`solve(..., throw=True)`); on by default.

    **Returns:**

    The `Solution` of `solve` (for T-Stitch, `evaluations` counts the stitched level;
    use `stitch_evaluations` for the split between its two models).
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    if not levels:
        raise ValueError("`levels` must hold at least one level.")
    if method == "mlem":
        if probabilities is None:
            raise ValueError("`probabilities` are required for method 'mlem'.")
        chosen = levels if isinstance(levels, LevelFamily) else list(levels)
    elif method == "tstitch":
        if switch is None:
            raise ValueError(
                "`switch` (time of the hand-over to the large model) is "
                "required for method 'tstitch'."
            )
        chosen = [StitchedDrift(levels[small], levels[-1], float(switch))]
        probabilities = None
    else:
        chosen, probabilities = [levels[-1]], None
    process = level_process(levels)
    sde_kind = process.kind == "sde"
    if sde_kind and brownian is None:
        raise ValueError(
            "`brownian` (a PRNG key or a Brownian path) is required for reverse-SDE levels."
        )
    if (num_steps is None) == (ts is None):
        raise ValueError(
            "Pass the time grid as `num_steps` (equal steps from 1 to `t_min`) or as `ts=`, "
            f"exactly one; got num_steps={num_steps!r} and ts={'None' if ts is None else 'a grid'}."
        )
    grid = (1.0, t_min, num_steps) if ts is None else (None, None, None)
    return solve(
        chosen,
        x1,
        *grid,
        ts=ts,
        probabilities=probabilities,
        key=key if method == "mlem" else None,
        draws=draws,
        diffusion=process.sde.diffusion if sde_kind else None,
        brownian=brownian if sde_kind else None,
        saveat=saveat,
        groups=groups if method == "mlem" else 1,
        throw=throw,
    )


def method_cost(
    method: str,
    evaluations: Any,
    level_costs: Any,
    num_steps: int,
    switch: float | None = None,
    small: int = -2,
    t_min: float = T_MIN,
    shared: bool = False,
    ts: Any = None,
) -> float:
    """Cost of one run: evaluations @ costs (ML-EM), N c_K (EM), or the T-Stitch split.

    **Arguments:**

    - `method`, `num_steps`, `switch`, `small`, `t_min`, `ts`: as in `sample` (with a
        grid `ts`, `num_steps` is its number of steps).
    - `evaluations`: `Solution.evaluations` of the run.
    - `level_costs`: cost of one evaluation of each level (FLOPs or seconds), (K,).
    - `shared`: the levels are a `LevelFamily`, `level_costs` the cumulative cost of a
        pass to each level: ML-EM's steps then cost the pass they ran.

    **Returns:**

    The cost as a float.
    """
    costs = np.asarray(level_costs, dtype=np.float64)
    if method == "mlem":
        return float(np.asarray(evaluations) @ (marginal_costs(costs) if shared else costs))
    if method == "tstitch":
        if switch is None:
            raise ValueError("`switch` is required for method 'tstitch'.")
        counts = stitch_evaluations(num_steps, switch, t_min, ts)
        return float(counts @ costs[[small, -1]])
    return float((num_steps if ts is None else len(ts) - 1) * costs[-1])
