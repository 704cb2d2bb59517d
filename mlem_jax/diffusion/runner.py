"""Compile a sampler ahead of time, run it once, and report samples, cost and seconds."""

import time
from collections.abc import Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .sample import T_MIN, method_cost, sample
from .sde import ScoreDrift


class Setting(NamedTuple):
    """One sampler configuration.

    - `method`: `"em"`, `"mlem"` or `"tstitch"`; `num_steps`: steps from 1 to t_min.
    - `probabilities`: p_l for ML-EM; `switch`, `small`: T-Stitch's hand-over.
    - `label`: a short description for tables.
    """

    method: str
    num_steps: int
    probabilities: tuple[float, ...] | None = None
    switch: float | None = None
    small: int = -2
    label: str = ""


class Outcome(NamedTuple):
    """A run: its samples, FLOPs per image, measured seconds and level evaluations."""

    samples: np.ndarray
    flops: float
    seconds: float
    evaluations: np.ndarray


def compile_sampler(setting: Setting, levels: Sequence[ScoreDrift], x1: Array,
                    brownian: Any, key: PRNGKeyArray | None):
    """The sampler of `setting`, lowered and compiled for these arguments (so a timed
    call measures the run only), as a zero-argument function returning a `Solution`."""
    dynamic, static = eqx.partition(list(levels), eqx.is_array)

    def run(dynamic, x1, brownian, key):
        return sample(
            setting.method, eqx.combine(dynamic, static), x1, setting.num_steps, key=key,
            brownian=brownian, probabilities=setting.probabilities, switch=setting.switch,
            small=setting.small,
        )

    compiled = jax.jit(run).lower(dynamic, x1, brownian, key).compile()
    return lambda: compiled(dynamic, x1, brownian, key)


def run_setting(setting: Setting, levels: Sequence[ScoreDrift], x1: Array, brownian: Any,
                key: PRNGKeyArray | None, flops: Sequence[float]) -> Outcome:
    """Compile, run once (timed) and account the FLOPs per image of `setting`.

    **Arguments:**

    - `setting`: the sampler configuration.
    - `levels`: `ScoreDrift` levels, cheapest first.
    - `x1`: the initial noise (B, C, H, W).
    - `brownian`: a PRNG key or a Brownian path of the shape of `x1` (SDE levels).
    - `key`: PRNG key of the ML-EM level draws.
    - `flops`: FLOPs of one evaluation of each level per image, (K,).

    **Returns:**

    An `Outcome`.
    """
    run = compile_sampler(setting, levels, x1, brownian, key)
    start = time.perf_counter()
    solution = jax.block_until_ready(run())
    seconds = time.perf_counter() - start
    cost = method_cost(setting.method, solution.evaluations, flops, setting.num_steps,
                       setting.switch, setting.small, T_MIN)
    return Outcome(np.asarray(solution.ys), cost, seconds, np.asarray(solution.evaluations))
