"""Compile a sampler ahead of time, run it, and report samples, cost and seconds."""

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .._family import LevelFamily
from .._levels import needed_levels
from .._solve import Solution
from .grids import time_grid
from .sample import T_MIN, level_process, method_cost, sample
from .sde import Drift


class Setting(NamedTuple):
    """One sampler configuration.

    - `method`: `"em"`, `"mlem"` or `"tstitch"`; `num_steps`: steps from 1 to t_min.
    - `probabilities`: p_l for ML-EM, (K,) or a schedule (num_steps, K) as nested
        tuples or an array; `draws`: ML-EM's `"random"` or `"stratified"` level draws;
        `groups`: ML-EM's groups of the batch with draws of their own (see `sample`);
        `switch`, `small`: T-Stitch's hand-over.
    - `label`: a short description for tables.
    - `grid`: the time grid's family (`mlem_jax.diffusion.GRIDS`): `"uniform"` (equal
        steps, the default), `"edm"` or `"logsnr"` (`time_grid` for the levels' SDE).
    """

    method: str
    num_steps: int
    probabilities: Any = None
    switch: float | None = None
    small: int = -2
    label: str = ""
    draws: str = "random"
    groups: int = 1
    grid: str = "uniform"


class Outcome(NamedTuple):
    """A run: its samples, FLOPs per image, measured seconds and level evaluations."""

    samples: np.ndarray
    flops: float
    seconds: float
    evaluations: np.ndarray


def setting_grid(setting: Setting, levels: Sequence[Drift] | LevelFamily) -> np.ndarray | None:
    """The grid `ts` of `setting` for these levels' SDE; None for equal steps (then
    `sample` takes `setting.num_steps`)."""
    if setting.grid == "uniform":
        return None
    return time_grid(setting.grid, level_process(levels).sde, setting.num_steps)


Sampler = Callable[
    [Sequence[Drift] | LevelFamily, Array, Any, PRNGKeyArray, Array | None], Solution
]
_COMPILED: dict = {}  # run_setting's samplers, by signature, when the caller keeps none


def compile_sampler(
    setting: Setting, levels: Sequence[Drift] | LevelFamily, x1: Array, brownian: Any
) -> Sampler:
    """The sampler of `setting`, lowered and compiled for arguments like these, as
    `run(levels, x1, brownian, key, probabilities) -> Solution`: the levels' weights,
    the noise, the Brownian path, the ML-EM draw key and p_l are arguments, so one
    compilation serves every budget and draw sequence, and a timed call measures the
    run only. (Methods other than ML-EM ignore `key` and `probabilities`.)

    p is traced in the compiled sampler, so the levels that cancel from ML-EM's
    estimate at `setting.probabilities` (`mlem_jax.needed_levels`) are left out here,
    where p is known; `Solution.evaluations` still has one entry per level.
    """
    mlem = setting.method == "mlem"
    needed = np.array(needed_levels(setting.probabilities) if mlem else range(len(levels)))
    family = isinstance(levels, LevelFamily)  # one pass per step: nothing to leave out
    ts = setting_grid(setting, levels)
    dynamic, static = eqx.partition(_as_tree(levels), eqx.is_array)

    def run(dynamic, x1, brownian, key, probabilities):
        levels = eqx.combine(dynamic, static)
        if mlem and not family:
            levels, probabilities = [levels[i] for i in needed], probabilities[..., needed]
        solution = sample(
            setting.method,
            levels,
            x1,
            setting.num_steps if ts is None else None,
            ts=ts,
            key=key,
            brownian=brownian,
            probabilities=probabilities,
            draws=setting.draws,
            groups=setting.groups,
            switch=setting.switch,
            small=setting.small,
        )
        if not mlem or family:
            return solution
        evaluations = jnp.zeros(len(dynamic), solution.evaluations.dtype)
        return eqx.tree_at(
            lambda s: s.evaluations, solution, evaluations.at[needed].set(solution.evaluations)
        )

    key = jax.random.key(0)
    p = jnp.ones(np.shape(setting.probabilities)) if mlem else None
    compiled = jax.jit(run).lower(dynamic, x1, brownian, key, p).compile()
    return lambda levels, x1, brownian, key, p: compiled(
        eqx.filter(_as_tree(levels), eqx.is_array), x1, brownian, key, p
    )


