"""Calibration: v_l and eps_l on points, FLOPs and time per level, the fitted gamma."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax

from conftest import linear_levels


def test_level_statistics_are_exact_for_linear_levels():
    rates = [1.0, 1.5, 1.75]
    ys = jax.random.normal(jax.random.key(0), (50, 4))
    stats = mlem_jax.level_statistics(linear_levels(rates), jnp.zeros(50), ys, batch_size=8)
    mean_square = float(jnp.mean(jnp.sum(ys**2, axis=1)))
    assert np.allclose(stats.variances, [0.25 * mean_square, 0.0625 * mean_square], rtol=1e-5)
    assert np.allclose(
        stats.errors, np.sqrt([0.5625, 0.0625, 0.0]) * np.sqrt(mean_square), rtol=1e-5
    )


def test_level_statistics_against_a_reference_drift():
    ys = jnp.ones((3, 2))
    stats = mlem_jax.level_statistics(
        linear_levels([1.0, 2.0]), jnp.zeros(3), ys, reference=lambda t, y, a: -3.0 * y
    )
    assert np.allclose(stats.errors, [np.sqrt(8.0), np.sqrt(2.0)])


def test_level_statistics_rejects_mismatched_points():
    with pytest.raises(ValueError, match=r"`ts`.*\(P,\).*\(4,\)"):
        mlem_jax.level_statistics(linear_levels([1.0]), jnp.zeros(4), jnp.ones((5, 2)))


class Dense(eqx.Module):
    matrix: jax.Array

    def __call__(self, t, y, args):
        return self.matrix @ y


def test_level_costs_count_matmul_flops_and_grow_with_width():
    widths = [8, 32, 128]
    levels = [Dense(jnp.ones((w, w))) for w in widths]
    costs = [
        mlem_jax.level_costs([lv], 0.0, jnp.ones(w), repeats=3) for lv, w in zip(levels, widths)
    ]
    flops = np.array([c.flops[0] for c in costs])
    assert np.allclose(flops, [2 * w * w for w in widths], rtol=0.1)
    assert all(c.seconds[0] > 0 for c in costs)


def test_fit_gamma_recovers_a_power_law():
    errors = 2.0 ** -np.arange(1, 6)
    costs = 3.0 * errors**-2.5
    assert np.isclose(mlem_jax.fit_gamma(costs, errors), 2.5)
    # The top level measured against itself (eps = 0) is left out of the fit.
    assert np.isclose(mlem_jax.fit_gamma(np.append(costs, 1e9), np.append(errors, 0.0)), 2.5)
    with pytest.raises(ValueError, match="at least two levels"):
        mlem_jax.fit_gamma([1.0, 2.0], [0.5, 0.0])


def test_synthetic_family_has_growing_cost_and_shrinking_error():
    levels = mlem_jax.random_feature_levels(jax.random.key(0), 4, [4, 16, 64, 256], alpha=1.0)
    ys = jax.random.normal(jax.random.key(1), (64, 4))
    stats = mlem_jax.level_statistics(levels, jnp.zeros(64), ys)
    costs = mlem_jax.level_costs(levels, 0.0, ys[0], repeats=2)
    assert np.all(np.diff(stats.errors) < 0) and np.all(np.diff(costs.flops) > 0)
    assert 1.0 < mlem_jax.fit_gamma(costs.flops, stats.errors) < 4.0
    with pytest.raises(ValueError, match="increasing"):
        mlem_jax.random_feature_levels(jax.random.key(0), 4, [8, 4], alpha=1.0)
