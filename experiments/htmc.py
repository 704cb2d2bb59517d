"""The cost-error scaling of ML-EM against EM in the HTMC regime.

Theory (`docs/method.md`): if a drift accurate to eps costs eps^-gamma, EM reaches a strong
error e at a cost ~ e^-(gamma + 1) and ML-EM at ~ e^-max(gamma, 2). This script measures
both cost-error frontiers and their slopes for several gamma.

**Problem.** dX = f(X) dt + sigma dW on t in [0, 1], X in R^d, X_0 ~ N(0, I), with the
random-feature drift f(x) = -x + A sum_j j^-alpha u_j sin(w_j . x + b_j)
(`mlem_jax.random_feature_levels`). Level l keeps the first M_l = 2^(l-1) features,
l = 1..L; the exact drift f_ref keeps 4 M_L. alpha = 1/2 + 1/gamma, so
eps_l ~ A sqrt(gamma / 2) M_l^(-1/gamma) at a cost ~ M_l: gamma is nominal, and
measured (eps_l against f_ref on points along reference trajectories, c_l in XLA FLOPs).

**Amplitude A.** Only A sets where the ladder's drift errors sit relative to the
time-discretisation errors; the slopes and the speedup at a given error do not depend on
it, the feature count needed to reach that error does (~ A^gamma). A is fixed, the same
rule for every gamma, so that the top level's nominal drift error equals
`top_drift_error`: the smallest errors are limited by the ladder and by the step grid
alike.

**Strong error.** RMS over paths of |X_T - X_T^ref|, X^ref from EM with f_ref and
`reference_steps` steps on the same Brownian path: one diffrax `VirtualBrownianTree` per
path, stored on the reference grid (`mlem_jax.SampledBrownianPath`), so every step count
sees the same path at one lookup per step. ML-EM's level draws are shared by the paths of
a chunk (unbatched key, so skipped levels are really skipped) and differ between chunks:
the error averages over paths and draws.

**Cost.** FLOPs actually spent (`Solution.cost` with the levels' FLOPs), and wall-clock:
the median time of the jitted, `vmap`ped solve over all paths with PRNG-key Brownian
increments (what a user runs; the Brownian tree is only the error instrument), measured
for the configurations on each method's FLOP frontier.

**Frontiers.** EM: every level l and step count N. ML-EM: every top level K (levels
1..K), N, and top-level budget m, fractions included (p from `optimal_probabilities` on
the measured v_l and FLOPs, p_K = m / N). Each frontier is the lower envelope of its
configurations. At gamma = `comparison_gamma` ML-EM also runs with the independent
coupling and with naive p_l = 2^-(l-1).

**Fit window.** The slopes are fitted on the frontier points with error in
[2 e_floor, e_ceiling]: e_floor is the EM error with the top level and the most steps
(the smallest error the grid resolves; below about twice it either the ladder's top or
the step grid binds), e_ceiling the EM error with the cheapest level and the most steps
(above it the cheapest level is accurate enough and only N matters). Both are read off
the EM sweep before any slope is fitted, and the same window serves both methods. The
slopes over each half of the window are reported too, and 90% intervals from resampling
the chunks of paths and level draws.

**Speedups.** EM's cost over ML-EM's to reach an error, read off the frontiers: at the
smallest error both reach (the grid's floor: both use the top level and the most steps
there, so ML-EM must all but remove its randomisation, many top-level draws) and at the
window's low end.

Run: `python experiments/htmc.py [--quick] [--out DIR] [--render-only]`.
"""

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
from htmc_report import (
    bootstrap,
    compare,
    fit_window,
    frontier,
    markdown_table,
    plot_frontiers,
)
from htmc_sweeps import (
    Experiment,
    Paths,
    Settings,
    make_paths,
    prepare,
    sweep_em,
    sweep_mlem,
)


