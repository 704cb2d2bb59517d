"""The HTMC experiment's problem, Brownian paths, solves, calibration and sweeps."""

import dataclasses
import functools
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run. The level ladder is the same for every gamma, so compiled
    solves are shared between gammas (only the amplitudes differ)."""

    gammas: tuple[float, ...]
    num_levels: int
    step_counts: tuple[int, ...]
    top_level_budgets: tuple[float, ...]
    reference_steps: int
    num_chunks: int
    paths_per_chunk: int
    comparison_gamma: float | None
    dim: int = 4
    sigma: float = 1.0
    reference_factor: int = 4
    top_drift_error: float = 2e-3
    calibration_steps: int = 32
    timing_repeats: int = 5
    seed: int = 0


class Paths(eqx.Module):
    """Initial states and Brownian paths in chunks; the paths of a chunk share one
    level-draw key."""

    y0: jax.Array  # (R, C, d)
    brownian: mlem_jax.SampledBrownianPath  # values (R, C, G + 1, d)
    level_keys: jax.Array  # (R,)

    def chunk(self, index: int) -> tuple:
        """(y0, brownian, level key) of chunk `index`."""
        return jax.tree.map(lambda x: x[index], (self.y0, self.brownian, self.level_keys))


def feature_counts(settings: Settings) -> list[int]:
    """M_1..M_L, then the reference's M_ref = reference_factor * M_L."""
    counts = [2**level for level in range(settings.num_levels)]
    return counts + [counts[-1] * settings.reference_factor]


def drift_family(gamma: float, settings: Settings) -> tuple[list, Any]:
    """Levels f^1..f^L and the reference drift for one gamma. The amplitude puts the top
    level's nominal drift error at `top_drift_error` (see `htmc.py`)."""
    counts = feature_counts(settings)
    drifts = mlem_jax.random_feature_levels(
        jax.random.key(settings.seed), settings.dim, counts, 0.5 + 1.0 / gamma
    )
    nominal_top_error = np.sqrt(gamma / 2) * counts[-2] ** (-1.0 / gamma)
    amplitude = settings.top_drift_error / nominal_top_error
    drifts = [eqx.tree_at(lambda f: f.amplitudes, f, f.amplitudes * amplitude) for f in drifts]
    return drifts[:-1], drifts[-1]


@functools.partial(jax.jit, static_argnames=("shape", "num_intervals"))
def brownian_paths(keys: jax.Array, *, shape: tuple, num_intervals: int):
    """One `VirtualBrownianTree` on [0, 1] per key of the (R, C) array `keys`, stored on
    the reference grid."""

    def one(key):
        tree = diffrax.VirtualBrownianTree(0.0, 1.0, tol=0.5 / num_intervals, shape=shape, key=key)
        return mlem_jax.sample_brownian_path(tree, num_intervals)

    return jax.vmap(jax.vmap(one))(keys)


def make_paths(settings: Settings) -> Paths:
    """X_0 ~ N(0, I), Brownian paths and level keys, shared by every gamma."""
    key_y0, key_brownian, key_levels = jax.random.split(jax.random.key(settings.seed + 1), 3)
    shape = (settings.num_chunks, settings.paths_per_chunk)
    return Paths(
        y0=jax.random.normal(key_y0, (*shape, settings.dim)),
        brownian=brownian_paths(
            jax.random.split(key_brownian, shape),
            shape=(settings.dim,),
            num_intervals=settings.reference_steps,
        ),
        level_keys=jax.random.split(key_levels, settings.num_chunks),
    )


def constant_diffusion(t, y, sigma):
    """g(t, y) = sigma, passed through `args` so that sigma is traced, not static."""
    return sigma


