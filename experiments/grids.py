"""EM and ML-EM on the uniform, EDM (rho = 7) and log-SNR-uniform time grids, with the
shipped MNIST UNets, for the reverse SDE and the probability-flow ODE.

**Grids.** `mlem_jax.diffusion.time_grid(name, VPSDE(), N)`: N + 1 times from t = 1 down
to t_min = 1e-3. The EDM and log-SNR grids put most of their steps near t = 0, where the
levels' differences v_l(t) are largest.

**Calibration, per grid.** `calibrate(levels, ..., grid=name)`: v_l, v_l(t) and c_l on
the (t, X_t) points of an EM run of the largest UNet on that grid; p_l from them.

**Strong error, per grid.** RMS over a batch of images of ||X_tmin - X_tmin^ref||, with
X^ref EM with the largest UNet on the same grid family with `reference_steps` steps.
Every run of every grid reads one Brownian path, stored at the union of the three
families' reference grids (`brownian_path_on`), so the grids see the same W and their
references estimate the same solution (their distances are reported). ML-EM's level
draws are shared by the batch; its error is the RMS over `draw_seeds` draw sequences.

**ML-EM families.** "p3": constant p_l optimal for stratified draws
(`probabilities_for(..., draws="stratified")`), with stratified draws -- the best
configuration of `experiments/diffusion.py`; "p(t)": p_l(t_n) per grid step from
v_l(t) weighted by the squared step sizes (`schedule_for(..., ts=grid)`), random draws.

**Common reference.** EM with the largest UNet on the union of the three reference
grids: the finest grid of all, against which EM's errors on the three grids compare.

**Speedups, per grid.** The target is EM's error with `operating_steps` steps on that
grid; each ML-EM family's cheapest configuration (FLOPs) with an error no larger. FLOPs
are accounted from the evaluations; wall-clock is measured on a batch of
`timing_images`, the compiled samplers timed in turns.

Writes `grids.json` and `grids_table.md` to `--out`.
"""

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mlem_jax.diffusion.brownian import brownian_path_on
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for, schedule_for
from mlem_jax.diffusion.grids import GRIDS, time_grid
from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
from mlem_jax.diffusion.metrics import strong_error
from mlem_jax.diffusion.runner import Setting, run_setting, seconds_in_turns
from mlem_jax.diffusion.sample import initial_noise, sample, score_levels
from mlem_jax.diffusion.sde import KINDS, VPSDE


RESULTS = Path(__file__).parent / "results"
FULL: dict[str, Any] = dict(
    images=8,
    reference_steps=512,
    em_steps=(16, 32, 64, 128),
    mlem_steps=(64, 128),
    budgets=(8.0, 16.0, 24.0, 32.0),
    draw_seeds=3,
    operating_steps=64,
    calibration_images=8,
    calibration_steps=128,
    timing_images=32,
    timing_rounds=2,
)
QUICK: dict[str, Any] = dict(
    images=2,
    reference_steps=32,
    em_steps=(8, 16),
    mlem_steps=(16,),
    budgets=(4.0,),
    draw_seeds=1,
    operating_steps=16,
    calibration_images=2,
    calibration_steps=8,
    timing_images=2,
    timing_rounds=1,
)
FAMILIES = {
    "em": "EM, largest UNet",
    "p3": "ML-EM, stratified, p_l for them",
    "pt": "ML-EM, p_l(t)",
}
GRID_NAMES = {"uniform": "uniform", "edm": "EDM rho=7", "logsnr": "log-SNR uniform"}


def grid_settings(grid: str, config: dict, calibration: dict) -> dict[str, list[Setting]]:
    """EM and the two ML-EM families on `grid`, by family."""
    sde = VPSDE()
    out = {"em": [Setting("em", n, label=f"EM N={n}", grid=grid) for n in config["em_steps"]]}
    out["p3"] = [
        Setting(
            "mlem",
            n,
            probabilities_for(calibration, n, m, "stratified"),
            label=f"ML-EM p3 N={n} m={m:g}",
            draws="stratified",
            grid=grid,
        )
        for n in config["mlem_steps"]
        for m in config["budgets"]
    ]
    out["pt"] = [
        Setting(
            "mlem",
            n,
            tuple(map(tuple, schedule_for(calibration, n, m, ts=time_grid(grid, sde, n)).tolist())),
            label=f"ML-EM p(t) N={n} m={m:g}",
            grid=grid,
        )
        for n in config["mlem_steps"]
        for m in config["budgets"]
    ]
    return out


