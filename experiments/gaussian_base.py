"""ML-EM with the data's Gaussian score as a free first level, chosen on one set of images
and draws and scored on another.

**Ladders.** On the shipped cascade (or, with `--checkpoints`, the UNets): `levels`, the
networks alone (constant p_l optimal for stratified draws, "p3", the best family of
`experiments/diffusion.py`); `gaussian_top`, [the Gaussian score, the top network]: ML-EM
on one network; `gaussian_family`, [the Gaussian score, every network]
(`mlem_jax.FamilyWithBase` on a cascade); `--ladders` measures some of them. The
Gaussian level is `GaussianDrift` of the training split's mean and covariance
(`checkpoints/gaussian_mnist.npz`, every direction of positive variance). The Gaussian
ladders take time-dependent p_l(t) on the measured v_l(t) (`schedule_for`, unweighted),
with random or stratified draws. Each ladder is calibrated on its own run (`calibrate`),
p_l are optimised on FLOPs. `--testbed`: the same on the `pca16` exact-score testbed
(16-d latents), the shipped network of early exits as the levels and the Gaussian of the
mixture's moments (`GaussianMixture.moments`) as the base; with `--exact-top`, [that
Gaussian, the exact score]: how far the Gaussian is from the true score, no network
between them.

**Protocol.** Tuning set: 16 images, a Brownian path and `tuning_seeds` draw sequences.
Target: EM's strong error with `operating_steps` steps there. Each family's operating
point is its cheapest configuration (FLOPs) with a tuning error no larger. Held-out set:
16 other images, another path, `heldout_seeds` other draw sequences: EM at every step
count and each operating point are measured again. The reference of each set is EM with
`reference_steps` steps (at least 4x the finest configuration). Strong error: RMS over
images and draw sequences of the per-image distance to the reference (same noise, same
path). Draws are shared by the batch (groups=1), each sequence a separate run.

**Speedups at equal error.** EM's held-out errors are fitted as a N^-q; ML-EM's held-out
error e then costs EM (a / e)^(1/q) steps. speedup_flops: that cost over ML-EM's FLOPs;
speedup_wallclock: the same with seconds, EM's seconds per step and ML-EM's seconds
measured at batch `timing_batch` (samplers compiled ahead of time, timed in turns).
Intervals: 90% bootstrap over images (paired between the methods) and draw sequences
(timing noise is not in them). Per-image errors: median, 99th percentile and max over
images and draw sequences.

**Quality.** FD on the shipped classifier's features, `quality_batches` batches of
`quality_samples` samples with `quality_groups` draw groups each, against the held-out
split (on the testbed: FD of the latents to 10,000 exact draws): EM with
`operating_steps` steps and the operating point of each ladder's best family. (SDE
only.)

**Headline.** `headline` in the JSON: per ladder, its best family (largest speedup in
FLOPs) with `speedup_flops`, `speedup_wallclock`, `error`, `target_error` (held out) and
`quality`, or `reached: false`.
"""

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import jax
import numpy as np
from jaxtyping import Array

from mlem_jax import FamilyWithBase, level_costs
from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for, schedule_for
from mlem_jax.diffusion.checkpoint import load_model
from mlem_jax.diffusion.classifier import Classifier
from mlem_jax.diffusion.data import load_mnist
from mlem_jax.diffusion.gaussian import GaussianDrift, gaussian_statistics
from mlem_jax.diffusion.levels import (
    CASCADE_CHECKPOINTS,
    CHECKPOINTS,
    load_sampling_levels,
    with_base,
)
from mlem_jax.diffusion.metrics import classifier_features, frechet_distance
from mlem_jax.diffusion.mixture import ExactDrift
from mlem_jax.diffusion.runner import Setting, run_setting, seconds_in_turns
from mlem_jax.diffusion.sample import T_MIN, initial_noise
from mlem_jax.diffusion.sde import KINDS
from mlem_jax.diffusion.testbed import load_ladder, load_named_testbed


