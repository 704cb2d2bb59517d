"""Stratified level draws: uniform at every step, evenly spread, and a randomisation
error of order 1 in the step size instead of 1/2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax._levels import van_der_corput


P = jnp.array([1.0, 0.6, 0.3, 0.1])


def test_van_der_corput_visits_every_dyadic_point_once():
    for k in range(1, 11):
        points = jax.vmap(van_der_corput)(jnp.arange(2**k))
        assert np.array_equal(np.sort(np.asarray(points)), np.arange(2**k) / 2**k), k


@pytest.mark.parametrize("coupling", ["nested", "independent"])
@pytest.mark.parametrize("step", [0, 1, 6, 1000])
def test_stratified_draws_have_probability_p_at_every_step(coupling, step):
    n = 20_000
    keys = jax.random.split(jax.random.key(step), n)
    drawn = jax.vmap(
        lambda key: mlem_jax.draw_levels(key, P, coupling, step=step, draws="stratified")
    )(keys)
    counts = np.asarray(drawn.sum(axis=0))
    p = np.asarray(P)
    sd = np.sqrt(n * p * (1 - p))
    assert counts[0] == n
    assert np.all(np.abs(counts[1:] - n * p[1:]) < 4 * sd[1:]), (counts, n * p)


@pytest.mark.parametrize("coupling", ["nested", "independent"])
def test_stratified_draws_spread_each_level_evenly(coupling):
    """Among 2^k consecutive steps from a multiple of 2^k, level l is drawn
    floor(2^k p_l) or ceil(2^k p_l) times, whatever the key."""
    steps = jnp.arange(64)
    for seed in range(8):
        key = jax.random.key(seed)
        drawn = np.asarray(
            jax.vmap(lambda n: mlem_jax.draw_levels(key, P, coupling, step=n, draws="stratified"))(
                steps
            )
        )
        if coupling == "nested":
            assert np.all(drawn[:, 1:] <= drawn[:, :-1])
        for k in range(1, 7):
            counts = drawn.reshape(-1, 2**k, len(P)).sum(axis=1)
            expected = 2**k * np.asarray(P)
            assert np.all(counts >= np.floor(expected - 1e-6)), (seed, k, counts)
            assert np.all(counts <= np.ceil(expected + 1e-6)), (seed, k, counts)


def drift(t, y, args):
    return jnp.sin(y) - 0.5 * y + t


LEVELS = [lambda t, y, a: 0.8 * drift(t, y, a), lambda t, y, a: 0.95 * drift(t, y, a), drift]


def randomisation_order(draws: str) -> float:
    """Slope of log RMS ||X_N^ML-EM - X_N^EM|| (EM on the top level) against log N, the
    RMS over 128 draw sequences, on an ODE."""
    y0 = jnp.array([0.3, -1.0, 2.0])
    keys = jax.random.split(jax.random.key(0), 128)
    steps = (64, 256, 1024)
    errors = []
    for n in steps:
        em = mlem_jax.solve(LEVELS[-1:], y0, 0.0, 1.0, n).ys
        ys = jax.vmap(
            lambda key: (
                mlem_jax.solve(
                    LEVELS,
                    y0,
                    0.0,
                    1.0,
                    n,
                    probabilities=[1.0, 0.5, 0.25],
                    key=key,
                    draws=draws,
                ).ys
            )
        )(keys)
        errors.append(float(jnp.sqrt(jnp.mean(jnp.sum((ys - em) ** 2, axis=-1)))))
    return float(np.polyfit(np.log(steps), np.log(errors), 1)[0])


@pytest.mark.parametrize("draws, order", [("random", 0.5), ("stratified", 1.0)])
def test_randomisation_error_order(draws, order):
    """Random draws: a sum of N independent martingale increments of size h, order 1/2.
    Stratified: neighbouring steps' errors cancel like a quadrature rule's, order 1.
    Each RMS is over 128 sequences (relative standard error ~6%), so the slope over a
    16x range of N has a standard error of ~0.03; the tolerance is 0.15."""
    assert abs(randomisation_order(draws) + order) < 0.15
