"""Predicting ML-EM's speedup from a calibration: the EM error model, the randomisation
variance, and the cost search."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax


def synthetic_em(floors=(3.0, 1.5, 0.6), scale=20.0, order=0.8):
    levels, steps, errors = [], [], []
    for level, floor in enumerate(floors):
        for n in (8, 16, 32, 64, 128, 256, 512):
            levels.append(level)
            steps.append(n)
            errors.append(np.sqrt(floor**2 + (scale * n**-order) ** 2))
    return levels, steps, errors


def test_em_error_model_is_recovered_from_exact_errors():
    model = mlem_jax.fit_em_error_model(*synthetic_em(), orders=np.linspace(0.5, 1.2, 71))
    np.testing.assert_allclose(model.floors, [3.0, 1.5, 0.6], rtol=1e-3)
    assert model.scale == pytest.approx(20.0, rel=1e-3)
    assert model.order == pytest.approx(0.8, abs=1e-9)
    assert model.steps_to_reach(2, 0.59) == np.inf
    n = model.steps_to_reach(2, 1.0)
    assert model.error(2, n) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="must be 1-d of equal length"):
        mlem_jax.fit_em_error_model([0, 1], [8], [1.0])


def test_randomisation_variance_of_random_draws_is_that_of_the_final_state():
    # dX = F dt with levels f^1 = 0 and f^2 = 1: X_1 = h sum_n B_n / p exactly, whose
    # variance is (1/p - 1) / N, the formula with v_2 = 1 and kappa = 1.
    p, n, paths = 0.3, 64, 4000
    levels = [lambda t, y, a: jnp.zeros_like(y), lambda t, y, a: jnp.ones_like(y)]
    final = jax.vmap(
        lambda k: (
            mlem_jax.solve(levels, jnp.zeros(()), 0.0, 1.0, n, probabilities=[1.0, p], key=k).ys
        )
    )(jax.random.split(jax.random.key(0), paths))
    expected = mlem_jax.randomisation_variance([1.0], [1.0, p], n)
    assert expected == pytest.approx((1 / p - 1) / n)
    # The sample variance's relative standard error is about sqrt(2 / paths).
    assert float(np.var(final)) == pytest.approx(expected, rel=5 * np.sqrt(2 / paths))


def test_predicted_runs_reach_the_target_and_cost_what_they_say():
    em = mlem_jax.fit_em_error_model(*synthetic_em())
    costs, variances = np.array([1.0, 4.0, 16.0]), np.array([2.0, 0.5])
    target = 0.66
    prediction = mlem_jax.predict_speedup(costs, variances, em, target, kappa=1.0)
    # EM: the cheapest level and N that reach the target under the model.
    assert prediction.em_level == 2
    assert em.error(2, prediction.em_steps) <= target < em.error(2, prediction.em_steps - 1)
    assert prediction.em_cost == prediction.em_steps * 16.0
    # ML-EM: its chosen run reaches the target and costs N sum_l p_l c_l.
    p, n = prediction.probabilities, prediction.mlem_steps
    error = np.sqrt(em.error(2, n) ** 2 + mlem_jax.randomisation_variance(variances, p, n))
    assert error <= target
    assert prediction.mlem_cost == pytest.approx(n * float(p @ costs))
    assert prediction.speedup == pytest.approx(prediction.em_cost / prediction.mlem_cost)
    assert prediction.speedup > 1
    # Larger corrections can only cost more; shared computation can only cost less.
    noisier = mlem_jax.predict_speedup(costs, 10 * variances, em, target, kappa=1.0)
    shared = mlem_jax.predict_speedup(
        np.cumsum(costs), variances, em, target, kappa=1.0, shared=True
    )
    assert noisier.speedup < prediction.speedup
    assert (
        shared.mlem_cost
        <= mlem_jax.predict_speedup(np.cumsum(costs), variances, em, target, kappa=1.0).mlem_cost
    )


def test_unreachable_targets():
    em = mlem_jax.fit_em_error_model(*synthetic_em())
    below_floor = mlem_jax.predict_speedup([1.0, 4.0, 16.0], [2.0, 0.5], em, 0.5)
    assert below_floor.speedup == 0.0 and below_floor.em_cost == np.inf
    with pytest.raises(ValueError, match=r"must agree, got \(3,\), \(1,\) and \(3,\)"):
        mlem_jax.predict_speedup([1.0, 4.0, 16.0], [2.0], em, 1.0)