RESULTS = Path(__file__).parent / "results"
FULL: dict[str, Any] = dict(
    images=16,
    reference_steps=1536,
    em_steps=(32, 48, 64, 96, 128, 192),
    mlem_steps=(128, 256, 384),
    budgets=(8.0, 12.0, 16.0, 24.0, 32.0),
    tuning_seeds=3,
    heldout_seeds=6,
    operating_steps=64,
    calibration_images=16,
    calibration_steps=64,
    timing_batch=256,
    quality_batches=8,
    quality_samples=256,
    quality_groups=16,
    bootstrap=2000,
)
QUICK: dict[str, Any] = dict(
    images=2,
    reference_steps=128,
    em_steps=(8, 16),
    mlem_steps=(16, 32),
    budgets=(2.0, 4.0),
    tuning_seeds=2,
    heldout_seeds=2,
    operating_steps=16,
    calibration_images=2,
    calibration_steps=8,
    timing_batch=4,
    quality_batches=2,
    quality_samples=4,
    quality_groups=2,
    bootstrap=50,
)
TESTBED_IMAGES = 256  # 16-d latents are cheap: more samples per set, tighter intervals
# Each ladder's families: (label, probabilities, draws).
FAMILIES = {
    "levels": ("const_s",),
    "gaussian_top": ("pt", "pt_s"),
    "gaussian_family": ("pt", "pt_s"),
}
MODELS = {
    "cascade": "the shipped cascade",
    "checkpoints": "the four shipped UNets",
    "pca16": "the pca16 testbed's network of early exits",
    "pca16_exact": "the pca16 testbed, its exact score as the top",
}
FAMILY_NAMES = {
    "const_s": "constant p3, stratified",
    "pt": "p(t), random draws",
    "pt_s": "p(t), stratified draws",
}


def ladders(levels, rank: int | None = None) -> dict:
    """The three ladders on the same top network; the Gaussian base kept to `rank`
    directions (default: every stored one)."""
    return {
        "levels": levels,
        "gaussian_top": with_base(levels, top_only=True, rank=rank),
        "gaussian_family": with_base(levels, rank=rank),
    }


def testbed_ladders(kind: str, exact_top: bool, rank: int | None = None) -> dict:
    """The same ladders on the `pca16` exact-score testbed's network of early exits, the
    base the Gaussian of the mixture's moments; with `exact_top`, [that Gaussian, the
    exact score] alone."""
    mixture, _ = load_named_testbed("pca16")
    family = load_ladder(kind=kind)
    statistics = gaussian_statistics(*mixture.moments(), (mixture.dim,))
    base = GaussianDrift(
        statistics if rank is None else statistics.truncated(rank), family.sde, kind
    )
    if exact_top:
        return {"gaussian_top": [base, ExactDrift(mixture, family.sde, kind)]}
    return {
        "levels": family,
        "gaussian_top": [base, family[-1]],
        "gaussian_family": FamilyWithBase(base, family),
    }


def mlem_setting(family: str, n: int, m: float, calibration: dict) -> Setting:
    label = f"{family} N={n} m={m:g}"
    if family == "const_s":
        p = probabilities_for(calibration, n, m, "stratified")
        return Setting("mlem", n, p, draws="stratified", label=label)
    draws = "stratified" if family == "pt_s" else "random"
    schedule = schedule_for(calibration, n, m, draws=draws)
    return Setting("mlem", n, tuple(map(tuple, schedule.tolist())), draws=draws, label=label)


class Set:
    """Images, a Brownian path, draw keys and the reference of one set."""

    def __init__(self, seed: int, config: dict, shape, top, kind: str, seeds: int):
        noise, path, draws = jax.random.split(jax.random.key(seed), 3)
        self.x1 = initial_noise(noise, config["images"], shape)
        self.path = (
            grid_brownian_path(path, self.x1.shape, config["reference_steps"], T_MIN)
            if kind == "sde"
            else None
        )
        self.keys = [jax.random.fold_in(draws, s) for s in range(seeds)]
        self.reference = run_setting(
            Setting("em", config["reference_steps"]), top, self.x1, self.path, None, [0.0]
        ).samples

    def squared_errors(self, setting: Setting, levels, flops, cache) -> tuple[np.ndarray, float]:
        """Per-image squared distances to the reference, (draw sequences, images), and the
        mean FLOPs per image."""
        keys = self.keys if setting.method == "mlem" else self.keys[:1]
        rows, spent = [], []
        for key in keys:
            outcome = run_setting(setting, levels, self.x1, self.path, key, flops, cache)
            difference = (outcome.samples - self.reference).reshape(len(self.x1), -1)
            rows.append(np.sum(np.square(difference), axis=1))
            spent.append(outcome.flops)
        return np.asarray(rows), float(np.mean(spent))