@functools.partial(jax.jit, static_argnames=("num_steps", "coupling", "saveat"))
def solve_chunk(
    levels,
    probabilities,
    flops,
    y0,
    brownian,
    level_key,
    sigma,
    *,
    num_steps,
    coupling,
    saveat=None,
):
    """`solve` `vmap`ped over the paths of one chunk, with one unbatched level key.

    Returns the states, (C, d) (or (C, S, d) with `saveat`), and the FLOPs spent per path.
    """

    def one(y0, path):
        return mlem_jax.solve(
            levels,
            y0,
            0.0,
            1.0,
            num_steps,
            probabilities=probabilities,
            diffusion=constant_diffusion,
            key=level_key,
            brownian=path,
            args=sigma,
            coupling=coupling,
            saveat=saveat,
            costs=flops,
        )

    solution = jax.vmap(one)(y0, brownian)
    return solution.ys, solution.cost[0]


def solve_paths(
    levels, probabilities, flops, paths, sigma, *, num_steps, coupling="nested", saveat=None
):
    """Solve chunk by chunk (one compiled function): the states of all paths, (R, C, ...),
    and the mean FLOPs spent per path."""
    outputs = [
        solve_chunk(
            levels,
            probabilities,
            flops,
            *paths.chunk(index),
            sigma,
            num_steps=num_steps,
            coupling=coupling,
            saveat=saveat,
        )
        for index in range(paths.y0.shape[0])
    ]
    states, costs = zip(*outputs)
    return jnp.stack(states), float(np.mean(costs))


@functools.partial(jax.jit, static_argnames=("num_steps", "coupling"))
def production_solve(
    levels, probabilities, y0, noise_key, level_key, sigma, *, num_steps, coupling
):
    """X_T of a batch of paths in one `vmap`, one level key, PRNG-key increments: what a
    user runs, and what is timed."""

    def one(y0, brownian_key):
        return mlem_jax.solve(
            levels,
            y0,
            0.0,
            1.0,
            num_steps,
            probabilities=probabilities,
            diffusion=constant_diffusion,
            key=level_key,
            brownian=brownian_key,
            args=sigma,
            coupling=coupling,
        ).ys

    return jax.vmap(one)(y0, jax.random.split(noise_key, y0.shape[0]))


