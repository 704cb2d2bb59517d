"""The diffusion demo and benchmark: EM, ML-EM (constant and time-dependent p_l) and
T-Stitch on the shipped levels (the exits of the shipped CascadeUNet by default)."""

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .._calibrate import level_costs
from .._timing import interleaved_median_seconds
from .brownian import family_brownian_path
from .calibrate import calibrate, probabilities_for, read_calibration, schedule_for
from .figures import frontier_figure, sample_panels
from .gaussian import load_gaussian
from .grids import DEFAULT_GRID, time_grid
from .levels import (
    CASCADE_CHECKPOINTS,
    GAUSSIAN_STATISTICS,
    ladder_key,
    level_names,
    load_sampling_levels,
    with_base,
)
from .metrics import strong_error
from .runner import Setting, compile_sampler, run_setting
from .sample import initial_noise, stitch_switch
from .sde import VPSDE


def prepare(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS,
    kind: str = "sde",
    seed: int = 0,
    calibration: str | os.PathLike | None = None,
    *,
    base: str = "none",
    top_only: bool = False,
    statistics: str | os.PathLike = GAUSSIAN_STATISTICS,
) -> tuple[Any, tuple[int, ...], dict]:
    """Load the levels of `directory` as `kind` drifts (`load_sampling_levels`), with
    the Gaussian base (of the `statistics` file, default the shipped MNIST ones) under
    them or under the top network alone (`with_base`), and their calibration.

    The calibration is the ladder's entry (`ladder_key`) of the file `calibration`
    (default `<directory>/calibration.json`; both as written by `mlem-jax calibrate`),
    or measured now on a short run when it is missing.

    **Returns:**

    `(levels, image_shape, calibration)`.
    """
    networks, manifests = load_sampling_levels(directory, kind)
    key = ladder_key(kind, base, top_only)
    image_shape = tuple(manifests[-1]["image_shape"])
    levels = networks
    if base != "none":
        check_statistics(statistics, image_shape)
        levels = with_base(networks, base, top_only=top_only, statistics=statistics)
    path = Path(directory) / "calibration.json" if calibration is None else calibration
    measured = read_calibration(path, key)
    if measured is None or len(measured["flops"]) != len(levels) or "profile" not in measured:
        measured = calibrate(
            levels, jax.random.key(seed), image_shape, count=8, num_steps=32, repeats=3
        )
    return levels, image_shape, measured