def rms(squared: np.ndarray) -> float:
    return float(np.sqrt(np.mean(squared)))


def em_fit(steps, errors) -> tuple[float, float]:
    """(a, q) of errors = a N^-q, least squares in logs."""
    slope, intercept = np.polyfit(np.log(steps), np.log(errors), 1)
    return float(np.exp(intercept)), float(-slope)


def em_steps_for(error: float, fit: tuple[float, float]) -> float:
    a, q = fit
    return (a / error) ** (1.0 / q)


def heldout_speedups(
    em: dict, mlem: np.ndarray, mlem_flops: float, top_flops: float, config: dict, rng
) -> dict:
    """Equal-error FLOP speedup (EM's steps to reach ML-EM's error, from the fit of EM's
    held-out errors) and its bootstrap interval, and the steps factor for wall-clock."""
    steps = sorted(em)

    def steps_needed(images, seeds) -> float:
        errors = [rms(em[n][:, images]) for n in steps]
        return em_steps_for(rms(mlem[np.ix_(seeds, images)]), em_fit(steps, errors))

    count, seeds = mlem.shape[1], mlem.shape[0]
    point = steps_needed(np.arange(count), np.arange(seeds))
    draws = [
        steps_needed(rng.integers(0, count, count), rng.integers(0, seeds, seeds))
        for _ in range(config["bootstrap"])
    ]
    interval = np.percentile(draws, [5, 95])
    return {
        "em_steps_at_error": point,
        "em_steps_at_error_ci": interval.tolist(),
        "speedup_flops": point * top_flops / mlem_flops,
        "speedup_flops_ci": (interval * top_flops / mlem_flops).tolist(),
    }


def tails(squared: np.ndarray) -> dict:
    errors = np.sqrt(squared).reshape(-1)
    return {
        "median": float(np.median(errors)),
        "p99": float(np.percentile(errors, 99)),
        "max": float(errors.max()),
    }


def quality_features(testbed: bool) -> tuple[Callable[[Array], Any], Any]:
    """The features FD compares and those of the data: the shipped classifier's on the
    held-out split; on the testbed the latents themselves, 10,000 exact draws."""
    if testbed:
        mixture, _ = load_named_testbed("pca16")
        return (lambda x: x), mixture.sample(jax.random.key(7), 10_000)
    model = cast(Classifier, load_model(CHECKPOINTS / "classifier")[0])
    features = lambda x: classifier_features(model, x)  # noqa: E731
    return features, features(load_mnist("test").images)


