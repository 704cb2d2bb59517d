"""Grouped level draws: G groups of a batch draw independently, so the randomisation
error of a batch mean falls as 1/sqrt(G), and each group still skips levels."""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax


P, STEPS = 0.5, 64
# f^1 = 0, f^2 = 1: the ODE's X_1 = X_0 + h sum_n B_n / p is all randomisation error,
# with variance h^2 N (1 - p) / p = (1 - p) / (p N) per draw sequence.
LEVELS = [lambda t, y, a: jnp.zeros_like(y), lambda t, y, a: jnp.ones_like(y)]
VARIANCE = (1 - P) / (P * STEPS)


def batch_means(groups, keys, batch=32):
    y0 = jnp.zeros((batch, 2))
    return jax.jit(
        jax.vmap(
            lambda key: mlem_jax.solve(
                LEVELS,
                y0,
                0.0,
                1.0,
                STEPS,
                probabilities=[1.0, P],
                key=key,
                groups=groups,
            ).ys.mean()
        )
    )(keys)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_spread_of_batch_means_falls_as_one_over_sqrt_groups(groups):
    """Over M keys, Var(batch mean) = VARIANCE / G: a batch of one initial state whose
    paths share their draws is one sample of the randomisation error, whatever its size.
    The sample variance of M near-normal means has relative standard error sqrt(2 / M);
    the tolerance is 4 of them, and the mean is within 4 standard errors of 1."""
    m = 400
    means = np.asarray(batch_means(groups, jax.random.split(jax.random.key(groups), m)))
    assert abs(means.var(ddof=1) / (VARIANCE / groups) - 1) < 4 * np.sqrt(2 / m)
    assert abs(means.mean() - 1.0) < 4 * np.sqrt(VARIANCE / groups / m)


def test_groups_take_their_own_draws_and_still_skip():
    calls = []

    def top(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -1.5 * y

    y0 = jnp.ones((8, 3))
    levels = [lambda t, y, a: -y, top]

    def run(**groups):
        return mlem_jax.solve(
            levels, y0, 0.0, 1.0, 200, probabilities=[1.0, 0.05], key=jax.random.key(3), **groups
        )

    shared, grouped = run(groups=1), run(groups=4)
    jax.effects_barrier()
    # One group's evaluation is one call on its 2 paths: calls = G x the mean count.
    assert len(calls) == shared.evaluations[1] + 4 * grouped.evaluations[1]
    assert 0 < grouped.evaluations[1] < 40 and grouped.evaluations[0] == 200
    # Shared draws: every path alike; four groups: four different paths.
    assert len(np.unique(np.asarray(shared.ys), axis=0)) == 1
    assert len(np.unique(np.asarray(grouped.ys), axis=0)) == 4
    # One group is the default: the shared draws.
    np.testing.assert_array_equal(shared.ys, run().ys)


def test_bad_groups_are_refused():
    kw: dict[str, Any] = dict(probabilities=[1.0, P], key=jax.random.key(0))
    with pytest.raises(ValueError, match=r"`groups` must be a positive Python int, got 0"):
        mlem_jax.solve(LEVELS, jnp.zeros((4, 2)), 0.0, 1.0, 4, groups=0, **kw)
    with pytest.raises(ValueError, match=r"`groups=3` splits the leading .* float32\[4, 2\]"):
        mlem_jax.solve(LEVELS, jnp.zeros((4, 2)), 0.0, 1.0, 4, groups=3, **kw)
