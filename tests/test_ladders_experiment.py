"""experiments/ladders.py: the target and operating points on made-up runs, and a quick run."""

import json

import pytest

from experiment_helpers import load_experiment, run_experiment


LADDERS = load_experiment("ladders")


def em_run(level, steps, error, cost):
    return {
        "method": "em",
        "level": level,
        "steps": steps,
        "error": error,
        "flops": cost,
        "label": f"EM level {level + 1} N={steps}",
    }


def test_target_a_is_the_cheapest_em_within_the_slack_of_the_best():
    em = [
        em_run(0, 16, 3.0, 16),
        em_run(0, 64, 2.0, 64),
        em_run(1, 16, 2.5, 64),
        em_run(1, 64, 1.05, 256),
        em_run(1, 256, 1.0, 1024),
    ]
    target, chosen = LADDERS.target_a(em, 1.1)
    assert (target, chosen["label"]) == (1.05, "EM level 2 N=64")
    mlem = [
        {"error": 1.04, "flops": 50.0},
        {"error": 1.2, "flops": 10.0},
        {"error": 0.9, "flops": 80.0},
    ]
    assert LADDERS.cheapest(mlem, target)["flops"] == 50.0
    assert LADDERS.cheapest(mlem, 0.5) is None
    rows = LADDERS.speedups_at([2.0, 1.05], em, {"mlem": mlem})
    assert rows[0]["em_flops"] == 64 and rows[0]["mlem"] == pytest.approx(6.4)
    assert rows[1]["mlem"] == pytest.approx(256 / 50)


def test_a_run_of_one_testbed_keeps_the_others_measured_before(tmp_path):
    path = tmp_path / "ladders_raw.json"
    earlier = {
        "config": {"testbeds": ["pca16"], "families": ["exits", "stacked"]},
        "testbeds": {"pca16": {"families": {"stacked": 1, "exits": 1}}, "pca32": {"run": 1}},
        "seconds": 10.0,
    }
    now = {
        "config": {"testbeds": ["pca32"], "families": ["independent"]},
        "testbeds": {"pca32": {"families": {"independent": 2}}},
        "seconds": 5.0,
    }
    assert LADDERS.with_earlier_testbeds(now, path) is now  # nothing earlier
    path.write_text(json.dumps(earlier))
    merged = LADDERS.with_earlier_testbeds(now, path)
    assert merged["testbeds"] == {
        "pca16": {"families": {"stacked": 1, "exits": 1}},
        "pca32": {"families": {"independent": 2}},
    }
    assert list(merged["testbeds"]) == merged["config"]["testbeds"] == ["pca16", "pca32"]
    assert merged["config"]["families"] == ["independent", "exits", "stacked"]
    assert merged["seconds"] == 15.0
    both = dict(now, testbeds={"pca16": {"run": 3}, "pca32": {"run": 3}})
    assert LADDERS.with_earlier_testbeds(both, path) is both  # nothing left to keep


@pytest.mark.slow
def test_quick_run_writes_the_results_the_readme_reads(tmp_path):
    run_experiment("ladders", tmp_path, "--quick", timeout=1800)
    summary = json.loads((tmp_path / "ladders.json").read_text())
    for key in (
        "gamma",
        "target_error",
        "speedup_flops",
        "speedup_wallclock",
        "quality",
        "families",
        "depth",
    ):
        assert key in summary
    assert set(summary["families"]) == set(LADDERS.QUICK["families"])
    for row in summary["families"].values():
        assert set(row) == {"v_over_delta2", "speedup_flops", "speedup_wallclock"}
    assert [row["top_level"] for row in summary["depth"]] == [3]
    assert (tmp_path / "ladders_table.md").read_text().startswith("| testbed | family |")
    assert (tmp_path / "ladders_frontier.png").stat().st_size > 0
