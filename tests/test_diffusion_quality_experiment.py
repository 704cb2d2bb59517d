"""experiments/diffusion_quality.py: the equal-quality speedups, and a quick run."""

import json

import pytest

from experiment_helpers import load_experiment, run_experiment


def _point(family, label, fd, flops, seconds):
    return {
        "family": family,
        "label": label,
        "fd": fd,
        "fd_standard_error": 1.0,
        "flops": flops,
        "seconds": seconds,
    }


def test_equal_quality_takes_the_cheapest_point_no_worse_than_em():
    points = [
        _point("em", "EM N=16", 30.0, 16.0, 1.6),
        _point("em", "EM N=64", 10.0, 64.0, 6.4),
        _point("mlem", "a", 29.0, 8.0, 4.0),
        _point("mlem", "b", 25.0, 4.0, 3.2),
        _point("mlem", "c", 11.0, 32.0, 8.0),
        _point("tstitch", "d", 20.0, 12.0, 0.8),
    ]
    rows = load_experiment("diffusion_quality").equal_quality(points)
    assert [row["em"] for row in rows] == ["EM N=16", "EM N=64"]
    coarse, fine = rows
    assert coarse["mlem"]["label"] == "b"  # cheaper than "a", and its FD is lower too
    assert coarse["mlem"]["speedup_flops"] == pytest.approx(4.0)
    assert coarse["mlem"]["speedup_wallclock"] == pytest.approx(0.5)
    assert coarse["tstitch"]["speedup_flops"] == pytest.approx(16 / 12)
    assert fine["mlem"] is None and fine["tstitch"] is None  # 11 > 10: not reached
    assert "mlem_s3" not in coarse  # no point of that family was run


def test_operating_settings_rebuild_the_configurations_that_reach_the_target():
    def point(family, label, steps, reaches, probabilities=None, switch=None):
        return {
            "family": family,
            "label": label,
            "steps": steps,
            "probabilities": probabilities,
            "switch": switch,
            "reaches_target": reaches,
        }

    result = {
        "operating_points": {
            "em": point("em", "EM N=64", 64, True),
            "mlem": point("mlem", "ML-EM N=64 m=8", 64, False, [1.0, 0.5]),
            "mlem_t": point("mlem_t", "ML-EM p(t) N=64 m=8", 64, True),
            "mlem_s3": point("mlem_s3", "ML-EM stratified p3 N=96 m=8", 96, True, [1.0, 0.25]),
            "tstitch": point("tstitch", "T-Stitch N=128", 128, True, switch=0.5),
        }
    }
    got = load_experiment("diffusion_quality").operating_settings(result, groups=4)
    assert sorted(got) == ["em", "mlem_s3", "tstitch"]
    (em,), (stratified,), (stitch,) = got["em"], got["mlem_s3"], got["tstitch"]
    assert (em.method, em.num_steps, em.label) == ("em", 64, "EM N=64")
    assert (stratified.method, stratified.num_steps) == ("mlem", 96)
    assert stratified.probabilities == (1.0, 0.25)
    assert (stratified.draws, stratified.groups) == ("stratified", 4)
    assert (stitch.method, stitch.num_steps, stitch.switch) == ("tstitch", 128, 0.5)


@pytest.mark.slow
def test_quick_run_writes_results_and_table(tmp_path):
    run_experiment("diffusion_quality", tmp_path, "--quick")
    result = json.loads((tmp_path / "diffusion_quality.json").read_text())
    assert {p["family"] for p in result["points"]} == {"em", "mlem", "mlem_s3", "tstitch"}
    assert result["checkpoints"] == "cascade"
    for p in result["points"]:
        assert len(p["fd_repeats"]) == result["config"]["repeats"]
        assert p["fd"] > 0 and p["flops"] > 0
    assert len(result["equal_quality"]) == len(result["config"]["em_steps"])
    assert (tmp_path / "diffusion_quality_table.md").stat().st_size > 0
