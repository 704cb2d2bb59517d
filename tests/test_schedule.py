"""Time-dependent probabilities p_l(t): schedules in `solve` and `MLEM`, their optimiser
and the time-binned calibration they come from."""

from typing import Any

import chex
import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import mlem_jax

from conftest import assert_close, brownian_tree, linear_levels


RATES = [1.0, 1.2, 1.3]
CONSTANT = np.array([1.0, 0.5, 0.2])


def ramp(t):
    """A valid nested schedule that changes with t in [0, 1]."""
    return jnp.stack([jnp.ones_like(t), 0.3 + 0.6 * t, 0.05 + 0.5 * t])


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_constant_schedule_equals_constant_probabilities(t0, t1):
    levels, key, path = linear_levels(RATES), jax.random.key(0), jax.random.key(1)
    g = lambda t, y, args: 0.3  # noqa: E731
    run = lambda p: mlem_jax.solve(  # noqa: E731
        levels,
        jnp.ones(3),
        t0,
        t1,
        20,
        probabilities=p,
        key=key,
        diffusion=g,
        brownian=path,
    )
    constant = run(CONSTANT)
    for schedule in (np.tile(CONSTANT, (20, 1)), lambda t: jnp.asarray(CONSTANT)):
        same = run(schedule)
        assert jnp.array_equal(same.ys, constant.ys)
        assert jnp.array_equal(same.evaluations, constant.evaluations)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_step_n_uses_row_n(t0, t1):
    # p = 1 at the steps that start before t = 0.5, 1e-7 after: the top level is
    # evaluated at exactly the steps of the first kind (a miss has probability ~1e-6).
    schedule = lambda t: jnp.where(t < 0.5, 1.0, 1e-7) * jnp.ones(3)  # noqa: E731
    schedule_with_first = lambda t: schedule(t).at[0].set(1.0)  # noqa: E731
    num_steps = 40
    solution = mlem_jax.solve(
        linear_levels(RATES),
        jnp.ones(2),
        t0,
        t1,
        num_steps,
        probabilities=schedule_with_first,
        key=jax.random.key(3),
    )
    expected = int((np.asarray(mlem_jax.step_times(t0, t1, num_steps)) < 0.5).sum())
    # Levels 2 and 3 share their p at every step, so level 2 cancels and is skipped.
    assert solution.evaluations.tolist() == [num_steps, 0, expected]


def test_time_varying_schedule_is_unbiased():
    # Linear levels: X_N = prod_n (1 - h R_n) y0 with R_n independent of X_n and
    # E[R_n] = r_K, so E[X_N] equals EM on the top level exactly.
    levels, num_steps, draws = linear_levels(RATES), 10, 20000
    em = mlem_jax.solve(levels[-1:], jnp.ones(1), 0.0, 1.0, num_steps).ys

    def one(key):
        return mlem_jax.solve(
            levels, jnp.ones(1), 0.0, 1.0, num_steps, probabilities=ramp, key=key
        ).ys[0]

    samples = np.asarray(jax.vmap(one)(jax.random.split(jax.random.key(4), draws)))
    standard_error = samples.std() / np.sqrt(draws)
    assert samples.std() > 0.01  # the schedule really randomises the drift
    assert abs(samples.mean() - float(em[0])) < 4 * standard_error


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1.0, 0.0)])
def test_diffrax_solver_follows_the_same_schedule(t0, t1):
    levels, key, num_steps = linear_levels(RATES), jax.random.key(5), 16
    path = brownian_tree(jax.random.key(6), t0, t1, (3,))
    g = lambda t, y, args: 0.3 * jnp.ones_like(y)  # noqa: E731
    noise = diffrax.ControlTerm(lambda t, y, a: lx.DiagonalLinearOperator(g(t, y, a)), path)
    table = np.asarray(jax.vmap(ramp)(mlem_jax.step_times(t0, t1, num_steps)))
    ours = mlem_jax.solve(
        levels,
        jnp.ones(3),
        t0,
        t1,
        num_steps,
        probabilities=table,
        key=key,
        diffusion=g,
        brownian=path,
    )
    for schedule in (table, ramp):
        terms = diffrax.MultiTerm(mlem_jax.MultilevelTerm(levels, schedule), noise)
        sol = diffrax.diffeqsolve(
            terms,
            mlem_jax.MLEM(key),
            t0,
            t1,
            (t1 - t0) / num_steps,
            jnp.ones(3),
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
        )
        assert_close(sol.ys[0], ours.ys)
        assert jnp.array_equal(mlem_jax.evaluations(sol), ours.evaluations)