def check_statistics(statistics: str | os.PathLike, image_shape: Sequence[int]) -> None:
    """Refuse Gaussian statistics whose samples are not of the checkpoints' image shape."""
    shape = load_gaussian(statistics).shape
    if shape != tuple(image_shape):
        raise ValueError(
            f"`statistics` ({statistics}) hold samples of shape {shape}, but the checkpoints' "
            f"images are {tuple(image_shape)}: fit the base to your data (`fit_gaussian`, "
            "`save_gaussian`) and pass its file."
        )


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
    p_l(t) on v_l(t) (unweighted: see `schedule_for`), each in `groups` groups of the batch with
    draws of their own, T-Stitch (half the time span on the second largest), all on the
    time grid family `grid`."""
    m = top_level_evaluations
    ts = None if grid == "uniform" else time_grid(grid, VPSDE(), mlem_steps)
    schedule = schedule_for(calibration, mlem_steps, m, ts=ts)
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


def gaussian_setting(calibration: dict, num_steps: int, top_level_evaluations: float) -> Setting:
    """ML-EM on [the Gaussian score, the top network] (`with_base(..., top_only=True)`):
    p(t) on the ladder's v(t) for stratified draws (`schedule_for`), the network drawn
    about `top_level_evaluations` times."""
    m = top_level_evaluations
    schedule = schedule_for(calibration, num_steps, m, draws="stratified")
    return Setting(
        "mlem",
        num_steps,
        tuple(map(tuple, schedule.tolist())),
        label=f"ML-EM: Gaussian score + one network, {num_steps} steps, m={m:g}",
        draws="stratified",
    )


# EM steps, ML-EM steps, top-level evaluations m, reference steps; the frontier's EM
# steps and budgets m; the steps and m of the Gaussian base's panel.
_FULL = (32, 64, 8.0, 128, (8, 16, 32, 64), (2.0, 4.0, 8.0, 16.0, 32.0), (128, 24.0))
_QUICK = (4, 8, 2.0, 16, (4, 8), (2.0,), (8, 2.0))


def run_demo(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS,
    *,
    count: int = 64,
    seed: int = 0,
    out_dir: str | os.PathLike = ".",
    quick: bool = False,
    calibration: str | os.PathLike | None = None,
    grid: str = DEFAULT_GRID,
    statistics: str | os.PathLike = GAUSSIAN_STATISTICS,
) -> dict:
    """Sample with EM, ML-EM (constant p_l, stratified draws, p_l(t)), T-Stitch and ML-EM
    on [the Gaussian score, the top network] (`gaussian_setting`) from the same noise
    and Brownian path, and with EM and ML-EM at several costs; print
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
    - `statistics`: the Gaussian base's statistics (default: the shipped MNIST ones);
        its panel is left out when they are not of the checkpoints' image shape.

    **Returns:**

    A dict: `rows` (one per method: label, GFLOPs per image, seconds, strong error),
    `frontier` (curve name -> such rows) and the paths of the two PNGs.
    """
    start = time.perf_counter()
    em_steps, mlem_steps, m, reference_steps, frontier_steps, budgets, (base_steps, base_m) = (
        _QUICK if quick else _FULL
    )
    levels, image_shape, measured = prepare(directory, "sde", seed, calibration)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    path = family_brownian_path(path_key, x1.shape, grid, VPSDE(), reference_steps)
    flops, cache, outcomes = measured["flops"], {}, {}

    def run(setting: Setting, ladder=levels, ladder_flops=flops) -> tuple[dict, np.ndarray]:
        key = (setting._replace(label=""), id(ladder))
        if key not in outcomes:
            outcomes[key] = run_setting(setting, ladder, x1, path, draw_key, ladder_flops, cache)
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
    if load_gaussian(statistics).shape == image_shape:
        based, _, based_measured = prepare(
            directory,
            "sde",
            seed,
            calibration,
            base="gaussian",
            top_only=True,
            statistics=statistics,
        )
        based_setting = gaussian_setting(based_measured, base_steps, base_m)
        runs.append(
            run(based_setting._replace(groups=count, grid=grid), based, based_measured["flops"])
        )
    else:
        print(f"no Gaussian-base panel: {statistics} is not of the images' shape {image_shape}")
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
    for row in rows[3:]:  # ML-EM p(t), T-Stitch, the Gaussian base
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
    base: str = "none",
    top_only: bool = False,
    statistics: str | os.PathLike = GAUSSIAN_STATISTICS,
    schedule: bool = False,
    draws: str = "random",
) -> dict:
    """Per-level cost (FLOPs, seconds and the rate, GFLOP/s, at which each runs), and EM
    vs ML-EM sampling with the same step count timed in turns. `base`, `top_only`: the
    ladder (see `prepare`); ML-EM draws with `draws`, with constant p_l or, with
    `schedule`, with p_l(t) on the calibration's v_l(t) (`schedule_for`).

    **Returns:**

    A dict with per-image FLOPs and seconds per level, their GFLOP/s and the two
    sampling times.
    """
    levels, image_shape, measured = prepare(
        directory, "sde", seed, calibration, base=base, top_only=top_only, statistics=statistics
    )
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    costs = level_costs(levels, 1.0, x1, repeats=repeats * 5)
    rates = costs.flops / costs.seconds / 1e9
    print(f"{'level':>8} {'MFLOP/image':>12} {'ms/image':>9} {'GFLOP/s':>8}")
    for name, f, s, rate in zip(level_names(levels), costs.flops, costs.seconds, rates):
        print(f"{name:>8} {f / count / 1e6:>12.2f} {s / count * 1e3:>9.3f} {rate:>8.1f}")
    em = Setting("em", num_steps)
    p = (
        schedule_for(measured, num_steps, draws=draws)
        if schedule
        else probabilities_for(measured, num_steps, draws=draws)
    )
    mlem = Setting("mlem", num_steps, np.asarray(p), draws=draws)
    p = jnp.asarray(p)
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
        "gflops": rates.tolist(),
        "em_seconds": seconds[0],
        "mlem_seconds": seconds[1],
    }
