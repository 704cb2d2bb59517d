"""`solve`: exact reductions to EM, reverse time, pytrees, grad, determinism, vmap."""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax

from conftest import assert_close, brownian_tree, linear_levels


def sine_drift(t, y, args):
    return jnp.sin(y) - 0.5 * y + t


def scaled_diffusion(t, y, args):
    return 0.3 + 0.1 * jnp.cos(y)


def hand_written_em(f, g, y0, t0, t1, num_steps, path):
    """Euler-Maruyama with a Python loop, increments read off `path`."""
    n = jnp.arange(num_steps + 1)
    ts = jnp.where(n == num_steps, t1, t0 + n * ((t1 - t0) / num_steps))
    increments = jax.jit(jax.vmap(path.evaluate))(ts[:-1], ts[1:])
    y = y0
    for t, t_next, dw in zip(ts[:-1], ts[1:], increments):
        y = y + (t_next - t) * f(t, y, None) + g(t, y, None) * dw
    return y


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_one_level_equals_hand_written_em(t0, t1):
    y0 = jnp.array([0.3, -1.0, 2.0])
    path = brownian_tree(jax.random.key(0), t0, t1, (3,))
    got = mlem_jax.solve([sine_drift], y0, t0, t1, 32, diffusion=scaled_diffusion, brownian=path)
    expected = hand_written_em(sine_drift, scaled_diffusion, y0, t0, t1, 32, path)
    assert_close(got.ys, expected)
    assert got.evaluations.tolist() == [32]


@pytest.mark.parametrize(
    "coupling, draws",
    [
        ("nested", "random"),
        ("independent", "random"),
        ("nested", "stratified"),
        ("independent", "stratified"),
    ],
)
def test_all_probabilities_one_equals_em_on_top_level(coupling, draws):
    levels = [sine_drift, lambda t, y, a: 1.1 * sine_drift(t, y, a), lambda t, y, a: -y]
    y0 = jnp.linspace(-1.0, 1.0, 5)
    path = brownian_tree(jax.random.key(1), 0.0, 1.0, (5,))
    common: dict[str, Any] = dict(diffusion=scaled_diffusion, brownian=path)
    mlem = mlem_jax.solve(
        levels,
        y0,
        0.0,
        1.0,
        50,
        probabilities=[1.0, 1.0, 1.0],
        key=jax.random.key(2),
        coupling=coupling,
        draws=draws,
        **common,
    )
    em = mlem_jax.solve(levels[-1:], y0, 0.0, 1.0, 50, **common)
    if coupling == "nested":
        # Levels 1 and 2 cancel from the estimate and are skipped: exactly EM.
        np.testing.assert_array_equal(mlem.ys, em.ys)
        assert mlem.evaluations.tolist() == [0, 0, 50]
    else:
        assert_close(mlem.ys, em.ys)
        assert mlem.evaluations.tolist() == [50, 50, 50]


def test_key_increments_are_standard_normal_with_variance_dt():
    # Drift 0, diffusion 1: X_T - X_0 is the sum of the increments, N(0, T) per entry.
    y0 = jnp.zeros(20_000)
    sol = mlem_jax.solve(
        [lambda t, y, a: jnp.zeros_like(y)],
        y0,
        0.0,
        2.0,
        8,
        diffusion=lambda t, y, a: jnp.ones_like(y),
        brownian=jax.random.key(5),
    )
    # Sample variance of n = 20000 normals has relative standard error sqrt(2 / n) = 1%.
    assert abs(float(jnp.var(sol.ys)) / 2.0 - 1.0) < 5 * np.sqrt(2 / y0.size)
    assert abs(float(jnp.mean(sol.ys))) < 5 * np.sqrt(2.0 / y0.size)