def quality(setting: Setting, levels, features, held_out, shape, config, cache) -> dict:
    """FD of `features` of the samples to `held_out` features over `quality_batches`
    batches: mean and standard error."""
    distances = []
    for r in range(config["quality_batches"]):
        x1 = initial_noise(jax.random.key(1000 + r), config["quality_samples"], shape)
        grouped = (
            setting._replace(groups=config["quality_groups"])
            if setting.method == "mlem"
            else setting
        )
        outcome = run_setting(
            grouped,
            levels,
            x1,
            jax.random.key(2000 + r),
            jax.random.key(3000 + r),
            [0.0] * len(levels),
            cache,
        )
        distances.append(frechet_distance(features(outcome.samples), held_out))
    return {
        "fd": float(np.mean(distances)),
        "fd_standard_error": float(np.std(distances, ddof=1) / np.sqrt(len(distances))),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--checkpoints", default=str(CASCADE_CHECKPOINTS))
    parser.add_argument("--name", default="gaussian_base", help="stem of the result file")
    parser.add_argument("--kind", choices=KINDS, default="sde")
    parser.add_argument("--no-quality", action="store_true", help="skip the FD")
    parser.add_argument(
        "--rank", type=int, help="principal directions of the Gaussian base (default: all 628)"
    )
    parser.add_argument(
        "--ladders",
        nargs="+",
        choices=tuple(FAMILIES),
        default=list(FAMILIES),
        help="the ladders to measure (default: all three)",
    )
    parser.add_argument(
        "--testbed", action="store_true", help="the pca16 exact-score testbed's ladder"
    )
    parser.add_argument(
        "--exact-top", action="store_true", help="with --testbed: the exact score as the top"
    )
    parser.add_argument("--out", default=str(RESULTS))
    a = parser.parse_args(argv)
    if a.exact_top and not a.testbed:
        parser.error("--exact-top needs --testbed")
    config, out = (QUICK if a.quick else FULL), Path(a.out)
    if a.testbed and not a.quick:
        config = dict(config, images=TESTBED_IMAGES)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if a.testbed:
        all_ladders = testbed_ladders(a.kind, a.exact_top, a.rank)
        models = "pca16_exact" if a.exact_top else "pca16"
    else:
        levels, _ = load_sampling_levels(a.checkpoints, a.kind)
        all_ladders, models = ladders(levels, a.rank), Path(a.checkpoints).name
    every = {name: ladder for name, ladder in all_ladders.items() if name in a.ladders}
    if not every:
        parser.error(
            f"--ladders {' '.join(a.ladders)}: this set-up builds only {list(all_ladders)}"
        )
    base, top = all_ladders["gaussian_top"][0], [all_ladders["gaussian_top"][-1]]
    shape = base.statistics.shape
    cache: dict = {}
    calibrations = {
        name: calibrate(
            ladder,
            jax.random.key(1),
            shape,
            count=config["calibration_images"],
            num_steps=config["calibration_steps"],
            repeats=3,
        )
        for name, ladder in every.items()
    }
    for name, c in calibrations.items():
        print(f"calibrated {name}: v {np.round(c['variances'], 1).tolist()}", flush=True)
    top_flops = next(iter(calibrations.values()))["flops"][-1]
    tuning = Set(2, config, shape, top, a.kind, config["tuning_seeds"])
    heldout = Set(3, config, shape, top, a.kind, config["heldout_seeds"])
    print(f"references done, {time.perf_counter() - start:.0f} s", flush=True)

    em_settings = {n: Setting("em", n, label=f"EM N={n}") for n in config["em_steps"]}
    em_tuning = {
        n: rms(tuning.squared_errors(s, top, [top_flops], cache)[0]) for n, s in em_settings.items()
    }
    target = em_tuning[config["operating_steps"]]
    points, chosen = [], {}
    for ladder in every:
        calibration = calibrations[ladder]
        for family in FAMILIES[ladder]:
            best = None
            for n in config["mlem_steps"]:
                for m in config["budgets"]:
                    setting = mlem_setting(family, n, m, calibration)
                    squared, flops = tuning.squared_errors(
                        setting, every[ladder], calibration["flops"], cache
                    )
                    point = {
                        "ladder": ladder,
                        "family": family,
                        "label": setting.label,
                        "steps": n,
                        "budget": m,
                        "error": rms(squared),
                        "flops": flops,
                    }
                    points.append(point)
                    print(
                        f"{ladder:<16} {setting.label:<22} error {point['error']:.3f} "
                        f"MFLOP {flops / 1e6:.0f}",
                        flush=True,
                    )
                    if point["error"] <= target and (best is None or flops < best[1]["flops"]):
                        best = (setting, point)
            chosen[(ladder, family)] = best

    em_heldout = {
        n: heldout.squared_errors(s, top, [top_flops], cache)[0] for n, s in em_settings.items()
    }
    target_heldout = rms(em_heldout[config["operating_steps"]])
    rng = np.random.default_rng(0)
    results: dict[str, dict] = {}
    for (ladder, family), best in chosen.items():
        name = f"{ladder}/{family}"
        if best is None:
            results[name] = {"ladder": ladder, "family": family, "reached": False}
            continue
        setting, point = best
        squared, flops = heldout.squared_errors(
            setting, every[ladder], calibrations[ladder]["flops"], cache
        )
        results[name] = {
            "ladder": ladder,
            "family": family,
            "reached": True,
            "label": setting.label,
            "tuning_error": point["error"],
            "error": rms(squared),
            "flops": flops,
            "per_image_error": tails(squared),
            **heldout_speedups(em_heldout, squared, flops, top_flops, config, rng),
        }
        print(
            f"held out {name}: {results[name]['error']:.3f} (target {target_heldout:.3f}), "
            f"{results[name]['speedup_flops']:.2f}x FLOPs",
            flush=True,
        )

    # Wall-clock at the users' batch size.
    timing_x1 = initial_noise(jax.random.key(11), config["timing_batch"], shape)
    operating = {"em": em_settings[config["operating_steps"]]}
    runs = {"em": (operating["em"], top)}
    for name, r in results.items():
        if r["reached"]:
            operating[name] = chosen[(r["ladder"], r["family"])][0]
            runs[name] = (operating[name], every[r["ladder"]])
    seconds = seconds_in_turns(runs, timing_x1, jax.random.key(12), jax.random.key(100), cache)
    em_step_seconds = seconds["em"] / config["operating_steps"]
    for name, r in results.items():
        if r["reached"]:
            r["seconds"] = seconds[name]
            r["speedup_wallclock"] = r["em_steps_at_error"] * em_step_seconds / seconds[name]
            r["speedup_wallclock_ci"] = [
                n * em_step_seconds / seconds[name] for n in r["em_steps_at_error_ci"]
            ]
    level_timing = {
        name: level_costs(ladder, 1.0, timing_x1, repeats=5) for name, ladder in every.items()
    }

    quality_results: dict[str, dict] = {}
    if a.kind == "sde" and not a.no_quality:
        features, held_out = quality_features(a.testbed)
        quality_results["em"] = quality(
            operating["em"], top, features, held_out, shape, config, cache
        )
        for ladder in every:
            best = best_family(results, ladder)
            if best is not None:
                name = f"{ladder}/{best['family']}"
                quality_results[name] = quality(
                    operating[name], every[ladder], features, held_out, shape, config, cache
                )
                print(f"FD {name}: {quality_results[name]['fd']:.1f}", flush=True)
        for name, q in quality_results.items():
            if name in results:
                results[name]["quality"] = q
                results[name]["quality_within_5pct"] = q["fd"] <= 1.05 * quality_results["em"]["fd"]

    em_squared = em_heldout[config["operating_steps"]]
    result = {
        "kind": a.kind,
        "platform": jax.devices()[0].platform,
        "rank": base.statistics.rank,
        "checkpoints": models,
        "heldout": True,
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "reference_steps": config["reference_steps"],
        "max_config_steps": max(max(config["mlem_steps"]), max(config["em_steps"])),
        "target_error_tuning": target,
        "target_error": target_heldout,
        "em_tuning": {str(n): e for n, e in em_tuning.items()},
        "em_heldout": {str(n): rms(s) for n, s in em_heldout.items()},
        "em_fit": em_fit(sorted(em_heldout), [rms(em_heldout[n]) for n in sorted(em_heldout)]),
        "em": {
            "flops": config["operating_steps"] * top_flops,
            "seconds": seconds["em"],
            "per_image_error": tails(em_squared),
            "quality": quality_results.get("em"),
        },
        "calibrations": {
            name: {k: c[k] for k in ("variances", "errors", "flops", "seconds", "profile")}
            for name, c in calibrations.items()
        },
        "level_gflops": {
            name: (c.flops / c.seconds / 1e9).tolist() for name, c in level_timing.items()
        },
        "level_seconds": {
            name: (c.seconds / config["timing_batch"]).tolist() for name, c in level_timing.items()
        },
        "operating_points": results,
        "headline": headline(results, target_heldout),
        "points": points,
        "seconds": time.perf_counter() - start,
    }
    stem = a.name if a.kind == "sde" else f"{a.name}_ode"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}_table.md").write_text(table(result))
    print(table(result))
    return result


