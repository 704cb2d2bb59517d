"""Sampling by EM, ML-EM and T-Stitch, all through `mlem_jax.solve`, from t = 1 to t_min."""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._family import FamilyLevel, LevelFamily, marginal_costs
from .._solve import Solution, solve
from .sde import VPSDE, Drift, ScoreDrift, StitchedDrift
from .unet import UNet


T_MIN = 1e-3
METHODS = ("em", "mlem", "tstitch")


def score_levels(
    models: Sequence[UNet], kind: str = "sde", sde: VPSDE = VPSDE()
) -> list[ScoreDrift]:
    """One reverse-drift level per UNet, cheapest first."""
    return [ScoreDrift(model, sde, kind) for model in models]


def initial_noise(key: PRNGKeyArray, count: int, image_shape: Sequence[int]) -> Array:
    """X_1 ~ N(0, I): the start of the reverse process, shape (count, *image_shape)."""
    if count < 1:
        raise ValueError(f"`count` must be >= 1, got {count}.")
    return jax.random.normal(key, (count, *image_shape))


def stitch_switch(fraction: float, t_min: float = T_MIN) -> float:
    """The switch time of T-Stitch when the small model takes the first `fraction` of
    the time span [t_min, 1] (the steps nearest t = 1)."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"`fraction` must be in [0, 1], got {fraction}.")
    return 1.0 - fraction * (1.0 - t_min)


def stitch_evaluations(num_steps: int, switch: float, t_min: float = T_MIN) -> np.ndarray:
    """How many steps of T-Stitch use the small and the large model, shape (2,)."""
    times = 1.0 + np.arange(num_steps) * ((t_min - 1.0) / num_steps)
    small = int(np.sum(times > switch))
    return np.array([small, num_steps - small])


def _process(levels: Sequence[Drift] | LevelFamily) -> Any:
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
    num_steps: int,
    *,
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
    - `num_steps`: number of equal steps.
    - `key`: PRNG key of the ML-EM level draws (unused by the other methods).
    - `brownian`: a PRNG key or a diffrax Brownian path of the shape of `x1`.
    - `probabilities`: p_1..p_K for `"mlem"`, or a schedule (`num_steps`, K) (see
        `mlem_jax.diffusion.calibrate.schedule_for`).
    - `draws`: ML-EM's level draws, `"random"` or `"stratified"` (see
        `mlem_jax.draw_levels`).
    - `groups`: ML-EM: G groups of the batch (a divisor of its size) with level draws
        of their own (see `mlem_jax.solve`). 1: the batch shares one draw sequence, so
        all its samples carry the same randomisation error and statistics over the
        batch (a mean, an FD) do not average it out; `len(x1)`: every sample its own.
    - `switch`, `small`: the T-Stitch switch time and the index of its small level.
    - `t_min`: the final time.
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
    process = _process(levels)
    sde_kind = process.kind == "sde"
    if sde_kind and brownian is None:
        raise ValueError(
            "`brownian` (a PRNG key or a Brownian path) is required for reverse-SDE levels."
        )
    return solve(
        chosen,
        x1,
        1.0,
        t_min,
        num_steps,
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
) -> float:
    """Cost of one run: evaluations @ costs (ML-EM), N c_K (EM), or the T-Stitch split.

    **Arguments:**

    - `method`, `num_steps`, `switch`, `small`, `t_min`: as in `sample`.
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
        counts = stitch_evaluations(num_steps, switch, t_min)
        return float(counts @ costs[[small, -1]])
    return float(num_steps * costs[-1])
