"""experiments/diffusion.py: the speedup model on an exact error model, and a quick run."""

import json

import numpy as np
import pytest

from mlem_jax.diffusion.calibrate import probabilities_for
from mlem_jax.diffusion.levels import CHECKPOINTS

from experiment_helpers import load_experiment, run_experiment


def test_speedup_model_recovers_an_exact_error_model():
    calibration = {"flops": [1e6, 4e6, 16e6, 64e6], "variances": [400.0, 100.0, 25.0]}
    a, kappa, v = 200.0, 0.5, np.asarray(calibration["variances"])
    points = [
        {"family": "em", "label": f"EM N={n}", "steps": n, "error": a / n}
        for n in (16, 32, 64, 128)
    ]
    for n in (64, 128):
        for m in (4.0, 16.0):
            p = np.asarray(probabilities_for(calibration, n, m))
            error = np.sqrt((a / n) ** 2 + kappa * np.sum(v * (1 / p[1:] - 1)) / n)
            points.append(
                {
                    "family": "mlem",
                    "label": f"ML-EM N={n} m={m:g}",
                    "steps": n,
                    "probabilities": p.tolist(),
                    "error": float(error),
                }
            )
    result = {
        "calibration": calibration,
        "points": points,
        "target_error": a / 64,
        "level_seconds": [1e-3, 2e-3, 4e-3, 8e-3],
    }
    limits = load_experiment("diffusion").speedup_model(result)
    assert limits["em_fit"]["a"] == pytest.approx(a) and limits["em_fit"]["q"] == pytest.approx(1)
    assert limits["kappa"] == pytest.approx(kappa)
    for fit in limits["fit"]:
        assert fit["predicted"] == pytest.approx(fit["error"])
    assert (limits["flops_bound"], limits["wallclock_bound"]) == (64.0, 8.0)
    flops = [row["speedup_flops"] for row in limits["predicted"]]
    seconds = [row["speedup_wallclock"] for row in limits["predicted"]]
    assert None not in flops + seconds
    assert np.all(np.diff(flops) >= 0) and np.all(np.diff(seconds) >= 0)
    assert max(flops) <= 64.0 and max(seconds) <= 8.0
    by_target = {row["target"]: row["speedup_flops"] for row in limits["by_target"]}
    assert sorted(by_target) == sorted(a / n for n in (16, 32, 64, 128))
    assert by_target[a / 64] == pytest.approx(flops[0])


def test_stratified_reduction_compares_excess_variances_of_matching_runs():
    a = 100.0
    points = [{"family": "em", "label": f"EM N={n}", "steps": n, "error": a / n} for n in (16, 64)]
    for n, m, excess, reduction in ((16, 2, 40.0, 4.0), (64, 8, 9.0, 9.0)):
        for family, tag, value in (
            ("mlem", "", excess),
            ("mlem_s", " stratified", excess / reduction),
        ):
            points.append(
                {
                    "family": family,
                    "label": f"ML-EM{tag} N={n} m={m}",
                    "steps": n,
                    "probabilities": [1.0, 0.5],
                    "error": float(np.sqrt((a / n) ** 2 + value)),
                }
            )
    points.append(
        {
            "family": "mlem",
            "label": "ML-EM N=64 m=32",
            "steps": 64,
            "probabilities": [1.0, 0.5],
            "error": 3.0,
        }
    )
    for family, tag in (("mlem", ""), ("mlem_s", " stratified")):  # EM: nothing to compare
        points.append(
            {
                "family": family,
                "label": f"ML-EM{tag} N=64 m=64",
                "steps": 64,
                "probabilities": [1.0, 1.0],
                "error": a / 64,
            }
        )
    result = {"points": points, "limits": {"em_fit": {"a": a, "q": 1.0}}}
    got = load_experiment("diffusion").stratified_reduction(result)
    assert [(r["steps"], r["m"]) for r in got["rows"]] == [(16, "2"), (64, "8")]
    assert [r["reduction"] for r in got["rows"]] == pytest.approx([4.0, 9.0])
    assert got["median"] == pytest.approx(6.5)


def test_speedup_model_does_not_cost_the_levels_that_cancel():
    # A correction this noisy reaches the target (1% above EM's 64-step error) only with
    # p = (1, 1), i.e. EM at 64 steps, where level 1 cancels and is not evaluated: the
    # predicted speedup is EM's 64 / 1.01 steps over 64, not 0.8 times that.
    calibration = {"flops": [1e6, 4e6], "variances": [1e6]}
    a, kappa = 200.0, 0.5
    points = [
        {"family": "em", "label": f"EM N={n}", "steps": n, "error": a / n}
        for n in (16, 32, 64, 128)
    ]
    for m in (16.0, 32.0):
        p = np.asarray(probabilities_for(calibration, 64, m))
        error = np.sqrt((a / 64) ** 2 + kappa * 1e6 * (1 / p[1] - 1) / 64)
        points.append(
            {
                "family": "mlem",
                "label": f"ML-EM N=64 m={m:g}",
                "steps": 64,
                "probabilities": p.tolist(),
                "error": float(error),
            }
        )
    result = {
        "calibration": calibration,
        "points": points,
        "target_error": 1.01 * a / 64,
        "level_seconds": [1e-3, 4e-3],
    }
    limits = load_experiment("diffusion").speedup_model(result)
    assert limits["kappa"] == pytest.approx(kappa)
    assert limits["predicted"][0]["speedup_flops"] == pytest.approx(1 / 1.01)
    assert limits["predicted"][0]["speedup_wallclock"] == pytest.approx(1 / 1.01)


@pytest.mark.slow
@pytest.mark.parametrize(
    "flags, stem, kind, levels",
    [
        ((), "diffusion", "sde", 4),
        (
            ("--kind", "ode", "--checkpoints", str(CHECKPOINTS), "--name", "diffusion_unets"),
            "diffusion_unets_ode",
            "ode",
            4,
        ),
        (("--below-top",), "diffusion_below_top", "sde", 3),
    ],
)
def test_quick_run_writes_results_table_and_figures(tmp_path, flags, stem, kind, levels):
    run_experiment("diffusion", tmp_path, "--quick", *flags)
    result = json.loads((tmp_path / f"{stem}.json").read_text())
    assert result["kind"] == kind and result["name"] == stem
    assert result["below_top"] == ("--below-top" in flags)
    assert {"gamma", "speedup_flops", "speedup_wallclock", "frontiers", "limits"} <= set(result)
    assert {"em", "mlem", "mlem_s", "mlem_s3", "tstitch"} <= set(result["quality"])
    assert result["stratified_reduction"]["rows"]
    assert len(result["level_seconds"]) == len(result["widths"]) == levels
    assert result["calibration"]["shared"] == ("--checkpoints" not in flags)
    for suffix in ("_frontier.png", "_samples.png", "_table.md"):
        assert (tmp_path / f"{stem}{suffix}").stat().st_size > 0


def test_equal_cost_steps_divide_the_mlem_steps():
    """The equal-cost grids' EM and T-Stitch step counts divide the lcm of the ML-EM
    ones, so their common Brownian path stays that fine (23 and 37 steps would need
    a path of 108,928 intervals beside 128)."""
    nearest = load_experiment("diffusion").nearest_divisor
    assert [nearest(384, x) for x in (23, 37, 0.3, 1000.0)] == [24, 32, 1, 384]
    assert nearest(128, 44) == 32 and nearest(128, 46) == 64  # nearest in ratio