def best_family(results: dict, ladder: str) -> dict | None:
    """The operating point of `ladder`'s family with the largest speedup in FLOPs."""
    reached = [r for r in results.values() if r["ladder"] == ladder and r["reached"]]
    return max(reached, key=lambda r: r["speedup_flops"]) if reached else None


def headline(results: dict, target_error: float) -> dict:
    """Per ladder, its best family's speedups, held-out error and quality (None where it
    was not scored), or {"reached": False}."""
    out = {}
    for ladder in dict.fromkeys(r["ladder"] for r in results.values()):
        best = best_family(results, ladder)
        out[ladder] = (
            {"reached": False}
            if best is None
            else {
                "reached": True,
                "family": best["family"],
                "speedup_flops": best["speedup_flops"],
                "speedup_wallclock": best["speedup_wallclock"],
                "error": best["error"],
                "target_error": target_error,
                "quality": best.get("quality"),
            }
        )
    return out


def _sig(value: float, digits: int = 3) -> str:
    """`value` to `digits` significant figures, trailing zeros kept (6.90, 0.0547, 543)."""
    magnitude = int(np.floor(np.log10(abs(value)))) if value else 0
    return f"{value:.{max(digits - 1 - magnitude, 0)}f}"


def table(result: dict) -> str:
    """The operating points on the held-out set, as a Markdown table."""
    lines = [
        f"**{'Reverse SDE' if result['kind'] == 'sde' else 'Probability-flow ODE'}**, "
        f"{MODELS.get(result['checkpoints'], result['checkpoints'])}, held out: "
        f"target {_sig(result['target_error'])} (EM N=64 on the held-out set; "
        f"{_sig(result['target_error_tuning'])} on the tuning set)",
        "",
        "| ladder | probabilities | operating point | error (held out) | FLOPs | 90% interval "
        "| wall-clock | 90% interval | per-image error: median / p99 / max | FD |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    em = result["em"]
    fd = lambda q: "—" if not q else f"{_sig(q['fd'], 4)} ± {_sig(q['fd_standard_error'], 2)}"  # noqa: E731
    tail = lambda t: f"{_sig(t['median'])} / {_sig(t['p99'])} / {_sig(t['max'])}"  # noqa: E731
    lines.append(
        f"| EM, top network | — | N=64 | {_sig(result['target_error'])} | 1x | — | 1x | — | "
        f"{tail(em['per_image_error'])} | {fd(em['quality'])} |"
    )
    for r in result["operating_points"].values():
        name = FAMILY_NAMES[r["family"]]
        if not r["reached"]:
            missing = " — |" * 7
            lines.append(f"| {r['ladder']} | {name} | not reached on the tuning set |{missing}")
            continue
        lo, hi = r["speedup_flops_ci"]
        wlo, whi = r["speedup_wallclock_ci"]
        lines.append(
            f"| {r['ladder']} | {name} | {r['label'].split(' ', 1)[1]} | {_sig(r['error'])} | "
            f"{r['speedup_flops']:.2f}x | [{lo:.2f}, {hi:.2f}] | {r['speedup_wallclock']:.2f}x | "
            f"[{wlo:.2f}, {whi:.2f}] | {tail(r['per_image_error'])} | {fd(r.get('quality'))} |"
        )
    lines.append("")
    lines.append(
        f"Speedups at equal error: EM's held-out errors fitted as a N^-q (a = "
        f"{result['em_fit'][0]:.1f}, q = {result['em_fit'][1]:.2f}); reference EM with "
        f"{result['reference_steps']} steps (finest configuration {result['max_config_steps']}); "
        "wall-clock at batch "
        f"{result['config']['timing_batch']} on {result['platform']}"
        + (f"; the Gaussian base keeps {result['rank']} directions" if "rank" in result else "")
        + ". Written by `experiments/gaussian_base.py`."
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