def measure(
    setting: Setting, levels, x1, path, flops, seeds: int, references: tuple, cache
) -> dict:
    """Strong error (RMS over draw sequences) against the grid's reference, for EM also
    against the common one, and FLOPs per image of one setting."""
    reference, common = references
    runs = [
        run_setting(setting, levels, x1, path, jax.random.key(100 + s), flops, cache)
        for s in range(seeds if setting.method == "mlem" else 1)
    ]
    errors = [strong_error(run.samples, reference) for run in runs]
    point = {
        "label": setting.label,
        "steps": setting.num_steps,
        "error": float(np.sqrt(np.mean(np.square(errors)))),
        "flops": float(np.mean([run.flops for run in runs])),
    }
    if setting.method == "em":
        point["common_error"] = strong_error(runs[0].samples, common)
    return point


def operating(points: list[dict], target: float) -> dict:
    """The cheapest point with error <= target, else the most accurate (flagged)."""
    reached = [p for p in points if p["error"] <= target * (1 + 1e-9)]
    if reached:
        return {**min(reached, key=lambda p: p["flops"]), "reaches_target": True}
    return {**min(points, key=lambda p: p["error"]), "reaches_target": False}


def run_grid(grid: str, kind: str, levels, config: dict, x1, path, timing: tuple, common) -> dict:
    """Calibrate on `grid`, measure every setting, pick the operating points, time them."""
    shape = x1.shape[1:]
    calibration = calibrate(
        levels,
        jax.random.key(1),
        shape,
        count=config["calibration_images"],
        num_steps=config["calibration_steps"],
        grid=grid,
    )
    flops, cache = calibration["flops"], {}
    reference_setting = Setting("em", config["reference_steps"], grid=grid)
    reference = run_setting(reference_setting, levels, x1, path, None, flops, cache).samples
    by_family, by_label = {}, {}
    for family, family_settings in grid_settings(grid, config, calibration).items():
        by_family[family] = []
        for setting in family_settings:
            by_label[setting.label] = setting
            seeds = config["draw_seeds"]
            by_family[family].append(
                measure(setting, levels, x1, path, flops, seeds, (reference, common), cache)
            )
            point = by_family[family][-1]
            print(
                f"{kind} {grid:<8} {setting.label:<24} error {point['error']:.3f} "
                f"MFLOP {point['flops'] / 1e6:.0f}",
                flush=True,
            )
    em = next(p for p in by_family["em"] if p["steps"] == config["operating_steps"])
    chosen = {family: operating(points, em["error"]) for family, points in by_family.items()}
    chosen["em"] = em
    timing_x1, timing_path = timing
    runs = {name: (by_label[point["label"]], levels) for name, point in chosen.items()}
    seconds = seconds_in_turns(
        runs, timing_x1, timing_path, jax.random.key(7), cache, config["timing_rounds"]
    )
    speedups = {
        family: {
            "flops": em["flops"] / point["flops"] if point["reaches_target"] else None,
            "wallclock": seconds["em"] / seconds[family] if point["reaches_target"] else None,
        }
        for family, point in chosen.items()
        if family != "em"
    }
    return {
        "calibration": {
            key: calibration[key] for key in ("variances", "errors", "flops", "gamma", "profile")
        },
        "reference_samples": np.asarray(reference),
        "points": by_family,
        "target_error": em["error"],
        "operating": chosen,
        "seconds": seconds,
        "speedups": speedups,
    }


