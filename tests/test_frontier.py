"""Cost-error frontiers and the stored Brownian path used for strong errors."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax

from conftest import assert_close


def test_pareto_frontier_keeps_the_lower_envelope_by_increasing_cost():
    errors = [0.5, 0.4, 0.45, 0.1, 0.2, 0.1]
    costs = [1.0, 2.0, 3.0, 10.0, 5.0, 12.0]
    assert mlem_jax.pareto_frontier(errors, costs).tolist() == [0, 1, 4, 3]


def test_cost_to_reach_is_the_cheapest_point_at_or_below_the_target():
    errors, costs = [0.5, 0.2, 0.1], [1.0, 4.0, 9.0]
    assert mlem_jax.cost_to_reach(errors, costs, 0.2) == 4.0
    assert mlem_jax.cost_to_reach(errors, costs, 0.05) == float("inf")


def test_frontier_slope_recovers_a_power_law_inside_the_range_only():
    errors = np.geomspace(1e-3, 1e-1, 9)
    costs = errors**-3.0
    costs[-1] = 1e-9  # a cheap point at large error, outside the fitted range
    slope = mlem_jax.frontier_slope(errors, costs, error_range=(1e-3, 3e-2))
    assert np.isclose(slope, 3.0)
    with pytest.raises(ValueError, match="two frontier points"):
        mlem_jax.frontier_slope(errors, costs, error_range=(2e-3, 2.5e-3))


def test_frontier_rejects_mismatched_or_nonpositive_inputs():
    with pytest.raises(ValueError, match="equal length"):
        mlem_jax.pareto_frontier([0.1, 0.2], [1.0])
    with pytest.raises(ValueError, match="> 0"):
        mlem_jax.pareto_frontier([0.1, 0.0], [1.0, 2.0])


def test_sampled_path_gives_the_tree_increments_for_every_dividing_step_count():
    tree = diffrax.VirtualBrownianTree(0.0, 1.0, tol=2.0**-11, shape=(3,), key=jax.random.key(0))
    sampled = mlem_jax.sample_brownian_path(tree, 256)
    assert_close(sampled.evaluate(0.0), jnp.zeros(3))
    assert_close(sampled.evaluate(0.25, 0.75), tree.evaluate(0.25, 0.75))
    drift, noise = (lambda t, y, a: jnp.sin(y) - y), (lambda t, y, a: 0.7)
    for num_steps in (4, 32, 256):
        from_tree, from_samples = (
            mlem_jax.solve(
                [drift], jnp.ones(3), 0.0, 1.0, num_steps, diffusion=noise, brownian=path
            )
            for path in (tree, sampled)
        )
        assert_close(from_samples.ys, from_tree.ys)
    with pytest.raises(ValueError, match="Levy"):
        sampled.evaluate(0.0, 0.5, use_levy=True)
