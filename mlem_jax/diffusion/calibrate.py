"""Calibration along real sampling trajectories: v_l, eps_l, c_l (FLOPs, seconds), gamma."""

import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from jaxtyping import PRNGKeyArray

from .._calibrate import fit_gamma, level_costs, level_statistics
from .._probabilities import optimal_probabilities
from .sample import initial_noise, sample
from .sde import ScoreDrift


def calibrate(levels: Sequence[ScoreDrift], key: PRNGKeyArray, image_shape: Sequence[int],
              *, count: int = 16, num_steps: int = 64, repeats: int = 10) -> dict:
    """Measure the levels on (t, X_t) pairs of real sampling runs.

    **Arguments:**

    - `levels`: `ScoreDrift` levels, cheapest first.
    - `key`: PRNG key of the sampling run (initial noise, Brownian increments).
    - `count`: images per batch (the levels act on the batch; the numbers reported are
        per image).
    - `num_steps`: EM steps of the run; every step's (t, X_t) is a calibration point.
    - `image_shape`: (C, H, W) of one image.
    - `repeats`: timing repeats per level.

    **Returns:**

    A dict of lists: `variances` v_l (K - 1), `errors` eps_l against the largest level
    (K), `flops` and `seconds` per image per evaluation (K), `gamma` (fit on FLOPs) and
    `gamma_seconds` (None with fewer than 3 levels: eps_K = 0 leaves too few points), and `probabilities` optimal for the FLOPs costs with the largest
    level evaluated about twice per `num_steps` steps.
    """
    noise_key, path_key = jax.random.split(key)
    x1 = initial_noise(noise_key, count, image_shape)
    run = sample("em", levels, x1, num_steps, brownian=path_key, saveat="steps")
    stats = level_statistics(levels, run.ts, run.ys)
    costs = level_costs(levels, run.ts[0], x1, repeats=repeats)
    flops, seconds = costs.flops / count, costs.seconds / count
    variances, errors = stats.variances / count, stats.errors / np.sqrt(count)
    probabilities = optimal_probabilities(flops, variances, top_level_evaluations=2.0,
                                          num_steps=num_steps)
    return {
        "points": int(len(run.ts)), "images": count, "kind": levels[-1].kind,
        "variances": variances.tolist(), "errors": errors.tolist(),
        "flops": flops.tolist(), "seconds": seconds.tolist(),
        "gamma": fit_gamma(flops, errors) if len(levels) > 2 else None,
        "gamma_seconds": fit_gamma(seconds, errors) if len(levels) > 2 else None,
        "probabilities": probabilities.tolist(),
    }


def probabilities_for(calibration: dict, num_steps: int, top_level_evaluations: float = 2.0
                      ) -> tuple[float, ...]:
    """Optimal p_l (FLOPs costs, measured v_l) with the largest level drawn about
    `top_level_evaluations` times in `num_steps` steps."""
    p = optimal_probabilities(calibration["flops"], calibration["variances"],
                              top_level_evaluations=top_level_evaluations,
                              num_steps=num_steps)
    return tuple(float(x) for x in p)


def read_calibration(path: str | os.PathLike, kind: str) -> dict | None:
    """The `kind` entry of a calibration file written by `write_calibration`, or None
    when the file or the entry is missing."""
    path = Path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text()).get(kind)


def write_calibration(path: str | os.PathLike, result: dict) -> None:
    """Store `result` (from `calibrate`) under its kind in the JSON file at `path`,
    keeping the other kind's entry."""
    path = Path(path)
    stored = json.loads(path.read_text()) if path.exists() else {}
    stored[result["kind"]] = result
    path.write_text(json.dumps(stored, indent=2) + "\n")