def table(result: dict) -> str:
    """Markdown: EM's error by grid and N, and ML-EM's speedups at EM's operating error."""
    lines = []
    for kind, by_grid in result["kinds"].items():
        steps = [p["steps"] for p in next(iter(by_grid.values()))["points"]["em"]]
        lines += [
            f"**{'Reverse SDE' if kind == 'sde' else 'Probability-flow ODE'}**",
            "",
            "| grid | "
            + " | ".join(f"EM error, N={n}" for n in steps)
            + " | EM N="
            + f"{result['config']['operating_steps']} against the common reference"
            + f" | best ML-EM at EM N={result['config']['operating_steps']}'s error: FLOPs"
            " | wall-clock |",
            "|---" * (len(steps) + 4) + "|",
        ]
        for grid, run in by_grid.items():
            errors = " | ".join(f"{p['error']:.2f}" for p in run["points"]["em"])
            errors += f" | {run['operating']['em']['common_error']:.2f}"
            best = max(("p3", "pt"), key=lambda family: run["speedups"][family]["flops"] or 0.0)
            speedup = run["speedups"][best]
            point = run["operating"][best]
            flops = (
                f"{speedup['flops']:.2f}x ({point['label']})" if speedup["flops"] else "not reached"
            )
            clock = f"{speedup['wallclock']:.2f}x" if speedup["wallclock"] else "not reached"
            lines.append(f"| {GRID_NAMES[grid]} | {errors} | {flops} | {clock} |")
        gaps = result["reference_gaps"][kind]
        lines += [
            "",
            "Distance between the grids' references (RMS per image, same noise and path): "
            + ", ".join(f"{pair} {value:.2f}" for pair, value in gaps.items())
            + f". The common reference: EM on the union of the reference grids "
            f"({result['common_steps']} steps).",
            "",
        ]
    lines.append(
        f"Default grid: `{result['default_grid']}` (the lowest EM error at N = "
        f"{result['config']['operating_steps']} on the reverse SDE, against the common "
        "reference). Strong errors: RMS "
        f"over {result['config']['images']} images against EM with "
        f"{result['config']['reference_steps']} steps of the same grid family; ML-EM over "
        f"{result['config']['draw_seeds']} draw sequences. Wall-clock: batch of "
        f"{result['config']['timing_images']}, {result['hardware']}. Written by "
        "`experiments/grids.py`."
    )
    return "\n".join(lines) + "\n"


def reference_gaps(by_grid: dict) -> dict:
    """RMS distance between every two grids' reference samples."""
    names = list(by_grid)
    return {
        f"{a}-{b}": strong_error(by_grid[a]["reference_samples"], by_grid[b]["reference_samples"])
        for i, a in enumerate(names)
        for b in names[i + 1 :]
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--checkpoints", default=str(CHECKPOINTS))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--grids", nargs="+", choices=GRIDS, default=list(GRIDS))
    a = parser.parse_args(argv)
    config, out = (QUICK if a.quick else FULL), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    models, manifests = load_levels(Path(a.checkpoints))
    shape = tuple(manifests[-1]["image_shape"])
    sde = VPSDE()
    x1 = initial_noise(jax.random.key(2), config["images"], shape)
    timing_x1 = initial_noise(jax.random.key(11), config["timing_images"], shape)
    nodes = np.unique(
        np.concatenate([time_grid(g, sde, config["reference_steps"]) for g in a.grids])
    )
    result: dict[str, Any] = {"config": config, "kinds": {}, "reference_gaps": {}}
    for kind in a.kinds:
        levels = score_levels(models, kind, sde)
        sde_kind = kind == "sde"
        path = brownian_path_on(jax.random.key(3), x1.shape, nodes) if sde_kind else None
        timing_path = (
            brownian_path_on(jax.random.key(4), timing_x1.shape, nodes) if sde_kind else None
        )
        # The finest grid there is: every reference grid's points, one EM run.
        common = sample("em", levels, x1, ts=nodes[::-1], brownian=path).ys
        by_grid = {
            grid: run_grid(grid, kind, levels, config, x1, path, (timing_x1, timing_path), common)
            for grid in a.grids
        }
        result["reference_gaps"][kind] = reference_gaps(by_grid)
        for run in by_grid.values():
            del run["reference_samples"]
        result["kinds"][kind] = by_grid
    sde_runs = result["kinds"].get("sde") or next(iter(result["kinds"].values()))
    result["default_grid"] = min(
        sde_runs, key=lambda g: sde_runs[g]["operating"]["em"]["common_error"]
    )
    result["common_steps"] = len(nodes) - 1
    result["hardware"] = f"{jax.devices()[0].device_kind}, {os.cpu_count()} CPU cores"
    result["seconds_total"] = time.perf_counter() - start
    result["quick"] = a.quick
    text = table(result)
    (out / "grids.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "grids_table.md").write_text(text)
    print(text, flush=True)
    return result


if __name__ == "__main__":
    main()
