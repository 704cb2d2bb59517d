"""The diffusion demo and benchmark: EM, ML-EM (constant and time-dependent p_l) and
T-Stitch on the shipped levels (the exits of the shipped CascadeUNet by default)."""

import os
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._calibrate import level_costs
from .._timing import interleaved_median_seconds
from .brownian import family_brownian_path
from .calibrate import calibrate, probabilities_for, read_calibration, schedule_for
from .cascade import CascadeFamily
from .figures import frontier_figure, sample_panels
from .grids import DEFAULT_GRID, time_grid
from .levels import CASCADE_CHECKPOINTS, level_widths, load_sampling_levels
from .metrics import strong_error
from .runner import Setting, compile_sampler, run_setting
from .sample import initial_noise, stitch_switch
from .sde import VPSDE, ScoreDrift


def prepare(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS,
    kind: str = "sde",
    seed: int = 0,
    calibration: str | os.PathLike | None = None,
) -> tuple[CascadeFamily | list[ScoreDrift], tuple[int, ...], dict]:
    """Load the levels of `directory` as `kind` drifts and their calibration
    (`load_sampling_levels`).

    The calibration is read from the file `calibration` (default
    `<directory>/calibration.json`; both as written by `mlem-jax calibrate`), or
    measured now on a short run when it is missing.

    **Returns:**

    `(levels, image_shape, calibration)`.
    """
    levels, manifests = load_sampling_levels(directory, kind)
    image_shape = tuple(manifests[-1]["image_shape"])
    path = Path(directory) / "calibration.json" if calibration is None else calibration
    measured = read_calibration(path, kind)
    if measured is None or len(measured["flops"]) != len(levels) or "profile" not in measured:
        measured = calibrate(
            levels, jax.random.key(seed), image_shape, count=8, num_steps=32, repeats=3
        )
    return levels, image_shape, measured


def demo_settings(
    calibration: dict,
    em_steps: int = 32,
    mlem_steps: int = 64,
    top_level_evaluations: float = 8.0,
    groups: int = 1,
    grid: str = "uniform",
) -> list[Setting]:
    """EM with the top level, ML-EM with all levels (the top one drawn about
    `top_level_evaluations` times) with constant p_l, with stratified draws and with
    p_l(t) on the sensitivity-weighted v_l(t), each in `groups` groups of the batch with
    draws of their own, T-Stitch (half the time span on the second largest), all on the
    time grid family `grid`."""
    m = top_level_evaluations
    ts = None if grid == "uniform" else time_grid(grid, VPSDE(), mlem_steps)
    schedule = schedule_for(calibration, mlem_steps, m, weighted=True, ts=ts)
    settings = [
        Setting("em", em_steps, label=f"EM, top level, {em_steps} steps"),
        Setting(
            "mlem",
            mlem_steps,
            probabilities_for(calibration, mlem_steps, m),
            label=f"ML-EM, {mlem_steps} steps, m={m:g}",
            groups=groups,
        ),
        Setting(
            "mlem",
            mlem_steps,
            probabilities_for(calibration, mlem_steps, m, "stratified"),
            label=f"ML-EM stratified, {mlem_steps} steps, m={m:g}",
            draws="stratified",
            groups=groups,
        ),
        Setting(
            "mlem",
            mlem_steps,
            tuple(map(tuple, schedule.tolist())),
            label=f"ML-EM p(t), {mlem_steps} steps, m={m:g}",
            groups=groups,
        ),
        Setting(
            "tstitch", em_steps, switch=stitch_switch(0.5), label=f"T-Stitch 50%, {em_steps} steps"
        ),
    ]
    return [setting._replace(grid=grid) for setting in settings]


