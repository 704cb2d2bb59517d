"""The multilevel drift estimate: unbiasedness, variance, evaluation counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax


LEVELS = [
    lambda t, y, a: jnp.sin(y),
    lambda t, y, a: jnp.sin(y) + 0.5 * y,
    lambda t, y, a: jnp.sin(y) + 0.6 * y - 0.2,
    lambda t, y, a: jnp.sin(y) + 0.62 * y - 0.25,
]
P = jnp.array([1.0, 0.6, 0.3, 0.1])
Y = jnp.array([0.5, -1.0, 2.0])


def draws(coupling, num_draws, seed=0):
    keys = jax.random.split(jax.random.key(seed), num_draws)

    def estimate(key):
        drawn = mlem_jax.draw_levels(key, P, coupling)
        return mlem_jax.multilevel_drift(LEVELS, P, drawn, 0.0, Y, None, coupling)

    return jax.jit(jax.vmap(estimate))(keys)


@pytest.mark.parametrize("coupling", ["nested", "independent"])
def test_drift_estimate_is_unbiased(coupling):
    n = 200_000
    estimates, _ = draws(coupling, n)
    mean = estimates.mean(axis=0)
    standard_error = estimates.std(axis=0) / np.sqrt(n)
    top = LEVELS[-1](0.0, Y, None)
    # Each component within 4 standard errors (two-sided p ~ 6e-5 per component).
    assert jnp.all(jnp.abs(mean - top) < 4 * standard_error), (mean, top, standard_error)
    assert jnp.all(standard_error > 0)


def test_independent_coupling_variance_matches_formula():
    n = 200_000
    estimates, _ = draws("independent", n, seed=1)
    values = [f(0.0, Y, None) for f in LEVELS]
    expected = sum(
        (1 / P[l] - 1) * (values[l] - values[l - 1]) ** 2 for l in range(1, len(LEVELS))
    )
    # Relative standard error of a sample variance is about sqrt((kurtosis - 1) / n);
    # the estimate is a sum of scaled Bernoullis whose kurtosis is below 1 / p_min = 10.
    tolerance = 4 * np.sqrt(9 / n)
    assert jnp.all(jnp.abs(estimates.var(axis=0) / expected - 1) < tolerance)


@pytest.mark.parametrize("coupling", ["nested", "independent"])
def test_evaluation_counts_are_binomial(coupling):
    n = 20_000
    _, evaluated = draws(coupling, n, seed=2)
    counts = np.asarray(evaluated.sum(axis=0))
    p = np.asarray(P)
    if coupling == "independent":  # level l runs when correction l or l + 1 is drawn
        p = np.append(1 - (1 - p[:-1]) * (1 - p[1:]), p[-1])
    sd = np.sqrt(n * p * (1 - p))
    assert counts[0] == n
    assert np.all(np.abs(counts[1:] - n * p[1:]) < 4 * sd[1:]), (counts, n * p)


def test_solve_counts_match_binomial_over_a_long_trajectory():
    n = 5_000
    sol = mlem_jax.solve(LEVELS, Y, 0.0, 1.0, n, probabilities=P, key=jax.random.key(4))
    p = np.asarray(P)
    sd = np.sqrt(n * p * (1 - p))
    assert sol.evaluations[0] == n
    assert np.all(np.abs(np.asarray(sol.evaluations[1:]) - n * p[1:]) < 4 * sd[1:])


def test_nested_draws_are_nested():
    _, evaluated = draws("nested", 2_000, seed=3)
    e = np.asarray(evaluated)
    assert np.all(e[:, 1:] <= e[:, :-1])
