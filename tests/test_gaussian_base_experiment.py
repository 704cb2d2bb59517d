"""experiments/gaussian_base.py: the equal-error speedups and their intervals, and a quick run."""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from mlem_jax.diffusion.mixture import ExactDrift
from mlem_jax.diffusion.testbed import load_named_testbed

from experiment_helpers import load_experiment, run_experiment


RESULTS = Path(__file__).parent.parent / "experiments" / "results"


def test_equal_error_speedup_inverts_an_exact_em_fit():
    experiment = load_experiment("gaussian_base")
    a, q, images = 200.0, 1.0, 8
    rng = np.random.default_rng(0)
    shape = rng.uniform(0.5, 1.5, images)  # per-image factors, mean square 1 after scaling
    shape /= np.sqrt(np.mean(shape**2))
    em = {n: ((a / n) * shape)[None, :] ** 2 for n in (16, 32, 64, 128)}
    assert experiment.em_fit(sorted(em), [experiment.rms(em[n]) for n in sorted(em)]) == (
        pytest.approx(a),
        pytest.approx(q),
    )
    # ML-EM errs as EM with 80 steps, on the same images, in every draw sequence: EM
    # needs exactly 80 steps, and no resampling of images or draws changes that.
    mlem = np.repeat(((a / 80) * shape)[None, :] ** 2, 3, axis=0)
    top = 100.0
    out = experiment.heldout_speedups(em, mlem, 2000.0, top, {"bootstrap": 50}, rng)
    assert out["em_steps_at_error"] == pytest.approx(80.0)
    assert out["speedup_flops"] == pytest.approx(80 * top / 2000.0)
    assert out["speedup_flops_ci"] == pytest.approx([4.0, 4.0])
    # Noisy draws widen the interval around the point value.
    noisy = mlem * rng.uniform(0.5, 1.5, mlem.shape)
    out = experiment.heldout_speedups(em, noisy, 2000.0, top, {"bootstrap": 200}, rng)
    lo, hi = out["speedup_flops_ci"]
    assert lo < out["speedup_flops"] < hi


def test_tails_are_over_images_and_draws():
    experiment = load_experiment("gaussian_base")
    squared = np.array([[1.0, 4.0, 9.0], [16.0, 25.0, 100.0]])
    tails = experiment.tails(squared)
    assert tails["median"] == pytest.approx(3.5) and tails["max"] == pytest.approx(10.0)


@pytest.mark.slow
def test_quick_run(tmp_path):
    run_experiment("gaussian_base", tmp_path, "--quick", timeout=900)
    result = json.loads((tmp_path / "gaussian_base.json").read_text())
    assert result["heldout"] and result["reference_steps"] >= 4 * result["max_config_steps"]
    assert set(result["level_gflops"]) == {"levels", "gaussian_top", "gaussian_family"}
    assert set(result["headline"]) == set(result["level_gflops"])


def test_testbed_ladders_put_the_mixtures_gaussian_under_the_shipped_exits():
    experiment = load_experiment("gaussian_base")
    every = experiment.testbed_ladders("sde", exact_top=False)
    base, top = every["gaussian_top"]
    mean, covariance = load_named_testbed("pca16")[0].moments()
    np.testing.assert_allclose(base.statistics.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(base.statistics.covariance(), covariance, rtol=1e-4, atol=1e-5)
    family = every["levels"]
    assert every["gaussian_family"].num_levels == family.num_levels + 1
    x = jax.random.normal(jax.random.key(0), (4, base.statistics.size))
    np.testing.assert_allclose(top(0.5, x, None), family[-1](0.5, x, None), rtol=1e-6)
    exact = experiment.testbed_ladders("ode", exact_top=True, rank=4)
    assert list(exact) == ["gaussian_top"] and exact["gaussian_top"][0].statistics.rank == 4
    assert isinstance(exact["gaussian_top"][1], ExactDrift)


def test_exact_top_needs_the_testbed(capsys):
    with pytest.raises(SystemExit):
        load_experiment("gaussian_base").main(["--exact-top"])
    assert "--exact-top needs --testbed" in capsys.readouterr().err


@pytest.mark.slow
def test_quick_testbed_run(tmp_path):
    run_experiment(
        "gaussian_base", tmp_path, "--quick", "--testbed", "--ladders", "gaussian_top", timeout=900
    )
    result = json.loads((tmp_path / "gaussian_base.json").read_text())
    assert result["checkpoints"] == "pca16" and result["rank"] == 16
    assert set(result["level_gflops"]) == {"gaussian_top"}


@pytest.mark.parametrize(
    "result", sorted(RESULTS.glob("gaussian_base*.json")), ids=lambda f: f.stem
)
def test_committed_headline_is_the_best_family_of_each_ladder(result):
    experiment = load_experiment("gaussian_base")
    stored = json.loads(result.read_text())
    points = stored["operating_points"]
    assert stored["headline"] == experiment.headline(points, stored["target_error"])
    for ladder, line in stored["headline"].items():
        reached = [p for p in points.values() if p["ladder"] == ladder and p["reached"]]
        assert line["reached"] == bool(reached)
        if reached:
            assert line["speedup_flops"] == max(p["speedup_flops"] for p in reached)
            assert line["target_error"] == stored["target_error"]


def test_ladders_the_set_up_does_not_build_are_refused(capsys):
    with pytest.raises(SystemExit):
        load_experiment("gaussian_base").main(["--testbed", "--exact-top", "--ladders", "levels"])
    assert "this set-up builds only ['gaussian_top']" in capsys.readouterr().err
