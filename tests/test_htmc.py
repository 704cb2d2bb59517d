"""experiments/htmc.py: ML-EM's cost-error frontier against EM's in the HTMC regime."""

import json
import pathlib

import pytest

from experiment_helpers import run_experiment


def run_htmc(out: pathlib.Path, *flags: str) -> dict:
    """Run the experiment in a fresh interpreter, writing to `out`; return its JSON."""
    run_experiment("htmc", out, *flags)
    return json.loads((out / "htmc.json").read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("htmc_quick")
    return out, run_htmc(out, "--quick")


def gamma_entry(report: dict, gamma: float) -> dict:
    (entry,) = [r for r in report["gammas"] if r["gamma_nominal"] == gamma]
    return entry


def test_quick_run_writes_json_figure_and_table(quick):
    out, report = quick
    assert report["quick"] and report["duration_seconds"] > 0
    assert (out / "htmc.png").stat().st_size > 0
    table = (out / "htmc_table.md").read_text()
    assert table.startswith("| gamma | measured gamma | EM slope")
    entry = gamma_entry(report, 3.0)
    for key in ("gamma_nominal", "gamma_measured", "em_slope", "mlem_slope",
                "speedup_flops_at_min_error", "speedup_wallclock_at_min_error",
                "em_frontier", "mlem_frontier"):
        assert key in entry


def test_quick_measured_gamma_is_near_nominal(quick):
    _, report = quick
    assert abs(gamma_entry(report, 3.0)["gamma_measured"] - 3.0) < 0.5


def test_quick_em_frontier_is_steeper_than_mlem_at_gamma_3(quick):
    _, report = quick
    entry = gamma_entry(report, 3.0)
    assert entry["em_slope"] > entry["mlem_slope"]


def test_quick_mlem_frontier_lies_below_em_at_small_error(quick):
    _, report = quick
    entry = gamma_entry(report, 3.0)
    assert entry["flops"]["speedup_at_min_error"] > 1
    assert entry["flops"]["speedup_at_window_low"] > 1
    smallest = min(r["error"] for r in entry["em_frontier"])
    cheapest_mlem_below = min(r["flops"] for r in entry["mlem_frontier"]
                              if r["error"] <= 1.2 * smallest)
    cheapest_em_below = min(r["flops"] for r in entry["em_frontier"]
                            if r["error"] <= 1.2 * smallest)
    assert cheapest_mlem_below < cheapest_em_below


@pytest.mark.slow
def test_full_run_measures_gamma_and_orders_the_slopes(tmp_path):
    report = run_htmc(tmp_path)
    for entry in report["gammas"]:
        assert abs(entry["gamma_measured"] - entry["gamma_nominal"]) < 0.25
        assert entry["em_slope"] > entry["mlem_slope"]
        assert entry["speedup_flops_at_min_error"] > 1
        assert entry["flops"]["speedup_at_window_low"] > 1
