"""The testbed demo: EM and ML-EM on the shipped ladder of the exact-score testbed, from
the same noise and Brownian path, against the exact-score solution; digit grids."""

import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._timing import interleaved_median_seconds
from .brownian import grid_brownian_path
from .checkpoint import read_manifest
from .figures import sample_panels
from .metrics import strong_error
from .mixture import ExactDrift
from .runner import Setting, compile_sampler
from .sample import T_MIN, method_cost
from .testbed import LADDER, TESTBED_FILES, load_ladder, load_named_testbed


def demo_settings(operating: dict) -> list[tuple[Setting, list | None]]:
    """EM with its level and ML-EM with the whole ladder, at the operating points the
    ladder's manifest records (measured by experiments/ladders.py)."""
    em, mlem = operating["em"], operating["mlem"]
    return [
        (
            Setting("em", em["steps"], label=f"EM, exit {em['level'] + 1}, {em['steps']} steps"),
            [em["level"]],
        ),
        (
            Setting(
                "mlem",
                mlem["steps"],
                tuple(mlem["probabilities"]),
                draws=mlem["draws"],
                label=f"ML-EM {mlem['draws']}, {mlem['steps']} steps",
            ),
            None,
        ),
    ]


def run_testbed_demo(
    out_dir: str | os.PathLike = ".",
    *,
    count: int = 256,
    seed: int = 0,
    reference_steps: int = 1024,
    path: str | os.PathLike = TESTBED_FILES / LADDER,
) -> list[dict]:
    """Sample the `pca16` testbed by EM and ML-EM with the shipped ladder, print FLOPs,
    milliseconds per sample and strong error against the exact-score solution, and write
    up to 64 decoded digits per method (exact | EM | ML-EM, the same noise) to
    `testbed_digits.png`.

    **Returns:**

    One dict per method: label, MFLOP and milliseconds per sample, strong error.
    """
    start = time.perf_counter()
    mixture, codec = load_named_testbed("pca16")
    family = load_ladder(path)
    manifest = read_manifest(path)
    flops = manifest["calibration"]["flops"]
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = jax.random.normal(noise_key, (count, mixture.dim))
    settings = demo_settings(manifest["operating"])
    # One path whose nodes hold every run's grid: a multiple of every step count.
    intervals = math.lcm(reference_steps, *(setting.num_steps for setting, _ in settings))
    brownian = grid_brownian_path(path_key, x1.shape, intervals, T_MIN)
    exact_setting = Setting("em", reference_steps)
    exact_run = compile_sampler(exact_setting, [ExactDrift(mixture)], x1, brownian)
    truth = exact_run([ExactDrift(mixture)], x1, brownian, draw_key, None).ys
    rows, calls, grids = [], [], [np.asarray(truth)]
    for setting, chosen in settings:
        levels = family if chosen is None else [family[i] for i in chosen]
        costs = flops if chosen is None else [flops[i] for i in chosen]
        p = None if setting.probabilities is None else jnp.asarray(setting.probabilities)
        run = compile_sampler(setting, levels, x1, brownian)
        solution = run(levels, x1, brownian, draw_key, p)
        calls.append(lambda run=run, levels=levels, p=p: run(levels, x1, brownian, draw_key, p))
        cost = method_cost(
            setting.method, solution.evaluations, costs, setting.num_steps, shared=chosen is None
        )
        rows.append(
            {
                "method": setting.label,
                "mflops": cost / 1e6,
                "error": strong_error(solution.ys, truth),
            }
        )
        grids.append(np.asarray(solution.ys))
    for row, seconds in zip(rows, interleaved_median_seconds(calls, repeats=3)):
        row["ms"] = 1e3 * seconds / count
    titles = [f"Exact score, {reference_steps} steps"] + [
        f"{row['method']}\n{row['mflops']:.1f} MFLOP/sample, {row['ms']:.2f} ms/sample, "
        f"error {row['error']:.3f}"
        for row in rows
    ]
    png = sample_panels(
        Path(out_dir) / "testbed_digits.png",
        [np.asarray(codec.decode(jnp.asarray(g[:64]))) for g in grids],
        titles,
    )
    print(f"{'method':<28} {'MFLOP/sample':>13} {'ms/sample':>10} {'strong error':>13}")
    for row in rows:
        print(
            f"{row['method']:<28} {row['mflops']:>13.2f} {row['ms']:>10.3f} {row['error']:>13.3f}"
        )
    print(
        f"testbed pca16 (exact score known); truth: exact score, {reference_steps} steps; "
        f"{count} samples; {png}: panels exact | EM | ML-EM, same noise; "
        f"{time.perf_counter() - start:.0f} s"
    )
    return rows