def test_diffrax_solver_refuses_a_short_table_and_a_bad_row_at_run_time():
    levels = linear_levels(RATES)
    run = lambda p: diffrax.diffeqsolve(  # noqa: E731
        mlem_jax.MultilevelTerm(levels, p),
        mlem_jax.MLEM(jax.random.key(0)),
        0.0,
        1.0,
        0.1,
        jnp.ones(2),
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match="has 5 rows"):
        run(np.tile(CONSTANT, (5, 1)))
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"`probabilities\(t\)`.*not valid"):
        run(lambda t: jnp.array([1.0, 0.2, 0.5]))
    with pytest.raises(ValueError, match=r"callable must map a time t.*\(3,\).*float32\[2\]"):
        mlem_jax.MultilevelTerm(levels, lambda t: jnp.ones(2))


@pytest.mark.parametrize(
    "probabilities, match",
    [
        (np.tile(CONSTANT, (9, 1)), r"one row per step, shape \(10, 3\); got shape \(9, 3\)"),
        (np.tile([1.0, 0.2, 0.5], (10, 1)), r"`probabilities\[0\]` must be non-increasing"),
        (
            np.vstack([np.tile(CONSTANT, (9, 1)), [[0.5, 0.5, 0.5]]]),
            r"`probabilities\[9, 0\]` must be 1",
        ),
        (lambda t: jnp.ones(2), r"callable must map a time t.*\(3,\).*float32\[2\]"),
        (lambda t: jnp.array([1.0, 1.0, 0.0]) + t, r"\(0, 1\].*step start time t_n"),
    ],
)
def test_bad_schedules_are_refused(probabilities, match):
    with pytest.raises(ValueError, match=match):
        mlem_jax.solve(
            linear_levels(RATES),
            jnp.ones(2),
            0.0,
            1.0,
            10,
            probabilities=probabilities,
            key=jax.random.key(0),
        )


COSTS = np.array([1.0, 4.0, 16.0])


def test_optimal_schedule_is_one_global_multiplier_of_sqrt_v_over_c():
    ts = np.linspace(0.0, 1.0, 50, endpoint=False)
    variances = np.stack([1.0 + 9 * (ts < 0.1), 0.1 + 2.0 * (ts < 0.1)], axis=1)
    p = mlem_jax.optimal_probabilities(COSTS, variances, top_level_evaluations=3, num_steps=50)
    chex.assert_shape(p, (50, 3))
    assert (p[:, 0] == 1).all()
    assert np.isclose(p[:, -1].sum(), 3.0)
    ratio = p[:, 1:] / np.sqrt(variances / COSTS[1:])
    assert np.allclose(ratio, ratio[0, 0])  # nothing is clipped here
    # The top level is drawn sqrt(v ratio) = sqrt(21) times more often where v is high.
    assert np.isclose(p[0, -1] / p[-1, -1], np.sqrt(2.1 / 0.1))


def test_constant_variances_give_the_constant_solution():
    variances = np.array([0.4, 0.1])
    constant = mlem_jax.optimal_probabilities(
        COSTS, variances, top_level_evaluations=3, num_steps=30
    )
    schedule = mlem_jax.optimal_probabilities(
        COSTS, np.tile(variances, (30, 1)), top_level_evaluations=3, num_steps=30
    )
    assert np.allclose(schedule, constant[None, :])


def test_schedule_costs_less_than_constant_probabilities_at_equal_variance():
    ts = np.linspace(0.0, 1.0, 40, endpoint=False)
    variances = np.stack([np.exp(-5 * ts), 0.5 * np.exp(-8 * ts)], axis=1)
    budget = 4 * variances.sum()
    schedule = mlem_jax.optimal_probabilities(COSTS, variances, variance_budget=budget)
    assert np.isclose((variances / schedule[:, 1:]).sum(), budget, rtol=1e-6)
    constant = mlem_jax.optimal_probabilities(
        COSTS, variances.sum(axis=0) / 40, variance_budget=budget / 40
    )
    assert np.isclose((variances / constant[1:]).sum(), budget, rtol=1e-6)
    cost = lambda p: (np.broadcast_to(p, (40, 3)) @ COSTS).sum()  # noqa: E731
    assert cost(schedule) < 0.9 * cost(constant)