def test_reverse_time_ode_converges_to_exact_solution():
    # dy/dt = y from t=1 back to t=0: y(0) = y(1) / e; EM is first order.
    errors = []
    for num_steps in (10, 20, 40, 80):
        sol = mlem_jax.solve([lambda t, y, a: y], jnp.array(1.0), 1.0, 0.0, num_steps)
        errors.append(abs(float(sol.ys) - np.exp(-1.0)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(np.abs(ratios - 2.0) < 0.15), ratios


def test_pytree_state_matches_separate_solves():
    levels = [
        lambda t, y, a: {"u": -y["u"], "v": -2.0 * y["v"]},
        lambda t, y, a: {"u": -1.1 * y["u"], "v": -2.1 * y["v"]},
    ]
    y0 = {"u": jnp.ones(3), "v": jnp.arange(2.0)}
    key = jax.random.key(7)
    sol = mlem_jax.solve(levels, y0, 0.0, 1.0, 40, probabilities=[1.0, 0.3], key=key)
    for name, rates in (("u", (1.0, 1.1)), ("v", (2.0, 2.1))):
        alone = mlem_jax.solve(
            linear_levels(rates), y0[name], 0.0, 1.0, 40, probabilities=[1.0, 0.3], key=key
        )
        assert_close(sol.ys[name], alone.ys)


def test_saveat_steps_and_grid_times():
    f = [lambda t, y, a: -y]
    every = mlem_jax.solve(f, jnp.array(1.0), 0.0, 1.0, 4, saveat="steps")
    assert_close(every.ys, 0.75 ** jnp.arange(5.0))
    assert_close(every.ts, jnp.linspace(0.0, 1.0, 5))
    some = mlem_jax.solve(f, jnp.array(1.0), 0.0, 1.0, 4, saveat=[1.0, 0.5, 0.5])
    assert_close(some.ys, every.ys[jnp.array([4, 2, 2])])
    assert_close(some.ts, jnp.array([1.0, 0.5, 0.5]))
    with pytest.raises(ValueError, match="saveat"):
        mlem_jax.solve(f, jnp.array(1.0), 0.0, 1.0, 4, saveat=[0.3])


class Linear(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * y


def test_grad_with_respect_to_y0_is_exact_for_linear_em():
    # y_N = (1 - h a)^N y0.
    a, n, h = 1.3, 25, 1.0 / 25
    grad = jax.grad(lambda y0: mlem_jax.solve([Linear(jnp.array(a))], y0, 0.0, 1.0, n).ys)
    assert np.isclose(float(grad(jnp.array(2.0))), (1 - h * a) ** n, rtol=1e-5)


def test_grad_with_respect_to_level_parameters_matches_finite_differences():
    key = jax.random.key(3)

    def final(rates):
        levels = [Linear(rates[0]), Linear(rates[1])]
        sol = mlem_jax.solve(
            levels, jnp.array([1.0, 2.0]), 0.0, 1.0, 30, probabilities=[1.0, 0.4], key=key
        )
        return jnp.sum(sol.ys)

    rates = jnp.array([1.0, 1.5])
    grad = jax.grad(final)(rates)
    eps = 1e-3
    for i in range(2):
        bump = jnp.zeros(2).at[i].set(eps)
        fd = (final(rates + bump) - final(rates - bump)) / (2 * eps)
        assert np.isclose(float(grad[i]), float(fd), rtol=2e-3), (grad, fd)
    assert float(jnp.abs(grad[1])) > 0  # the top level was drawn and is differentiated


def test_determinism_per_key(levels3):
    def diffusion(t, y, a):  # one function for every run: one compilation
        return 0.5

    def run(key, brownian):
        return mlem_jax.solve(
            levels3,
            jnp.ones(4),
            0.0,
            1.0,
            64,
            probabilities=[1.0, 0.5, 0.2],
            key=key,
            diffusion=diffusion,
            brownian=brownian,
        )

    a = run(jax.random.key(1), jax.random.key(2))
    b = run(jax.random.key(1), jax.random.key(2))
    assert jnp.array_equal(a.ys, b.ys) and jnp.array_equal(a.evaluations, b.evaluations)
    other_levels = run(jax.random.key(9), jax.random.key(2))
    other_noise = run(jax.random.key(1), jax.random.key(9))
    assert not jnp.array_equal(a.evaluations, other_levels.evaluations)
    assert jnp.array_equal(a.evaluations, other_noise.evaluations)
    assert not jnp.allclose(a.ys, other_noise.ys)


@pytest.mark.parametrize("draws", ["random", "stratified"])
def test_vmap_with_unbatched_key_really_skips_the_top_level(draws):
    calls = []

    def top(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -1.5 * y

    levels = [lambda t, y, a: -y, top]

    def run(y0):
        return mlem_jax.solve(
            levels,
            y0,
            0.0,
            1.0,
            200,
            probabilities=[1.0, 0.05],
            key=jax.random.key(3),
            draws=draws,
        )

    sol = jax.jit(jax.vmap(run))(jnp.ones((8, 3)))
    jax.effects_barrier()
    top_evaluations = int(sol.evaluations[0, 1])
    # Binomial(200, 0.05) (mean 10, sd 3.1) for random draws, 10 +- 1 for stratified ones.
    assert 0 < top_evaluations < 40
    assert jnp.all(sol.evaluations == sol.evaluations[0])  # one draw for the batch
    # Under a select (a batched predicate) the top level would run at all 200 steps.
    assert len(calls) == top_evaluations


def test_costs_give_the_cost_actually_spent(levels3):
    sol = mlem_jax.solve(
        levels3,
        jnp.ones(2),
        0.0,
        1.0,
        100,
        probabilities=[1.0, 0.5, 0.1],
        key=jax.random.key(0),
        costs=[1.0, 4.0, 16.0],
    )
    expected = float(sol.evaluations @ jnp.array([1.0, 4.0, 16.0]))
    assert float(jnp.asarray(sol.cost)) == expected
    assert sol.evaluations[0] == 100 and sol.evaluations[1] > sol.evaluations[2] > 0


def test_solve_under_outer_jit_with_traced_times_and_probabilities(levels3):
    @jax.jit
    def run(t1, p):
        return mlem_jax.solve(
            levels3, jnp.ones(2), 0.0, t1, 16, probabilities=p, key=jax.random.key(0)
        ).ys

    eager = mlem_jax.solve(
        levels3,
        jnp.ones(2),
        0.0,
        2.0,
        16,
        probabilities=jnp.array([1.0, 0.5, 0.5]),
        key=jax.random.key(0),
    )
    assert_close(run(2.0, jnp.array([1.0, 0.5, 0.5])), eager.ys)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_diffrax_unsafe_brownian_path_gives_increments_of_variance_dt(t0, t1):
    path = diffrax.UnsafeBrownianPath(shape=(20_000,), key=jax.random.key(0))
    sol = mlem_jax.solve(
        [lambda t, y, a: jnp.zeros_like(y)],
        jnp.zeros(20_000),
        t0,
        t1,
        10,
        diffusion=lambda t, y, a: 1.0,
        brownian=path,
    )
    assert abs(float(jnp.var(sol.ys)) - 1.0) < 5 * np.sqrt(2 / 20_000)


def _variance_of_x1(key_pairs, p=0.5, num_steps=64):
    """Var(X_1) over paths of dX = F dt + dW, levels f^1 = 0 and f^2 = 1, one key pair
    (level draws, Brownian increments) per path."""
    levels = [lambda t, y, a: jnp.zeros_like(y), lambda t, y, a: jnp.ones_like(y)]
    ys = jax.vmap(
        lambda k, b: (
            mlem_jax.solve(
                levels,
                jnp.zeros(()),
                0.0,
                1.0,
                num_steps,
                probabilities=[1.0, p],
                key=k,
                diffusion=lambda t, y, a: 1.0,
                brownian=b,
            ).ys
        )
    )(*key_pairs)
    return float(jnp.var(ys))


def test_one_key_for_the_level_draws_and_the_noise_is_correct():
    """`key=k, brownian=k` must give the variance of independent keys: Var(X_1) =
    Var(W_1) + h^2 N Var(B / p) = 1 + (1 - p) / (p N) = 1 + 1/64. The sample variance
    of n near-normal values has standard error sqrt(2 / n) Var; the tolerance is 4 of
    them. (Draws and increments from the same fold_in(k, n) gave 0.82.)"""
    n, exact = 20_000, 1.0 + 1.0 / 64
    keys = jax.random.split(jax.random.key(0), 2 * n)
    same = _variance_of_x1((keys[:n], keys[:n]))
    separate = _variance_of_x1((keys[:n], keys[n:]))
    tolerance = 4 * np.sqrt(2 / n) * exact
    assert abs(separate - exact) < tolerance, separate
    assert abs(same - exact) < tolerance, same