def chunk_squared_errors(ys: jax.Array, reference: jax.Array) -> list[float]:
    """Mean over each chunk's paths of |X_T - X_T^ref|^2, one value per chunk. The strong
    error is the square root of their mean; resampling chunks bootstraps it."""
    return jnp.mean(jnp.sum(jnp.square(ys - reference), axis=-1), axis=1).tolist()


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What every configuration of one gamma shares."""

    levels: list
    paths: Paths
    reference_ys: jax.Array
    flops: np.ndarray
    variances: np.ndarray
    settings: Settings

    def run(self, levels: slice, probabilities, num_steps: int, coupling="nested") -> dict:
        """Strong error (and its per-chunk parts) and FLOPs per path of
        `self.levels[levels]` with p."""
        ys, flops = solve_paths(
            self.levels[levels],
            None if probabilities is None else jnp.asarray(probabilities),
            self.flops[levels],
            self.paths,
            self.settings.sigma,
            num_steps=num_steps,
            coupling=coupling,
        )
        squared = chunk_squared_errors(ys, self.reference_ys)
        return dict(
            error=float(np.sqrt(np.mean(squared))), flops=flops, chunk_squared_errors=squared
        )

    def seconds_per_path(self, record: dict) -> float:
        """Median wall-clock of the production solve of a record's configuration over all
        paths, divided by their number."""
        if "level" in record:
            levels, probabilities, level_key = [self.levels[record["level"] - 1]], None, None
        else:
            levels = self.levels[: record["top_level"]]
            probabilities = jnp.asarray(record["probabilities"])
            level_key = self.paths.level_keys[0]
        y0 = self.paths.y0.reshape(-1, self.settings.dim)
        solve = functools.partial(
            production_solve,
            num_steps=record["num_steps"],
            coupling=record.get("coupling", "nested"),
        )
        seconds = mlem_jax.median_seconds(
            solve,
            levels,
            probabilities,
            y0,
            jax.random.key(self.settings.seed + 2),
            level_key,
            self.settings.sigma,
            repeats=self.settings.timing_repeats,
        )
        return seconds / len(y0)


def prepare(gamma: float, paths: Paths, settings: Settings) -> tuple[Experiment, dict]:
    """Reference solution and level calibration (eps_l, v_l, FLOPs, seconds, gamma)."""
    levels, reference = drift_family(gamma, settings)
    reference_ys, _ = solve_paths(
        [reference],
        None,
        jnp.ones(1),
        paths,
        settings.sigma,
        num_steps=settings.reference_steps,
    )
    trajectories, _ = solve_paths(
        [reference],
        None,
        jnp.ones(1),
        paths,
        settings.sigma,
        num_steps=settings.calibration_steps,
        saveat="steps",
    )
    ys = trajectories.reshape(-1, settings.dim)
    times = jnp.linspace(0.0, 1.0, settings.calibration_steps + 1)
    ts = jnp.tile(times, len(ys) // len(times))
    statistics = mlem_jax.level_statistics(levels, ts, ys, reference=reference, batch_size=256)
    costs = mlem_jax.level_costs(levels, 0.0, ys[0], repeats=5)
    calibration = {
        "feature_counts": feature_counts(settings)[:-1],
        "reference_feature_count": feature_counts(settings)[-1],
        "drift_errors": statistics.errors.tolist(),
        "level_variances": statistics.variances.tolist(),
        "flops": costs.flops.tolist(),
        "seconds": costs.seconds.tolist(),
        "gamma_measured": mlem_jax.fit_gamma(costs.flops, statistics.errors),
    }
    experiment = Experiment(
        levels, paths, reference_ys, costs.flops, statistics.variances, settings
    )
    return experiment, calibration


def sweep_em(experiment: Experiment) -> list[dict]:
    """EM with each level l as the drift, for each step count N."""
    records = []
    for level in range(1, len(experiment.levels) + 1):
        for num_steps in experiment.settings.step_counts:
            outcome = experiment.run(slice(level - 1, level), None, num_steps)
            records.append(dict(level=level, num_steps=num_steps, **outcome))
    return records


def naive_probabilities(num_levels: int) -> np.ndarray:
    """p_l = 2^-(l-1): the probability halves as the level's cost doubles."""
    return 0.5 ** np.arange(num_levels)


def mlem_probabilities(experiment, top_level, num_steps, budget, coupling, rule):
    """Naive p, or `optimal_probabilities` on the measured FLOPs and v_l with p_K = m / N."""
    if rule == "naive":
        return naive_probabilities(top_level)
    return mlem_jax.optimal_probabilities(
        experiment.flops[:top_level],
        experiment.variances[: top_level - 1],
        top_level_evaluations=budget,
        num_steps=num_steps,
        coupling=coupling,
    )


def sweep_mlem(experiment: Experiment, coupling="nested", rule="optimal") -> list[dict]:
    """ML-EM over top level K >= 2, step count N and top-level budget m < N.

    The naive rule has no budget: p is fixed, only K and N vary.
    """
    budgets = experiment.settings.top_level_budgets if rule == "optimal" else (None,)
    records = []
    for top_level in range(2, len(experiment.levels) + 1):
        for num_steps in experiment.settings.step_counts:
            for budget in budgets:
                if budget is not None and budget >= num_steps:
                    continue
                p = mlem_probabilities(experiment, top_level, num_steps, budget, coupling, rule)
                outcome = experiment.run(slice(top_level), p, num_steps, coupling)
                records.append(
                    dict(
                        top_level=top_level,
                        num_steps=num_steps,
                        top_level_evaluations=budget,
                        coupling=coupling,
                        probabilities=p.tolist(),
                        **outcome,
                    )
                )
    return records