def test_schedule_clipping_and_nested_monotonicity_per_row():
    variances = np.array([[0.01, 1.0], [1.0, 0.0], [1.0, 1.0]])
    p = mlem_jax.optimal_probabilities(COSTS, variances, top_level_evaluations=2.5, num_steps=3)
    assert np.all(p <= 1.0) and np.all(np.diff(p, axis=1) <= 0)
    # Only two rows have v_K > 0, so at most 2 top-level evaluations are possible.
    assert np.isclose(p[:, -1].sum(), 2.0 + p[1, -1]) and p[1, -1] > 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(variances=np.ones((5, 3))), r"`variances`.*\(2,\).*\(N, 2\).*\(5, 3\)"),
        (dict(variances=np.ones((5, 2)), num_steps=6), r"`num_steps` \(6\).*rows.*\(5\)"),
    ],
)
def test_bad_schedule_variances_are_refused(kwargs, match):
    kwargs = {"top_level_evaluations": 2, "num_steps": 5, **kwargs}
    with pytest.raises(ValueError, match=match):
        mlem_jax.optimal_probabilities(COSTS, **kwargs)


def test_variance_profile_is_exact_for_time_scaled_linear_levels():
    # f^l = -r_l t y: v_l(t) = (r_l - r_(l-1))^2 t^2 ||y||^2, here with ||y||^2 = 4.
    levels = [lambda t, y, args, r=r: -r * t * y for r in RATES]
    ts = jnp.linspace(0.0, 1.0, 20)
    ys = jnp.ones((20, 4))
    profile = mlem_jax.variance_profile(levels, ts, ys, bins=[0.0, 0.5, 1.0])
    assert profile.counts.tolist() == [10, 10]
    t = np.asarray(ts)
    for b, part in enumerate((t[:10], t[10:])):
        expected = 4 * (np.diff(RATES) ** 2)[None, :] * (part**2)[:, None]
        assert np.allclose(profile.variances[b], expected.mean(axis=0), rtol=1e-5)
    assert np.allclose(profile.at([0.2, 0.7, -1.0, 2.0]), profile.variances[[0, 1, 0, 1]])


def test_variance_profile_fills_empty_bins_from_the_nearest_and_checks_bins():
    levels = linear_levels(RATES)
    profile = mlem_jax.variance_profile(levels, jnp.array([0.05, 0.95]), jnp.ones((2, 3)), bins=4)
    assert profile.counts.tolist() == [1, 0, 0, 1]
    assert np.allclose(profile.at([0.3, 0.6]), profile.variances[[0, 3]])
    with pytest.raises(ValueError, match="`bins`.*increasing"):
        mlem_jax.variance_profile(levels, jnp.zeros(2), jnp.ones((2, 3)), bins=[1.0, 0.0])
    with pytest.raises(ValueError, match="at least two levels"):
        mlem_jax.variance_profile(levels[:1], jnp.zeros(2), jnp.ones((2, 3)))


@pytest.mark.parametrize("t0, t1, noisy", [(0.0, 1.0, False), (1.0, 0.0, True)])
def test_error_sensitivity_is_exact_for_a_linear_drift(t0, t1, noisy):
    # EM on f = -a y: X_N = (1 - h a)^(N - 1 - n) X_{n+1}, in every direction.
    a, num_steps = 2.0, 10
    h = abs(t1 - t0) / num_steps
    extra: dict[str, Any] = {}
    if noisy:
        extra = dict(diffusion=lambda t, y, args: 0.5, brownian=jax.random.key(1))
    ts, w = mlem_jax.error_sensitivity(
        lambda t, y, args: -a * y * np.sign(t1 - t0), jnp.ones(5), t0, t1, num_steps, **extra
    )
    assert np.allclose(ts, np.asarray(mlem_jax.step_times(t0, t1, num_steps)))
    expected = (1 - h * a) ** (2 * (num_steps - 1 - np.arange(num_steps)))
    assert np.allclose(w, expected, rtol=1e-5)