def _array_signature(tree: Any) -> tuple:
    """What a sampler compiled with `tree` as an argument was traced for: its structure
    (static fields included), its arrays' shapes and dtypes, and its other leaves'
    values (e.g. a Brownian path's time span)."""
    arrays, others = eqx.partition(tree, eqx.is_array)
    shapes = tuple((leaf.shape, str(leaf.dtype)) for leaf in jax.tree_util.tree_leaves(arrays))
    return jax.tree_util.tree_structure(arrays), shapes, tuple(jax.tree_util.tree_leaves(others))


def _as_tree(levels: Sequence[Drift] | LevelFamily) -> Any:
    """The levels as one pytree: the family itself, or a list of levels."""
    return levels if isinstance(levels, LevelFamily) else list(levels)


def run_setting(
    setting: Setting,
    levels: Sequence[Drift] | LevelFamily,
    x1: Array,
    brownian: Any,
    key: PRNGKeyArray | None,
    flops: Sequence[float],
    cache: dict | None = None,
) -> Outcome:
    """Run `setting` once (timed, compilation excluded) and account its FLOPs per image.

    **Arguments:**

    - `setting`: the sampler configuration.
    - `levels`: `ScoreDrift` levels, cheapest first, or a `LevelFamily` (whose `flops`
        are then the cumulative cost of a pass to each level).
    - `x1`: the initial noise (B, C, H, W), or (B, d) latents.
    - `brownian`: a PRNG key or a Brownian path of the shape of `x1` (SDE levels).
    - `key`: PRNG key of the ML-EM level draws.
    - `flops`: FLOPs of one evaluation of each level per image, (K,).
    - `cache`: a dict that keeps compiled samplers between calls with the same method,
        steps, draws, groups, switch, needed levels and arguments of the same structure,
        shapes, dtypes (levels' and `brownian`'s included) and sharding; each call runs
        its own `levels`.
        Default: one dict for the whole process, so a second call with the same shapes
        does not compile again.

    **Returns:**

    An `Outcome`.
    """
    needed = needed_levels(setting.probabilities) if setting.method == "mlem" else None
    signature = (
        setting.method,
        setting.num_steps,
        setting.grid,
        setting.draws,
        setting.groups,
        setting.switch,
        setting.small,
        needed,
        np.shape(setting.probabilities),
        x1.shape,
        x1.dtype,
        getattr(x1, "sharding", None),
        _array_signature(_as_tree(levels)),
        _array_signature(brownian),
    )
    cache = _COMPILED if cache is None else cache
    if signature not in cache:
        cache[signature] = compile_sampler(setting, levels, x1, brownian)
    run = cache[signature]
    p = None if setting.probabilities is None else jnp.asarray(setting.probabilities)
    key = jax.random.key(0) if key is None else key
    start = time.perf_counter()
    solution = jax.block_until_ready(run(levels, x1, brownian, key, p))
    seconds = time.perf_counter() - start
    cost = method_cost(
        setting.method,
        solution.evaluations,
        flops,
        setting.num_steps,
        setting.switch,
        setting.small,
        T_MIN,
        shared=isinstance(levels, LevelFamily),
        ts=setting_grid(setting, levels),
    )
    return Outcome(np.asarray(solution.ys), cost, seconds, np.asarray(solution.evaluations))


def seconds_in_turns(
    runs: Mapping[str, tuple[Setting, Sequence[Drift] | LevelFamily]],
    x1: Array,
    brownian: Any,
    key: PRNGKeyArray | None,
    cache: dict | None = None,
    rounds: int = 2,
) -> dict[str, float]:
    """Seconds per sample of each named (setting, levels) on the batch `x1`, the samplers
    compiled first (`run_setting`) and timed in turns (a, b, ..., a, b, ...), so that
    every run sees the same load on a shared machine: the mean over `rounds`."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, (setting, levels) in runs.items():
            outcome = run_setting(setting, levels, x1, brownian, key, [0.0] * len(levels), cache)
            seconds[name].append(outcome.seconds)
    return {name: float(np.mean(s)) / len(x1) for name, s in seconds.items()}
