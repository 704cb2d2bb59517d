"""experiments/grids.py: operating points and a quick run."""

import json

import pytest

from mlem_jax.diffusion import GRIDS

from experiment_helpers import load_experiment, run_experiment


def test_operating_point_is_the_cheapest_that_reaches_the_target():
    grids = load_experiment("grids")
    points = [
        {"label": "a", "error": 3.0, "flops": 1.0},
        {"label": "b", "error": 2.0, "flops": 5.0},
        {"label": "c", "error": 1.5, "flops": 4.0},
    ]
    assert grids.operating(points, 2.0)["label"] == "c"
    missed = grids.operating(points, 1.0)
    assert missed["label"] == "c" and not missed["reaches_target"]


@pytest.mark.slow
def test_quick_run_writes_results(tmp_path):
    run_experiment("grids", tmp_path, "--quick", "--kinds", "sde", "--grids", "uniform", "logsnr")
    result = json.loads((tmp_path / "grids.json").read_text())
    assert set(result["kinds"]["sde"]) == {"uniform", "logsnr"}
    assert result["default_grid"] in GRIDS
    for run in result["kinds"]["sde"].values():
        assert run["target_error"] > 0 and run["points"]["em"][0]["common_error"] > 0
        assert set(run["speedups"]) == {"p3", "pt"}
    table = (tmp_path / "grids_table.md").read_text()
    assert "log-SNR uniform" in table and "Default grid" in table
