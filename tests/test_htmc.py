"""experiments/htmc.py: ML-EM's cost-error frontier against EM's in the HTMC regime.

The `--quick` run (a minute or more) is marked slow; the default run redraws the
committed results.
"""

import json
import pathlib
import shutil

import pytest

from experiment_helpers import EXPERIMENTS, run_experiment


def run_htmc(out: pathlib.Path, *flags: str) -> dict:
    """Run the experiment in a fresh interpreter, writing to `out`; return its JSON."""
    run_experiment("htmc", out, *flags)
    return json.loads((out / "htmc.json").read_text())


def test_render_only_reproduces_the_committed_table_and_figure(tmp_path):
    results = EXPERIMENTS / "results"
    shutil.copy(results / "htmc.json", tmp_path / "htmc.json")
    run_experiment("htmc", tmp_path, "--render-only")
    assert (tmp_path / "htmc_table.md").read_text() == (results / "htmc_table.md").read_text()
    assert (tmp_path / "htmc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("htmc_quick")
    return out, run_htmc(out, "--quick")


def gamma_entry(report: dict, gamma: float) -> dict:
    (entry,) = [r for r in report["gammas"] if r["gamma_nominal"] == gamma]
    return entry


@pytest.mark.slow
def test_quick_run_writes_json_figure_and_table(quick):
    out, report = quick
    assert report["quick"] and report["duration_seconds"] > 0
    assert (out / "htmc.png").stat().st_size > 0
    table = (out / "htmc_table.md").read_text()
    assert table.startswith("| gamma | measured gamma | EM slope")
    entry = gamma_entry(report, 3.0)
    for key in (
        "gamma_nominal",
        "gamma_measured",
        "em_slope",
        "mlem_slope",
        "speedup_flops_at_min_error",
        "speedup_wallclock_at_min_error",
        "em_frontier",
        "mlem_frontier",
    ):
        assert key in entry


@pytest.mark.slow
def test_quick_measured_gamma_is_near_nominal(quick):
    _, report = quick
    assert abs(gamma_entry(report, 3.0)["gamma_measured"] - 3.0) < 0.5


@pytest.mark.slow
def test_quick_em_frontier_is_steeper_than_mlem_at_gamma_3(quick):
    _, report = quick
    entry = gamma_entry(report, 3.0)
    assert entry["em_slope"] > entry["mlem_slope"]


@pytest.mark.slow
def test_quick_mlem_frontier_lies_below_em_at_small_error(quick):
    _, report = quick
    entry = gamma_entry(report, 3.0)
    assert entry["flops"]["speedup_at_min_error"] > 1
    assert entry["flops"]["speedup_at_window_low"] > 1
    smallest = min(r["error"] for r in entry["em_frontier"])
    cheapest_mlem_below = min(
        r["flops"] for r in entry["mlem_frontier"] if r["error"] <= 1.2 * smallest
    )
    cheapest_em_below = min(
        r["flops"] for r in entry["em_frontier"] if r["error"] <= 1.2 * smallest
    )
    assert cheapest_mlem_below < cheapest_em_below


@pytest.mark.slow
def test_full_run_measures_gamma_and_orders_the_slopes(tmp_path):
    report = run_htmc(tmp_path)
    for entry in report["gammas"]:
        assert abs(entry["gamma_measured"] - entry["gamma_nominal"]) < 0.25
        assert entry["em_slope"] > entry["mlem_slope"]
        assert entry["speedup_flops_at_min_error"] > 1
        assert entry["flops"]["speedup_at_window_low"] > 1
