"""EM, ML-EM and T-Stitch samplers (SDE and ODE), the Brownian grid, calibration."""

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for, schedule_for
from mlem_jax.diffusion.metrics import frechet_distance, strong_error
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import (
    T_MIN,
    initial_noise,
    method_cost,
    sample,
    score_levels,
    stitch_evaluations,
    stitch_switch,
)
from mlem_jax.diffusion.sde import VPSDE, reverse_drift

from diffusion_helpers import IMAGE_SHAPE, tiny_unets


STEPS = 4


def _run(method, kind, **kw):
    levels = score_levels(tiny_unets(), kind)
    x1 = initial_noise(jax.random.key(1), 3, IMAGE_SHAPE)
    path = grid_brownian_path(jax.random.key(2), x1.shape, 8, T_MIN)
    return sample(method, levels, x1, STEPS, key=jax.random.key(3), brownian=path, **kw)


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_each_sampler_runs(kind):
    em = _run("em", kind)
    cheap = _run("mlem", kind, probabilities=(1.0, 0.25))
    stitched = _run("tstitch", kind, switch=stitch_switch(0.5))
    for run in (em, cheap, stitched):
        chex.assert_shape(run.ys, (3, *IMAGE_SHAPE))
        chex.assert_tree_all_finite(run.ys)
    assert em.evaluations.tolist() == stitched.evaluations.tolist() == [STEPS]
    assert cheap.evaluations[0] == STEPS and cheap.evaluations[1] < STEPS
    # Stratified draws: the large level at exactly STEPS * 0.25 of the 8 steps.
    spread = _run("mlem", kind, probabilities=(1.0, 0.25), draws="stratified")
    assert spread.evaluations.tolist() == [STEPS, STEPS // 4]
    assert bool(jnp.isfinite(spread.ys).all()) and not np.allclose(spread.ys, em.ys)
    assert not np.allclose(stitched.ys, em.ys) and not np.allclose(cheap.ys, em.ys)
    # A schedule: both levels at the first step, the large one never after (p = 1e-7).
    scheduled = _run("mlem", kind, probabilities=[[1.0, 1.0]] + [[1.0, 1e-7]] * (STEPS - 1))
    assert scheduled.evaluations.tolist() == [STEPS, 1]


def test_samplers_agree_where_they_must(kind="sde"):
    em = _run("em", kind)
    # ML-EM with every correction always drawn is EM with the largest level, exactly:
    # the small level cancels from the estimate and is skipped.
    full = _run("mlem", kind, probabilities=(1.0, 1.0))
    np.testing.assert_array_equal(full.ys, em.ys)
    assert full.evaluations.tolist() == [0, STEPS]
    # T-Stitch switching after the last step is EM with the small level; before the
    # first, EM with the large one.
    small = sample(
        "em",
        score_levels(tiny_unets()[:1], kind),
        initial_noise(jax.random.key(1), 3, IMAGE_SHAPE),
        STEPS,
        brownian=grid_brownian_path(jax.random.key(2), (3, *IMAGE_SHAPE), 8, T_MIN),
    )
    np.testing.assert_allclose(_run("tstitch", kind, switch=0.0).ys, small.ys, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(_run("tstitch", kind, switch=1.0).ys, em.ys, rtol=1e-6, atol=1e-5)


def test_runner_skips_the_levels_that_cancel_and_accounts_them():
    levels = score_levels(tiny_unets())
    x1 = initial_noise(jax.random.key(1), 3, IMAGE_SHAPE)
    path, key, flops, cache = jax.random.key(2), jax.random.key(3), [1.0, 4.0], {}
    setting = Setting("mlem", STEPS, (1.0, 1.0))
    skipped = run_setting(setting, levels, x1, path, key, flops, cache)
    em = run_setting(Setting("em", STEPS), levels, x1, path, key, flops, cache)
    np.testing.assert_array_equal(skipped.samples, em.samples)
    assert skipped.evaluations.tolist() == [0, STEPS] and skipped.flops == em.flops == 16.0
    # The compiled sampler of p = (1, 1) is not reused for p = (1, 0.5), which needs both.
    both = run_setting(
        setting._replace(probabilities=(1.0, 0.5)), levels, x1, path, key, flops, cache
    )
    assert both.evaluations[0] == STEPS and both.flops == STEPS + 4.0 * both.evaluations[1]
    # Other weights of the same shapes reuse the compiled sampler but run themselves.
    scaled = jax.tree_util.tree_map(lambda x: 1.1 * x if eqx.is_inexact_array(x) else x, levels)
    cached = run_setting(setting, scaled, x1, path, key, flops, cache)
    assert len(cache) == 3
    fresh = run_setting(setting, scaled, x1, path, key, flops)
    np.testing.assert_array_equal(cached.samples, fresh.samples)
    assert not np.allclose(cached.samples, skipped.samples)


def test_runner_compiles_again_for_another_brownian_path_shape():
    """A grid path of another length (or time span) is another compiled sampler, not
    the cached one called with arguments it was not traced for."""
    levels = score_levels(tiny_unets())
    x1 = initial_noise(jax.random.key(1), 3, IMAGE_SHAPE)
    setting, cache = Setting("em", STEPS), {}
    # The last path spans [t_min, 2 - t_min]: its nodes still hold the grid's points.
    for fine, t1 in ((8, 1.0), (24, 1.0), (48, 2.0 - T_MIN)):
        path = grid_brownian_path(jax.random.key(2), x1.shape, fine, T_MIN, t1)
        cached = run_setting(setting, levels, x1, path, None, [1.0, 4.0], cache)
        fresh = run_setting(setting, levels, x1, path, None, [1.0, 4.0], {})
        np.testing.assert_array_equal(cached.samples, fresh.samples)
    assert len(cache) == 3


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match="`method`"):
        _run("heun", "sde")
    with pytest.raises(ValueError, match="`probabilities`"):
        _run("mlem", "sde")
    with pytest.raises(ValueError, match="`switch`"):
        _run("tstitch", "ode")
    with pytest.raises(ValueError, match="`kind`"):
        score_levels(tiny_unets(), "heun")


def test_reverse_drifts_of_a_standard_gaussian():
    # Data N(0, I) stays N(0, I) under the VP-SDE: score -x, so the probability-flow
    # drift vanishes and the reverse SDE drift is +beta x / 2.
    sde, y = VPSDE(), jnp.arange(4.0)
    assert jnp.allclose(reverse_drift(sde, "ode", 0.3, y, -y), 0.0)
    assert jnp.allclose(reverse_drift(sde, "sde", 0.3, y, -y), 0.5 * sde.beta(0.3) * y)


def test_grid_brownian_path_is_shared_across_step_counts():
    path = grid_brownian_path(jax.random.key(0), (5,), 8, T_MIN)
    coarse = path.evaluate(1.0, 1.0 + 0.5 * (T_MIN - 1.0))
    fine = sum(
        path.evaluate(1.0 + k * (T_MIN - 1) / 8, 1.0 + (k + 1) * (T_MIN - 1) / 8) for k in range(4)
    )
    np.testing.assert_allclose(coarse, fine, atol=1e-6)
    assert jnp.allclose(path.evaluate(T_MIN), 0.0)
    big = grid_brownian_path(jax.random.key(1), (20000,), 4, 0.0, 1.0)
    assert float(jnp.var(big.evaluate(0.0, 0.5))) == pytest.approx(0.5, rel=0.05)


def test_costs_of_the_methods():
    switch = stitch_switch(0.5)
    assert stitch_evaluations(10, switch).tolist() == [5, 5]
    flops = [1.0, 4.0, 16.0]
    assert method_cost("em", None, flops, 10) == 160.0
    assert method_cost("mlem", [10, 3, 1], flops, 10) == 10 + 12 + 16
    assert method_cost("tstitch", None, flops, 10, switch) == 5 * 4 + 5 * 16


def test_metrics():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    assert frechet_distance(a, b) < 0.02
    assert frechet_distance(a, b + 1.0) == pytest.approx(3.0, abs=0.1)
    x = jnp.zeros((2, 1, 2, 2))
    assert strong_error(x.at[0].set(1.0), x) == pytest.approx(np.sqrt(4 / 2))


def test_calibration_along_sampling_runs():
    levels = score_levels(tiny_unets(), "sde")
    result = calibrate(levels, jax.random.key(0), IMAGE_SHAPE, count=2, num_steps=4, repeats=1)
    for name in ("variances", "errors", "flops", "seconds"):
        assert np.isfinite(result[name]).all(), name
    assert result["points"] == 4 and result["errors"][-1] == 0.0 and result["errors"][0] > 0
    assert result["variances"][0] == pytest.approx(result["errors"][0] ** 2, rel=1e-4)
    assert result["flops"][0] < result["flops"][1] and result["gamma"] is None
    p = probabilities_for(result, 16, top_level_evaluations=2.0)
    assert p[0] == 1.0 and p[1] == pytest.approx(2 / 16)
    profile, sensitivity = result["profile"], result["sensitivity"]
    assert sum(profile["counts"]) == 4 and np.isfinite(profile["variances"]).all()
    assert len(sensitivity["gains"]) == 4 and sensitivity["gains"][-1] == pytest.approx(1.0)
    assert sensitivity["times"][-1] == pytest.approx(T_MIN)
    for weighted in (False, True):
        schedule = schedule_for(result, 16, 2.0, weighted=weighted, floor=0.0)
        assert schedule.shape == (16, 2) and (schedule[:, 0] == 1).all()
        assert schedule[:, 1].sum() == pytest.approx(2.0)


SYNTHETIC = {
    "flops": [1.0, 10.0, 100.0],
    "seconds": [1.0, 2.0, 4.0],
    "variances": [64.0, 4.0],
    "shared": False,
    "profile": {
        "edges": [1e-3, 0.5, 1.0],
        "variances": [[64.0, 16.0], [4.0, 1.0]],
        "counts": [1, 1],
    },
    "sensitivity": {"times": [1e-3, 0.5, 1.0], "gains": [1.0, 0.1, 0.01]},
}


def test_schedules_follow_the_draws_and_the_costs():
    # 8 steps from t = 1: the first 4 start in the bin [0.5, 1] (v = 4, 1), the rest in
    # [1e-3, 0.5) (v = 64, 16). Random draws: p ∝ sqrt(v / c); stratified: (v / c)^(1/3).
    random = schedule_for(SYNTHETIC, 8, 1.0)
    stratified = schedule_for(SYNTHETIC, 8, 1.0, draws="stratified")
    assert random[-1, 2] / random[0, 2] == pytest.approx(4.0)
    assert stratified[-1, 2] / stratified[0, 2] == pytest.approx(16 ** (1 / 3))
    assert random[:, 2].sum() == pytest.approx(1.0) == stratified[:, 2].sum()
    # Costs: p_2 / p_3 = sqrt((v_2 / c_2) / (v_3 / c_3)) with c the costs asked for
    # (nested coupling, so the correction costs are c_2 and c_3).
    for costs, c in (("flops", (10.0, 100.0)), ("seconds", (2.0, 4.0))):
        p = probabilities_for(SYNTHETIC, 64, 1.0, costs=costs)
        assert p[1] / p[2] == pytest.approx(np.sqrt((64 / c[0]) / (4 / c[1])))
    p = schedule_for(SYNTHETIC, 8, 1.0, costs="seconds")
    assert p[-1, 1] / p[-1, 2] == pytest.approx(np.sqrt((64 / 2) / (16 / 4)))


def test_a_weighted_schedule_keeps_the_floor_of_the_unweighted_one():
    unweighted = schedule_for(SYNTHETIC, 8, 1.0)
    bare = schedule_for(SYNTHETIC, 8, 1.0, weighted=True, floor=0.0)
    assert bare[:, 2].sum() == pytest.approx(1.0)
    assert bare[0, 2] < 0.5 * unweighted[0, 2]  # the small gains near t = 1 lower p there
    for floor in (0.5, 1.0):
        floored = schedule_for(SYNTHETIC, 8, 1.0, weighted=True, floor=floor)
        np.testing.assert_allclose(floored, np.maximum(bare, floor * unweighted))
        assert floored[:, 2].sum() > 1.0  # the floor's cost: more top-level evaluations
    np.testing.assert_allclose(schedule_for(SYNTHETIC, 8, 1.0, weighted=True), floored)


def test_bad_costs_and_floors_are_refused_naming_the_argument():
    with pytest.raises(
        ValueError, match=r"`costs` must be one of \('flops', 'seconds'\), got 'watts'"
    ):
        probabilities_for(SYNTHETIC, 8, 1.0, costs="watts")
    without_seconds = {k: v for k, v in SYNTHETIC.items() if k != "seconds"}
    with pytest.raises(
        ValueError, match=r"`costs='seconds'` needs a calibration with measured seconds"
    ):
        schedule_for(without_seconds, 8, 1.0, costs="seconds")
    with pytest.raises(ValueError, match=r"`floor` must be in \[0, 1\], got 1.5"):
        schedule_for(SYNTHETIC, 8, 1.0, weighted=True, floor=1.5)