def frontier_settings(
    calibration: dict,
    em_steps: Sequence[int],
    mlem_steps: int,
    budgets: Sequence[float],
    groups: int = 1,
    grid: str = "uniform",
) -> dict[str, list[Setting]]:
    """EM at each of `em_steps`, ML-EM with `mlem_steps` steps and each budget m of
    top-level evaluations (constant p_l, random and stratified draws, in `groups`
    groups), on the time grid family `grid`."""

    def mlem(m: float, draws: str) -> Setting:
        p = probabilities_for(calibration, mlem_steps, m, draws)
        return Setting(
            "mlem", mlem_steps, p, label=f"m={m:g}", draws=draws, groups=groups, grid=grid
        )

    return {
        "EM, top level": [Setting("em", n, label=f"N={n}", grid=grid) for n in em_steps],
        f"ML-EM, {mlem_steps} steps": [mlem(m, "random") for m in budgets],
        f"ML-EM stratified, {mlem_steps} steps": [mlem(m, "stratified") for m in budgets],
    }


# EM steps, ML-EM steps, top-level evaluations m, reference steps; the frontier's EM
# steps and budgets m.
_FULL = (32, 64, 8.0, 128, (8, 16, 32, 64), (2.0, 4.0, 8.0, 16.0, 32.0))
_QUICK = (4, 8, 2.0, 16, (4, 8), (2.0,))


def run_demo(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS,
    *,
    count: int = 64,
    seed: int = 0,
    out_dir: str | os.PathLike = ".",
    quick: bool = False,
    calibration: str | os.PathLike | None = None,
    grid: str = DEFAULT_GRID,
) -> dict:
    """Sample with EM, ML-EM (constant p_l, stratified draws, p_l(t)) and T-Stitch from
    the same noise and Brownian path, and with EM and ML-EM at several costs; print
    cost and strong error against a fine EM reference; write the samples side by side
    (`demo_samples.png`) and the cost-error frontier (`demo_frontier.png`). ML-EM draws
    the levels of each image on its own (`groups=count`), so the strong error, a mean
    over the images, averages `count` draw sequences instead of carrying one.

    **Arguments:**

    - `directory`: the checkpoints (a CascadeUNet or UNets, and their `calibration.json`).
    - `count`: images per method (64 fill the 8x8 grids).
    - `seed`: PRNG seed of the noise, the Brownian path and the level draws.
    - `out_dir`: where the PNGs go.
    - `quick`: fewer and shorter runs (4 to 16 steps), for a smoke test.
    - `calibration`: the calibration file (default `<directory>/calibration.json`).
    - `grid`: the time grid family of every run (`mlem_jax.diffusion.GRIDS`).

    **Returns:**

    A dict: `rows` (one per method: label, GFLOPs per image, seconds, strong error),
    `frontier` (curve name -> such rows) and the paths of the two PNGs.
    """
    start = time.perf_counter()
    em_steps, mlem_steps, m, reference_steps, frontier_steps, budgets = _QUICK if quick else _FULL
    levels, image_shape, measured = prepare(directory, "sde", seed, calibration)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    path = family_brownian_path(path_key, x1.shape, grid, VPSDE(), reference_steps)
    flops, cache, outcomes = measured["flops"], {}, {}

    def run(setting: Setting) -> tuple[dict, np.ndarray]:
        key = setting._replace(label="")
        if key not in outcomes:
            outcomes[key] = run_setting(setting, levels, x1, path, draw_key, flops, cache)
        outcome = outcomes[key]
        error = strong_error(outcome.samples, reference.samples)
        return (
            {
                "method": setting.label,
                "gflops": outcome.flops / 1e9,
                "seconds": outcome.seconds,
                "error": error,
            },
            outcome.samples,
        )

    reference = run_setting(
        Setting("em", reference_steps, grid=grid), levels, x1, path, None, flops, cache
    )
    runs = [
        run(setting)
        for setting in demo_settings(measured, em_steps, mlem_steps, m, groups=count, grid=grid)
    ]
    rows = [row for row, _ in runs]
    frontier = {
        name: [run(setting)[0] for setting in settings]
        for name, settings in frontier_settings(
            measured, frontier_steps, mlem_steps, budgets, groups=count, grid=grid
        ).items()
    }

    width = max(len(row["method"]) for row in rows)
    print(f"{'method':<{width}} {'GFLOP/image':>12} {'seconds':>8} {'strong error':>13}")
    for row in rows:
        print(
            f"{row['method']:<{width}} {row['gflops']:>12.3f} {row['seconds']:>8.2f} "
            f"{row['error']:>13.3f}"
        )
    print("cost-error frontier:")
    for name, points in frontier.items():
        print(
            f"  {name}: "
            + ", ".join(f"{p['method']} {p['gflops']:.3f} GFLOP {p['error']:.2f}" for p in points)
        )

    out_dir = Path(out_dir)
    titles = [
        f"{row['method']}\n{row['gflops']:.2f} GFLOP/image, {row['seconds']:.2f} s, "
        f"error {row['error']:.2f}"
        for row in rows
    ]
    samples = sample_panels(
        out_dir / "demo_samples.png",
        [s for _, s in runs] + [reference.samples],
        titles
        + [
            f"Reference: EM, top level, {reference_steps} steps\n"
            f"{reference.flops / 1e9:.2f} GFLOP/image, {reference.seconds:.2f} s"
        ],
    )
    curves = {
        name: [(p["gflops"], p["error"], p["method"]) for p in points]
        for name, points in frontier.items()
    }
    for row in rows[3:]:  # ML-EM p(t), T-Stitch
        curves[row["method"]] = [(row["gflops"], row["error"], "")]
    figure = frontier_figure(
        out_dir / "demo_frontier.png",
        curves,
        title=f"{count} images from the same noise and Brownian path; strong error against "
        f"EM with {reference_steps} steps ({grid} grid)",
    )
    print(
        f"reference: EM, top level, {reference_steps} steps ({grid} grid); {count} "
        "images, ML-EM's "
        "level draws their own; "
        f"gamma = {measured['gamma'] or float('nan'):.2f}; wrote {samples} and "
        f"{figure}; {time.perf_counter() - start:.0f} s in all"
    )
    return {
        "rows": rows,
        "frontier": frontier,
        "samples_png": str(samples),
        "frontier_png": str(figure),
    }


