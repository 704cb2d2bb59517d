"""The SDE demo: EM and ML-EM on random-feature levels, cost and strong error side by side."""

import functools
import time

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._calibrate import fit_gamma, level_costs, level_statistics
from ._probabilities import optimal_probabilities
from ._solve import solve
from ._synthetic import random_feature_drift
from ._timing import median_seconds


DIM, ALPHA, SIGMA, T = 8, 0.9, 0.5, 1.0  # alpha = 0.9: nominal gamma = 1 / 0.4 = 2.5
FEATURE_COUNTS = (4, 16, 64, 256, 1024)
REFERENCE_FEATURES, REFERENCE_STEPS = 4096, 1024


def _diffusion(t, y, args):
    return SIGMA


def _brownian_paths(keys):
    return jax.vmap(
        lambda k: diffrax.VirtualBrownianTree(0.0, T, tol=T / 2**14, shape=(DIM,), key=k)
    )(keys)


def _batched_solver(levels, num_steps, probabilities, key):
    """Final states of a batch of paths; the level draws are shared by the batch.

    `brownian` is a batch of diffrax paths (for errors: one path across step counts) or
    of keys (for timing: increments drawn per step, as when sampling).
    """
    return functools.partial(_batched_solve, levels, num_steps, probabilities, key)


@eqx.filter_jit
def _batched_solve(levels, num_steps, probabilities, key, y0, brownian):
    """`_batched_solver`'s solve: one function, compiled once per shape, not per call."""

    def one_path(y0, brownian):
        return solve(
            levels,
            y0,
            0.0,
            T,
            num_steps,
            probabilities=probabilities,
            key=key,
            diffusion=_diffusion,
            brownian=brownian,
        )

    return jax.vmap(one_path)(y0, brownian)


def run(num_paths: int = 256, seed: int = 0) -> list[dict]:
    """Calibrate the levels, then solve with EM and ML-EM; print and return the rows."""
    start = time.perf_counter()
    k_drift, k_y0, k_paths, k_levels = jax.random.split(jax.random.key(seed), 4)
    reference = random_feature_drift(k_drift, DIM, REFERENCE_FEATURES, ALPHA)
    levels = [reference.truncate(m) for m in FEATURE_COUNTS]
    y0 = jax.random.normal(k_y0, (num_paths, DIM))
    paths = _brownian_paths(jax.random.split(k_paths, num_paths))
    noise_keys = jax.random.split(k_paths, num_paths)

    exact = _batched_solver([reference], REFERENCE_STEPS, None, None)(y0, paths).ys
    along = solve(
        [levels[-1]],
        y0[0],
        0.0,
        T,
        64,
        saveat="steps",
        diffusion=_diffusion,
        brownian=jax.tree_util.tree_map(lambda x: x[0], paths),
    )
    stats = level_statistics(levels, along.ts, along.ys, reference=reference)
    costs = level_costs(levels, 0.0, y0[0])
    gamma = fit_gamma(costs.flops, stats.errors)
    print(
        f"levels: features {list(FEATURE_COUNTS)}, FLOPs per evaluation "
        f"{costs.flops.astype(int).tolist()}"
    )
    print(
        f"drift errors eps_l {np.round(stats.errors, 4).tolist()}; "
        f"gamma measured {gamma:.2f} (nominal {1 / (ALPHA - 0.5):.2f})"
    )

    def strong_error(ys):
        return float(jnp.sqrt(jnp.mean(jnp.sum((ys - exact) ** 2, axis=-1))))

    rows = []
    for num_steps in (16, 64, 256):
        em = _batched_solver(levels[-1:], num_steps, None, None)
        em_error = strong_error(em(y0, paths).ys)
        # Randomisation variance of the path ~ T h sum_l (1 / p_l - 1) v_l; put its
        # square root at half EM's error.
        budget = (0.5 * em_error) ** 2 / (T * T / num_steps) + stats.variances.sum()
        p = optimal_probabilities(costs.flops, stats.variances, variance_budget=budget)
        mlem = _batched_solver(levels, num_steps, jnp.asarray(p), k_levels)
        for method, solver in (("EM", em), ("ML-EM", mlem)):
            sol = solver(y0, paths)
            used = jnp.asarray(costs.flops[-sol.evaluations.shape[-1] :])
            rows.append(
                dict(
                    method=method,
                    steps=num_steps,
                    strong_error=strong_error(sol.ys),
                    flops=float(sol.evaluations[0] @ used) * num_paths,
                    seconds=median_seconds(solver, y0, noise_keys, repeats=3),
                    top_level_evaluations=int(sol.evaluations[0, -1]),
                )
            )
    print(
        f"\n{'method':>6} {'steps':>6} {'strong error':>13} {'MFLOPs':>9} {'ms':>8} "
        f"{'top-level evals':>16}"
    )
    for r in rows:
        print(
            f"{r['method']:>6} {r['steps']:>6} {r['strong_error']:>13.5f} "
            f"{r['flops'] / 1e6:>9.2f} {r['seconds'] * 1e3:>8.2f} "
            f"{r['top_level_evaluations']:>16}"
        )
    print(
        f"\n{num_paths} paths, dimension {DIM}; reference: EM with {REFERENCE_FEATURES} "
        f"features and {REFERENCE_STEPS} steps on the same Brownian paths; "
        "ML-EM's probabilities put its randomisation error at half EM's error. Times are "
        "medians with per-step key-drawn noise, as in sampling. "
        f"Took {time.perf_counter() - start:.0f} s."
    )
    return rows
