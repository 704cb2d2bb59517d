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
    expected = sum((1 / P[l] - 1) * (values[l] - values[l - 1]) ** 2 for l in range(1, len(LEVELS)))
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


def test_needed_levels_leave_out_the_levels_that_cancel():
    assert mlem_jax.needed_levels(jnp.array([1.0, 1.0, 0.5, 0.25])) == (1, 2, 3)
    assert mlem_jax.needed_levels([1.0, 0.5, 0.5, 0.25]) == (0, 2, 3)
    assert mlem_jax.needed_levels([1.0, 1.0, 1.0]) == (2,)
    assert mlem_jax.needed_levels(P) == (0, 1, 2, 3)
    # A schedule: only where p_l == p_(l+1) in every row.
    assert mlem_jax.needed_levels([[1.0, 1.0, 0.5], [1.0, 0.5, 0.5]]) == (0, 1, 2)
    assert mlem_jax.needed_levels([1.0, 1.0, 0.5], "independent") == (0, 1, 2)
    traced = jax.jit(lambda p: jnp.array(mlem_jax.needed_levels(p)))(jnp.ones(3))
    assert traced.tolist() == [0, 1, 2]


@pytest.mark.parametrize("draws", ["random", "stratified"])
@pytest.mark.parametrize(
    "probabilities, skipped", [((1.0, 1.0, 0.5, 0.25), [0]), ((1.0, 0.5, 0.5, 0.2), [1])]
)
def test_skipping_levels_that_cancel_changes_only_the_rounding(probabilities, skipped, draws):
    # The same draws with every level evaluated (needed given in full): the estimates
    # agree to rounding, and the skipped levels were never evaluated.
    def run(needed):
        step = mlem_jax.build_step(LEVELS, jnp.array(probabilities), draws=draws, needed=needed)

        def body(state, _):
            state, info = step(jax.random.key(4), state, 0.0, 0.01, None, None)
            return state, info.drawn

        return jax.lax.scan(body, mlem_jax.init(Y, 4), None, length=64)

    (skipping, drawn), (full, drawn_full) = run(None), run(range(4))
    np.testing.assert_allclose(skipping.y, full.y, rtol=1e-6)
    np.testing.assert_array_equal(drawn, drawn_full)
    assert skipping.evaluations[np.array(skipped)].tolist() == [0]
    kept = [i for i in range(4) if i not in skipped]
    np.testing.assert_array_equal(
        skipping.evaluations[np.array(kept)], full.evaluations[np.array(kept)]
    )
    assert int(full.evaluations[skipped[0]]) > 0
    assert not np.array_equal(skipping.y, Y)


def test_needed_must_keep_the_levels_that_do_not_cancel():
    with pytest.raises(ValueError, match=r"`needed` must .* including \[0, 2, 3\].*\[2, 3\]"):
        mlem_jax.build_step(LEVELS, [1.0, 0.5, 0.5, 0.2], needed=[2, 3])
    with pytest.raises(ValueError, match=r"`needed`.*0\.\.3"):
        mlem_jax.build_step(LEVELS, [1.0, 0.5, 0.5, 0.2], needed=[0, 2, 3, 4])
    # Traced probabilities are checked when the step runs.
    step = jax.jit(
        lambda p: (
            mlem_jax.build_step(LEVELS, p, needed=[2, 3])(
                jax.random.key(0), mlem_jax.init(Y, 4), 0.0, 0.01, None, None
            )[0].y
        )
    )
    assert np.isfinite(step(jnp.array([1.0, 1.0, 1.0, 0.5]))).all()
    with pytest.raises(Exception, match=r"`needed` skips levels \[0, 1\]"):
        step(jnp.array([1.0, 0.5, 0.5, 0.5])).block_until_ready()
