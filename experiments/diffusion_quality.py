"""The paper's criterion: ML-EM's speedup over EM at equal sample quality.

`experiments/diffusion.py` compares the samplers at equal strong error (distance to a
reference sample from the same noise and Brownian path), the terms in which that
experiment's speedup goal is stated. The paper reports its speedups at equal quality
instead, a distance between the distribution of the samples and the data. This script
measures that frontier.

**Quality.** The Frechet distance (FD) on the features of the shipped classifier between
`samples` samples of a configuration and the held-out split, lower is better. Each
configuration is scored on `repeats` independent batches (initial noise, Brownian
increments and, for ML-EM, level draws all from fresh keys; batch r has the same keys for
every configuration); the table gives the mean over the batches and its standard
error. FD on a few hundred samples is biased upwards (the training images themselves
score `data` at the same size), but the bias is the same for every method.

**Configurations.** The levels of `--checkpoints` as reverse-SDE levels: the shipped
`CascadeUNet`'s exits (default), or the shipped UNets of widths 2, 4, 8, 16
(`--checkpoints mlem_jax/diffusion/checkpoints --name diffusion_quality_unets`); EM with
the top level, ML-EM with constant p_l from the levels' calibration
(`probabilities_for`: top level drawn about m times), with random draws (the paper's
method) and with stratified draws and the p_l optimal for them (`draws="stratified"`),
and T-Stitch (the second-largest level on the first half of the time span, then the
largest). Cost: FLOPs per image actually spent, and seconds per image (compiled
samplers, batch of `samples`).

**Grouped draws.** ML-EM draws its levels in `groups` groups of each batch, each with a
draw sequence of its own (`Setting(..., groups=...)`). With one draw sequence for the
whole batch every sample would carry the same randomisation error, and the FD of the
batch would measure that one error rather than average over it.

**Speedup at equal quality.** For the FD of each EM configuration, the cheapest
configuration of a family whose mean FD is no larger, and EM's cost over its cost.

Writes `experiments/results/<name>.json` and `<name>_table.md` (`--name`, default
`diffusion_quality`; `--quick`: a smoke run, written under `--out`).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mlem_jax.diffusion.calibrate import probabilities_for, read_calibration
from mlem_jax.diffusion.checkpoint import load_model
from mlem_jax.diffusion.classifier import Classifier
from mlem_jax.diffusion.data import load_mnist
from mlem_jax.diffusion.levels import CASCADE_CHECKPOINTS, CHECKPOINTS, load_sampling_levels
from mlem_jax.diffusion.metrics import classifier_features, frechet_distance
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import initial_noise, stitch_switch


RESULTS = Path(__file__).parent / "results"
FULL: dict[str, Any] = dict(
    samples=256,
    repeats=8,
    em_steps=(32, 64, 128),
    mlem_steps=(64, 128),
    budgets=(4.0, 8.0),
    stratified_steps=(64, 128),
    stratified_budgets=(8.0, 16.0),
    stitch_steps=(32, 64),
    groups=16,
)
QUICK: dict[str, Any] = dict(
    samples=16,
    repeats=2,
    em_steps=(8, 16),
    mlem_steps=(16,),
    budgets=(2.0,),
    stratified_steps=(16,),
    stratified_budgets=(4.0,),
    stitch_steps=(8,),
    groups=2,
)
FAMILIES = {
    "em": "EM, top level",
    "mlem": "ML-EM, constant p_l",
    "mlem_s": "ML-EM, stratified draws, p_l for random draws",
    "mlem_s3": "ML-EM, stratified draws",
    "tstitch": "T-Stitch",
}
STRATIFIED = ("mlem_s", "mlem_s3")


def settings(config: dict, calibration: dict) -> dict[str, list[Setting]]:
    """Every configuration, by family."""
    return {
        "em": [Setting("em", n, label=f"EM N={n}") for n in config["em_steps"]],
        "mlem": [
            Setting(
                "mlem",
                n,
                probabilities_for(calibration, n, m),
                label=f"ML-EM N={n} m={m:g}",
                groups=config["groups"],
            )
            for n in config["mlem_steps"]
            for m in config["budgets"]
        ],
        "mlem_s3": [
            Setting(
                "mlem",
                n,
                probabilities_for(calibration, n, m, "stratified"),
                label=f"ML-EM stratified N={n} m={m:g}",
                draws="stratified",
                groups=config["groups"],
            )
            for n in config["stratified_steps"]
            for m in config["stratified_budgets"]
        ],
        "tstitch": [
            Setting("tstitch", n, switch=stitch_switch(0.5), label=f"T-Stitch N={n}")
            for n in config["stitch_steps"]
        ],
    }


def operating_settings(result: dict, groups: int) -> dict[str, list[Setting]]:
    """EM's operating configuration in a result of `experiments/diffusion.py`, and that
    of every family of `FAMILIES` that reached EM's strong error there (the p_l(t)
    families are left out: their schedules are not stored)."""
    out: dict[str, list[Setting]] = {}
    for family, point in result["operating_points"].items():
        if family not in FAMILIES or not point["reaches_target"]:
            continue
        if family == "em":
            setting = Setting("em", point["steps"], label=point["label"])
        elif family == "tstitch":
            setting = Setting(
                "tstitch", point["steps"], switch=point["switch"], label=point["label"]
            )
        else:
            setting = Setting(
                "mlem",
                point["steps"],
                tuple(point["probabilities"]),
                label=point["label"],
                draws="stratified" if family in STRATIFIED else "random",
                groups=groups,
            )
        out[family] = [setting]
    return out


def score(
    family: str,
    setting: Setting,
    levels,
    features_model,
    held_out_features,
    shape,
    config: dict,
    flops,
    cache: dict,
) -> dict:
    """FD to the held-out split on `repeats` independent batches; cost per image."""
    distances, spent, seconds = [], [], []
    for r in range(config["repeats"]):
        x1 = initial_noise(jax.random.key(1000 + r), config["samples"], shape)
        outcome = run_setting(
            setting, levels, x1, jax.random.key(2000 + r), jax.random.key(3000 + r), flops, cache
        )
        distances.append(
            frechet_distance(
                classifier_features(features_model, outcome.samples), held_out_features
            )
        )
        spent.append(outcome.flops)
        seconds.append(outcome.seconds / config["samples"])
    return {
        "label": setting.label,
        "family": family,
        "steps": setting.num_steps,
        "fd": float(np.mean(distances)),
        "fd_standard_error": float(np.std(distances, ddof=1) / np.sqrt(len(distances))),
        "fd_repeats": distances,
        "flops": float(np.mean(spent)),
        "seconds": float(np.mean(seconds)),
    }


def equal_quality(points: list[dict]) -> list[dict]:
    """For the FD of each EM point: each family's cheapest point (in FLOPs) with a mean FD
    no larger, and EM's FLOPs and seconds over its own (None where none is)."""
    rows = []
    for em in [p for p in points if p["family"] == "em"]:
        row = {"em": em["label"], "fd": em["fd"], "fd_standard_error": em["fd_standard_error"]}
        for family in run_families(points):
            if family == "em":
                continue
            reach = [p for p in points if p["family"] == family and p["fd"] <= em["fd"]]
            best = min(reach, key=lambda p: p["flops"]) if reach else None
            row[family] = (
                None
                if best is None
                else {
                    "label": best["label"],
                    "fd": best["fd"],
                    "fd_standard_error": best["fd_standard_error"],
                    "speedup_flops": em["flops"] / best["flops"],
                    "speedup_wallclock": em["seconds"] / best["seconds"],
                }
            )
        rows.append(row)
    return rows


