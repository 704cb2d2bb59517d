"""The diffusion demo and benchmark: EM, ML-EM (constant and time-dependent p_l) and
T-Stitch on the shipped UNets."""

import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .._calibrate import level_costs
from .._timing import interleaved_median_seconds
from .brownian import grid_brownian_path
from .calibrate import calibrate, probabilities_for, read_calibration, schedule_for
from .images import save_samples
from .levels import CHECKPOINTS, load_levels
from .metrics import strong_error
from .runner import Setting, compile_sampler, run_setting
from .sample import T_MIN, initial_noise, score_levels, stitch_switch


def prepare(directory: str | os.PathLike = CHECKPOINTS, kind: str = "sde", seed: int = 0,
            calibration: str | os.PathLike | None = None
            ) -> tuple[list, tuple[int, ...], dict]:
    """Load the levels of `directory` as `kind` drifts and their calibration.

    The calibration is read from the file `calibration` (default
    `<directory>/calibration.json`; both as written by `mlem-jax calibrate`), or
    measured now on a short run when it is missing.

    **Returns:**

    `(levels, image_shape, calibration)`.
    """
    models, manifests = load_levels(directory)
    levels = score_levels(models, kind)
    image_shape = tuple(manifests[-1]["image_shape"])
    path = Path(directory) / "calibration.json" if calibration is None else calibration
    calibration = read_calibration(path, kind)
    if (calibration is None or len(calibration["flops"]) != len(levels)
            or "profile" not in calibration):
        calibration = calibrate(levels, jax.random.key(seed), image_shape, count=8,
                                num_steps=32, repeats=3)
    return levels, image_shape, calibration


def demo_settings(calibration: dict, em_steps: int = 32, mlem_steps: int = 64,
                  top_level_evaluations: float = 8.0, groups: int = 1) -> list[Setting]:
    """EM with the largest UNet, ML-EM with all of them (the largest drawn about
    `top_level_evaluations` times) with constant p_l, with p_l(t) on the
    sensitivity-weighted v_l(t) and with stratified draws, each in `groups` groups of
    the batch with draws of their own, T-Stitch (half the time span on the second
    largest)."""
    schedule = schedule_for(calibration, mlem_steps, top_level_evaluations, weighted=True)
    return [
        Setting("em", em_steps, label=f"EM, largest UNet, {em_steps} steps"),
        Setting("mlem", mlem_steps,
                probabilities_for(calibration, mlem_steps, top_level_evaluations),
                label=f"ML-EM, {mlem_steps} steps, m={top_level_evaluations:g}",
                groups=groups),
        Setting("mlem", mlem_steps, tuple(map(tuple, schedule.tolist())),
                label=f"ML-EM p(t), {mlem_steps} steps, m={top_level_evaluations:g}",
                groups=groups),
        Setting("mlem", mlem_steps,
                probabilities_for(calibration, mlem_steps, top_level_evaluations, "stratified"),
                label=f"ML-EM stratified, {mlem_steps} steps, m={top_level_evaluations:g}",
                draws="stratified", groups=groups),
        Setting("tstitch", em_steps, switch=stitch_switch(0.5),
                label=f"T-Stitch 50%, {em_steps} steps"),
    ]


def run_demo(directory: str | os.PathLike = CHECKPOINTS, *, count: int = 8, seed: int = 0,
             out_dir: str | os.PathLike = ".", reference_steps: int = 128,
             calibration: str | os.PathLike | None = None) -> list[dict]:
    """Sample with EM, ML-EM (p_l, p_l(t), stratified draws) and T-Stitch from the same
    noise and Brownian path; print cost and strong error against a fine EM reference;
    write one PNG grid per method. ML-EM draws the levels of each image on its own
    (`groups=count`), so the strong error, a mean over the images, averages `count`
    draw sequences instead of carrying one.

    **Returns:**

    One dict per method: label, GFLOPs per image, seconds, strong error, PNG path.
    """
    start = time.perf_counter()
    levels, image_shape, calibration = prepare(directory, "sde", seed, calibration)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    path = grid_brownian_path(path_key, x1.shape, reference_steps, T_MIN)
    flops = calibration["flops"]
    reference = run_setting(Setting("em", reference_steps), levels, x1, path, None, flops)
    rows = []
    for setting in demo_settings(calibration, groups=count):
        outcome = run_setting(setting, levels, x1, path, draw_key, flops)
        name = (setting.method + ("_schedule" if np.ndim(setting.probabilities) == 2 else "")
                + ("_stratified" if setting.draws == "stratified" else ""))
        png = save_samples(Path(out_dir) / f"demo_{name}.png", outcome.samples)
        rows.append({"method": setting.label, "gflops": outcome.flops / 1e9,
                     "seconds": outcome.seconds,
                     "error": strong_error(outcome.samples, reference.samples),
                     "png": str(png)})
    print(f"{'method':<32} {'GFLOP/image':>12} {'seconds':>8} {'strong error':>13}")
    for row in rows:
        print(f"{row['method']:<32} {row['gflops']:>12.3f} {row['seconds']:>8.2f} "
              f"{row['error']:>13.3f}")
    print(f"reference: EM, largest UNet, {reference_steps} steps; {count} images, ML-EM's "
          "level draws their own; "
          f"gamma = {calibration['gamma'] or float('nan'):.2f}; PNGs: "
          + ", ".join(row["png"] for row in rows)
          + f"; {time.perf_counter() - start:.0f} s in all")
    return rows


def run_bench(directory: str | os.PathLike = CHECKPOINTS, *, count: int = 16,
              num_steps: int = 64, repeats: int = 3, seed: int = 0,
              calibration: str | os.PathLike | None = None) -> dict:
    """Per-level cost, and EM vs ML-EM sampling with the same step count timed in turns.

    **Returns:**

    A dict with per-image FLOPs and seconds per level and the two sampling times.
    """
    levels, image_shape, calibration = prepare(directory, "sde", seed, calibration)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(seed), 3)
    x1 = initial_noise(noise_key, count, image_shape)
    costs = level_costs(levels, 1.0, x1, repeats=repeats * 5)
    print(f"{'width':>6} {'MFLOP/image':>12} {'ms/image':>9}")
    for level, f, s in zip(levels, costs.flops, costs.seconds):
        print(f"{level.model.width:>6} {f / count / 1e6:>12.2f} {s / count * 1e3:>9.3f}")
    em = Setting("em", num_steps)
    mlem = Setting("mlem", num_steps, probabilities_for(calibration, num_steps))
    p = jnp.asarray(mlem.probabilities)
    runs = [compile_sampler(setting, levels, x1, path_key) for setting in (em, mlem)]
    calls = [lambda: runs[0](levels, x1, path_key, draw_key, None),
             lambda: runs[1](levels, x1, path_key, draw_key, p)]
    seconds = interleaved_median_seconds(calls, repeats=repeats)
    print(f"{num_steps} steps, {count} images: EM {seconds[0]:.2f} s, ML-EM "
          f"{seconds[1]:.2f} s, ratio {seconds[0] / seconds[1]:.2f}x")
    return {"flops": (costs.flops / count).tolist(),
            "seconds": (costs.seconds / count).tolist(), "em_seconds": seconds[0],
            "mlem_seconds": seconds[1]}