def run_bench(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS,
    *,
    count: int = 16,
    num_steps: int = 64,
    repeats: int = 3,
    seed: int = 0,
    calibration: str | os.PathLike | None = None,
) -> dict:
    """Per-level cost, and EM vs ML-EM sampling with the same step count timed in turns.

    **Returns:**

    A dict with per-image FLOPs and seconds per level and the two sampling times.
    """
    levels, image_shape, measured = prepare(directory, "sde", seed, calibration)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    costs = level_costs(levels, 1.0, x1, repeats=repeats * 5)
    print(f"{'width':>6} {'MFLOP/image':>12} {'ms/image':>9}")
    for width, f, s in zip(level_widths(levels), costs.flops, costs.seconds):
        print(f"{width:>6} {f / count / 1e6:>12.2f} {s / count * 1e3:>9.3f}")
    em = Setting("em", num_steps)
    mlem = Setting("mlem", num_steps, probabilities_for(measured, num_steps))
    p = jnp.asarray(mlem.probabilities)
    runs = [compile_sampler(setting, levels, x1, path_key) for setting in (em, mlem)]
    calls = [
        lambda: runs[0](levels, x1, path_key, draw_key, None),
        lambda: runs[1](levels, x1, path_key, draw_key, p),
    ]
    seconds = interleaved_median_seconds(calls, repeats=repeats)
    print(
        f"{num_steps} steps, {count} images: EM {seconds[0]:.2f} s, ML-EM "
        f"{seconds[1]:.2f} s, ratio {seconds[0] / seconds[1]:.2f}x"
    )
    return {
        "flops": (costs.flops / count).tolist(),
        "seconds": (costs.seconds / count).tolist(),
        "em_seconds": seconds[0],
        "mlem_seconds": seconds[1],
    }