def run_families(points: list[dict]) -> list[str]:
    """The families of `FAMILIES` with at least one point, in that order."""
    return [f for f in FAMILIES if any(p["family"] == f for p in points)]


def table(result: dict) -> str:
    """Every configuration, then the speedups at equal quality."""
    lines = [
        "| configuration | FD (mean ± standard error) | MFLOP / image | ms / image |",
        "|---|---|---|---|",
    ]
    for p in result["points"]:
        lines.append(
            f"| {p['label']} | {p['fd']:.1f} ± {p['fd_standard_error']:.1f} | "
            f"{p['flops'] / 1e6:.0f} | {p['seconds'] * 1e3:.1f} |"
        )
    others = [f for f in run_families(result["points"]) if f != "em"]
    lines += [
        "",
        "| quality of | FD | "
        + " | ".join(f"{FAMILIES[f]}: speedup in FLOPs, wall-clock" for f in others)
        + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for row in result["equal_quality"]:
        cells = []
        for family in others:
            if family == "em":
                continue
            hit = row[family]
            cells.append(
                "not reached"
                if hit is None
                else f"{hit['speedup_flops']:.2f}x, {hit['speedup_wallclock']:.2f}x "
                f"({hit['label']}, FD {hit['fd']:.1f} ± {hit['fd_standard_error']:.1f})"
            )
        lines.append(
            f"| {row['em']} | {row['fd']:.1f} ± {row['fd_standard_error']:.1f} | "
            + " | ".join(cells)
            + " |"
        )
    c = result["config"]
    lines += [
        "",
        f"FD of {c['samples']} samples to the held-out split, mean over "
        f"{c['repeats']} independent batches ± its standard error; ML-EM draws its "
        f"levels in {c['groups']} groups of each batch; training images score "
        f"{result['data_fd']:.1f} at the same size. Written by "
        "`experiments/diffusion_quality.py`.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--checkpoints",
        default=str(CASCADE_CHECKPOINTS),
        help="the levels and their calibration.json (default: the shipped cascade)",
    )
    parser.add_argument("--name", default="diffusion_quality", help="stem of the result files")
    parser.add_argument(
        "--operating-points",
        help="a result JSON of experiments/diffusion.py: score only its operating "
        "configurations (EM's and those that reach EM's strong error), not the frontier",
    )
    a = parser.parse_args(argv)
    config, out = (QUICK if a.quick else FULL), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    levels, manifests = load_sampling_levels(a.checkpoints, "sde")
    shape = tuple(manifests[-1]["image_shape"])
    calibration = read_calibration(Path(a.checkpoints) / "calibration.json", "sde")
    if calibration is None:
        raise SystemExit(f"no calibration.json in {a.checkpoints}: run experiments/diffusion.py")
    features_model, _ = load_model(CHECKPOINTS / "classifier")
    assert isinstance(features_model, Classifier)
    held_out = classifier_features(features_model, load_mnist("test").images)
    train = load_mnist("train").images
    data_fd = frechet_distance(
        classifier_features(features_model, train[: config["samples"]]), held_out
    )
    cache: dict = {}
    points = []
    chosen = (
        operating_settings(json.loads(Path(a.operating_points).read_text()), int(config["groups"]))
        if a.operating_points
        else settings(config, calibration)
    )
    for family, family_settings in chosen.items():
        for setting in family_settings:
            points.append(
                score(
                    family,
                    setting,
                    levels,
                    features_model,
                    held_out,
                    shape,
                    config,
                    calibration["flops"],
                    cache,
                )
            )
            print(
                f"{setting.label:<28} FD {points[-1]['fd']:7.1f} ± "
                f"{points[-1]['fd_standard_error']:5.1f}  "
                f"MFLOP {points[-1]['flops'] / 1e6:7.0f}",
                flush=True,
            )
    result = {
        "config": config,
        "data_fd": data_fd,
        "points": points,
        "equal_quality": equal_quality(points),
        "checkpoints": Path(a.checkpoints).name,
        "operating_points": a.operating_points and Path(a.operating_points).name,
        "quick": a.quick,
        "seconds": time.perf_counter() - start,
    }
    name = a.name
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}_table.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
