"""`optimal_probabilities`: the Lagrange solution, its knobs, clipping, monotonicity."""

from typing import Any

import numpy as np
import pytest

import mlem_jax


COSTS = np.array([1.0, 4.0, 16.0, 64.0])
VARIANCES = np.array([0.4, 0.1, 0.025])  # v_2..v_4


def test_proportional_to_sqrt_v_over_c_with_top_level_knob():
    p = mlem_jax.optimal_probabilities(COSTS, VARIANCES, top_level_evaluations=3, num_steps=300)
    assert p[0] == 1.0 and np.isclose(p[-1], 3 / 300)
    shape = np.sqrt(VARIANCES / COSTS[1:])
    assert np.allclose(p[1:] / shape, p[-1] / shape[-1])


def test_clipped_to_one_and_nested_monotone():
    # v_3 is large relative to its cost: unclipped p_3 > p_2 -> nested raises p_2.
    p = mlem_jax.optimal_probabilities(
        COSTS, [0.01, 1.0, 0.001], top_level_evaluations=5, num_steps=100
    )
    assert np.all(p <= 1.0) and np.all(np.diff(p) <= 0)
    # Unclipped p = (0.63, 3.2, 0.05): p_3 is clipped to 1 and p_2 raised to it.
    assert p[1] == p[2] == 1.0 and np.isclose(p[3], 0.05)
    independent = mlem_jax.optimal_probabilities(
        COSTS,
        [0.01, 1.0, 0.001],
        top_level_evaluations=5,
        num_steps=100,
        coupling="independent",
    )
    assert np.isclose(independent[1], 0.05 * np.sqrt(0.01 / 5) / np.sqrt(0.001 / 80))


def test_independent_coupling_charges_both_levels_of_a_correction():
    assert np.allclose(mlem_jax.correction_costs(COSTS, "nested"), [4, 16, 64])
    assert np.allclose(mlem_jax.correction_costs(COSTS, "independent"), [5, 20, 80])


def test_variance_budget_is_met_at_minimal_cost():
    budget = 2.0
    p = mlem_jax.optimal_probabilities(COSTS, VARIANCES, variance_budget=budget)
    assert np.isclose((VARIANCES / p[1:]).sum(), budget, rtol=1e-6)
    # Any other feasible choice on the budget costs more.
    rng = np.random.default_rng(0)
    best = (p[1:] * COSTS[1:]).sum()
    for _ in range(200):
        q = p[1:] * np.exp(rng.normal(scale=0.3, size=3))
        q = np.minimum(q, 1.0)
        q *= (VARIANCES / q).sum() / budget  # rescale onto the budget
        if np.all(q <= 1.0):
            assert (q * COSTS[1:]).sum() >= best * (1 - 1e-9)


def test_stratified_draws_balance_the_cube_root_and_meet_their_budget():
    p = mlem_jax.optimal_probabilities(
        COSTS, VARIANCES, top_level_evaluations=3, num_steps=300, draws="stratified"
    )
    assert np.isclose(p[-1], 3 / 300)
    shape = (VARIANCES / COSTS[1:]) ** (1 / 3)
    assert np.allclose(p[1:] / shape, p[-1] / shape[-1])
    budget = 20.0
    p = mlem_jax.optimal_probabilities(COSTS, VARIANCES, variance_budget=budget, draws="stratified")
    assert np.isclose((VARIANCES / p[1:] ** 2).sum(), budget, rtol=1e-6)
    rng = np.random.default_rng(1)
    best = (p[1:] * COSTS[1:]).sum()
    for _ in range(200):
        q = p[1:] * np.exp(rng.normal(scale=0.3, size=3))
        q *= np.sqrt((VARIANCES / q**2).sum() / budget)  # rescale onto the budget
        if np.all(q <= 1.0):
            assert (q * COSTS[1:]).sum() >= best * (1 - 1e-9)


def test_unreachable_budget_gives_all_ones():
    p = mlem_jax.optimal_probabilities(COSTS, VARIANCES, variance_budget=0.1)
    assert np.all(p == 1.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variances=[0.1, 0.2]), r"`variances`.*\(3,\).*\(2,\)"),
        (dict(costs=[1.0, -4.0, 16.0, 64.0]), r"`costs`.*>= 0"),
        (dict(top_level_evaluations=None), r"exactly one of"),
        (dict(variance_budget=1.0), r"exactly one of"),
        (dict(num_steps=None), r"`num_steps`.*positive int"),
        (dict(top_level_evaluations=0), r"`top_level_evaluations`.*> 0"),
        (dict(coupling="other"), r"`coupling`"),
        (dict(draws="sobol"), r"`draws`.*sobol"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments: dict[str, Any] = dict(
        costs=COSTS, variances=VARIANCES, top_level_evaluations=2, num_steps=100
    )
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=match):
        mlem_jax.optimal_probabilities(**arguments)


def test_result_is_accepted_by_solve():
    import jax
    import jax.numpy as jnp

    p = mlem_jax.optimal_probabilities(COSTS, VARIANCES, top_level_evaluations=2, num_steps=50)
    levels = [lambda t, y, a, r=r: -r * y for r in (1.0, 1.1, 1.2, 1.3)]
    sol = mlem_jax.solve(levels, jnp.ones(2), 0.0, 1.0, 50, probabilities=p, key=jax.random.key(0))
    assert sol.evaluations[0] == 50


@pytest.mark.parametrize("draws", ["random", "stratified"])
def test_top_level_at_every_step_gives_probabilities_exactly_one(draws):
    # m == N draws the top level at every step: p is exactly 1 (not 1 - 1e-16), so every
    # level below the top cancels and ML-EM is EM on the top level.
    # The diffusion levels' calibration, whose random-draw p_K came out as 1 - 1.1e-16.
    costs = [1482614.25, 5160349.0, 19152752.0, 73456112.0]
    variances = [2873.159698486328, 727.4701743125916, 264.1950731277466]
    for n in (64, 96, 128):
        p = mlem_jax.optimal_probabilities(
            costs, variances, top_level_evaluations=n, num_steps=n, draws=draws
        )
        assert p.tolist() == [1.0] * 4
        assert mlem_jax.needed_levels(p) == (3,)