FULL = Settings(
    gammas=(1.5, 2.5, 3.0, 4.0),
    num_levels=13,
    step_counts=(8, 16, 32, 64, 128, 256, 512, 1024),
    top_level_budgets=(0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
    reference_steps=4096,
    num_chunks=8,
    paths_per_chunk=8,
    comparison_gamma=3.0,
)
QUICK = dataclasses.replace(
    FULL,
    gammas=(3.0,),
    num_levels=8,
    step_counts=(16, 64, 256),
    top_level_budgets=(2, 8),
    reference_steps=1024,
    num_chunks=4,
    paths_per_chunk=8,
    top_drift_error=8e-3,
    comparison_gamma=None,
    timing_repeats=2,
)


def without_probabilities(record: dict) -> dict:
    """A record without its p (kept in the JSON for frontier records only)."""
    return {key: value for key, value in record.items() if key != "probabilities"}


def timed_frontier(experiment: Experiment, records: list[dict]) -> list[dict]:
    """The FLOP frontier's records, each with its measured `seconds` per path."""
    return [{**r, "seconds": experiment.seconds_per_path(r)} for r in frontier(records)]


def compare_variants(experiment: Experiment, em, nested_optimal, window) -> list[dict]:
    """Nested vs independent coupling, optimal vs naive probabilities, against EM."""
    variants = {("nested", "optimal"): nested_optimal}
    for coupling, rule in (
        ("independent", "optimal"),
        ("nested", "naive"),
        ("independent", "naive"),
    ):
        variants[coupling, rule] = sweep_mlem(experiment, coupling, rule)
    return [
        {
            "coupling": coupling,
            "probabilities": rule,
            **compare(em, records, window, "flops"),
            "frontier": frontier(records),
        }
        for (coupling, rule), records in variants.items()
    ]


def run_gamma(gamma: float, paths: Paths, settings: Settings) -> dict:
    """Calibration, both sweeps, frontiers, slopes and speedups for one gamma."""
    stages, clock = {}, time.perf_counter()

    def lap(stage):
        nonlocal clock
        stages[stage], clock = time.perf_counter() - clock, time.perf_counter()

    experiment, calibration = prepare(gamma, paths, settings)
    lap("reference_and_calibration")
    em = sweep_em(experiment)
    lap("em_sweep")
    mlem = sweep_mlem(experiment)
    lap("mlem_sweep")
    window = fit_window(em)
    em_timed, mlem_timed = (timed_frontier(experiment, records) for records in (em, mlem))
    lap("wallclock_timing")
    flops = compare(em, mlem, window, "flops")
    seconds = compare(em_timed, mlem_timed, window, "seconds")
    result = {
        "gamma_nominal": gamma,
        "gamma_measured": calibration["gamma_measured"],
        "em_slope": flops["em_slope"],
        "mlem_slope": flops["mlem_slope"],
        "speedup_flops_at_min_error": flops["speedup_at_min_error"],
        "speedup_wallclock_at_min_error": seconds["speedup_at_min_error"],
        "min_error": flops["min_error"],
        "fit_window": list(window),
        "flops": flops,
        "wallclock": seconds,
        "bootstrap_90": bootstrap(em, mlem, seed=settings.seed),
        "calibration": calibration,
        "em_frontier": em_timed,
        "mlem_frontier": mlem_timed,
        "em_wallclock_frontier": frontier(em_timed, "seconds"),
        "mlem_wallclock_frontier": frontier(mlem_timed, "seconds"),
        "em_configurations": em,
        "mlem_configurations": [without_probabilities(r) for r in mlem],
    }
    if gamma == settings.comparison_gamma:
        result["comparison"] = compare_variants(experiment, em, mlem, window)
        lap("comparison_sweeps")
    result["stage_seconds"] = stages
    result["seconds"] = sum(stages.values())
    shown = {
        key: "n/a" if result[key] is None else f"{result[key]:.2f}"
        for key in (
            "gamma_measured",
            "em_slope",
            "mlem_slope",
            "speedup_flops_at_min_error",
            "speedup_wallclock_at_min_error",
        )
    }
    print(
        f"gamma={gamma:g}: "
        + ", ".join(f"{k} {v}" for k, v in shown.items())
        + f"; {result['seconds']:.0f} s",
        flush=True,
    )
    return result


def compact(value: Any) -> Any:
    """Floats to 4 significant digits and per-chunk errors (used for the bootstrap, done
    by then) left out, so that the JSON stays small."""
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [compact(item) for item in value]
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if k != "chunk_squared_errors"}
    return value


def run(settings: Settings, quick: bool) -> dict:
    """Every gamma of `settings`; the report written to htmc.json."""
    start = time.perf_counter()
    paths = make_paths(settings)
    results = [run_gamma(gamma, paths, settings) for gamma in settings.gammas]
    duration = time.perf_counter() - start
    print(f"total {duration:.0f} s", flush=True)
    return compact(
        {
            "settings": dataclasses.asdict(settings),
            "quick": quick,
            "duration_seconds": duration,
            "gammas": results,
        }
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small smoke-test sizes")
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path(__file__).parent / "results"
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="redraw the figure and table from OUT/htmc.json, run nothing",
    )
    options = parser.parse_args(argv)
    results_file = options.out / "htmc.json"
    if options.render_only:
        report = json.loads(results_file.read_text())
    else:
        jax.config.update("jax_platforms", "cpu")
        report = run(QUICK if options.quick else FULL, options.quick)
        options.out.mkdir(parents=True, exist_ok=True)
        results_file.write_text(json.dumps(report, indent=1))
    plot_frontiers(report["gammas"], options.out / "htmc.png")
    (options.out / "htmc_table.md").write_text(markdown_table(report))
    print(f"wrote {options.out}/htmc.png and htmc_table.md")


if __name__ == "__main__":
    main()
