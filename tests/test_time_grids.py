"""`solve(..., ts=...)`: grids of unequal steps, in either direction, checked at the entry."""

from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import mlem_jax

from conftest import assert_close, brownian_tree, linear_levels


def zero_drift(t, y, args):
    return jnp.zeros_like(y)


def unit_noise(t, y, args):
    return jnp.ones_like(y)


def squared_grid(num_steps, t1=1.0):
    """t_n = t1 (n / N)^2: a family of grids, each inside the grids of its multiples."""
    return t1 * (np.arange(num_steps + 1) / num_steps) ** 2


def test_uniform_ts_give_the_results_of_t0_t1_num_steps():
    levels = [
        lambda t, y, a: -y + t,
        lambda t, y, a: -1.1 * y + t,
        lambda t, y, a: -1.2 * y + t,
    ]
    common: dict[str, Any] = dict(
        probabilities=(1.0, 0.5, 0.25),
        key=jax.random.key(1),
        diffusion=lambda t, y, a: 0.3,
        brownian=jax.random.key(2),
        saveat="steps",
    )
    y0 = jnp.linspace(-1.0, 1.0, 5)
    equal = mlem_jax.solve(levels, y0, 0.2, 1.7, 24, **common)
    # The same grid computed another way: equal up to the rounding of its points.
    grid = mlem_jax.solve(levels, y0, ts=np.linspace(0.2, 1.7, 25), **common)
    assert_close(grid.ys, equal.ys, rtol=1e-5, atol=1e-6)
    assert_close(grid.ts, equal.ts)
    assert np.array_equal(grid.evaluations, equal.evaluations)


def ou_errors(num_steps_list, paths, key, theta=2.0, sigma=0.5, fine=2**12):
    """RMS error at t = 1 of EM on dX = -theta X dt + sigma dW over the squared grids,
    against the exact solution on the same path (its integral by the trapezoid rule on
    the fine grid, whose own error is O(h_fine^(3/2)))."""
    nodes = squared_grid(fine)
    increments = np.sqrt(np.diff(nodes))[:, None] * np.asarray(
        jax.random.normal(key, (fine, paths)), np.float64
    )
    w = np.concatenate([np.zeros((1, paths)), np.cumsum(increments, axis=0)])
    path = mlem_jax.SampledBrownianPath(0.0, 1.0, jnp.asarray(w, jnp.float32), nodes)
    x0 = 1.0
    # X_1 = e^-theta x0 + sigma (W_1 - theta int_0^1 e^-(theta (1 - s)) W_s ds).
    weights = np.exp(-theta * (1 - nodes))[:, None] * w
    integral = np.sum((weights[1:] + weights[:-1]) / 2 * np.diff(nodes)[:, None], axis=0)
    exact = np.exp(-theta) * x0 + sigma * (w[-1] - theta * integral)
    errors = []
    for num_steps in num_steps_list:
        sol = mlem_jax.solve(
            [lambda t, y, a: -theta * y],
            jnp.full(paths, x0),
            ts=squared_grid(num_steps),
            diffusion=lambda t, y, a: sigma,
            brownian=path,
        )
        errors.append(np.sqrt(np.mean((np.asarray(sol.ys, np.float64) - exact) ** 2)))
    return np.array(errors)


def test_em_has_strong_order_one_on_a_non_uniform_grid():
    # Additive noise: EM's strong order is 1. The largest step of the squared grid is
    # about 2 / N.
    steps = [16, 32, 64, 128, 256]
    errors = ou_errors(steps, paths=2000, key=jax.random.key(0))
    slope, _ = np.polyfit(np.log(1 / np.array(steps)), np.log(errors), 1)
    # Each RMS error has relative standard error ~ 1 / sqrt(2 * 2000) = 1.6%; over a
    # factor 16 in N that moves the slope by ~0.01, and the reference's error is 1e-3
    # of the finest error: 0.1 is a wide margin that still tells 1 from 1/2.
    assert abs(slope - 1.0) < 0.1, (slope, errors)


def test_reverse_time_grid_steps_backwards():
    # dy/dt = y from 1 down to 0 on a decreasing grid: EM gives y1 * prod(1 + dt_n).
    ts = np.array([1.0, 0.8, 0.5, 0.45, 0.1, 0.0])
    sol = mlem_jax.solve([lambda t, y, a: y], jnp.array([2.0]), ts=ts)
    assert_close(sol.ys, jnp.array([2.0 * np.prod(1 + np.diff(ts))]))
    assert float(sol.ts) == 0.0


@pytest.mark.parametrize("ts", [np.linspace(0.0, 2.0, 9) ** 1.5, np.linspace(2.0, 0.0, 9) ** 1.5])
def test_key_increments_have_variance_of_each_step(ts):
    y0 = jnp.zeros(20_000)
    sol = mlem_jax.solve(
        [zero_drift], y0, ts=ts, diffusion=unit_noise, brownian=jax.random.key(3), saveat="steps"
    )
    increments = np.diff(np.asarray(sol.ys), axis=0)
    variances = increments.var(axis=1)
    # Sample variances of 20000 normals: relative standard error sqrt(2 / 20000) = 1%.
    relative = variances / np.abs(np.diff(ts)) - 1.0
    assert np.all(np.abs(relative) < 5 * np.sqrt(2 / y0.size)), relative


def test_schedule_rows_follow_the_steps_of_the_grid():
    # p_2 = 1 at the steps in `chosen`, 1e-7 elsewhere: level 2 is evaluated there only
    # (a stray draw has probability 1e-7 per step).
    ts = squared_grid(12)
    chosen = [0, 3, 4, 11]
    table = np.full((12, 2), 1e-7)
    table[:, 0] = 1.0
    table[chosen, 1] = 1.0
    levels = linear_levels([1.0, 1.1])
    sol = mlem_jax.solve(
        levels, jnp.ones(2), ts=ts, probabilities=table, key=jax.random.key(0), costs=[1.0, 10.0]
    )
    assert int(sol.evaluations[1]) == len(chosen)

    # A callable is evaluated at each step's start t_n of the grid.
    def late(t):
        return jnp.stack([jnp.ones_like(t), jnp.where(t >= 0.3, 1.0, 1e-7)])

    sol = mlem_jax.solve(levels, jnp.ones(2), ts=ts, probabilities=late, key=jax.random.key(0))
    assert int(sol.evaluations[1]) == int((ts[:-1] >= 0.3).sum())

    with pytest.raises(ValueError, match="one row per step"):
        mlem_jax.solve(levels, jnp.ones(2), ts=ts[:-1], probabilities=table, key=jax.random.key(0))


def test_sampled_path_on_a_non_uniform_grid_is_read_exactly():
    nodes = squared_grid(64)
    values = jax.random.normal(jax.random.key(4), (65, 3)).cumsum(axis=0)
    path = mlem_jax.SampledBrownianPath(0.0, 1.0, values, nodes)
    # Drift 0, diffusion 1 over the grid of 16 steps, whose points are nodes: X_1 - X_0
    # is W(1) - W(0).
    sol = mlem_jax.solve(
        [zero_drift], jnp.zeros(3), ts=squared_grid(16), diffusion=unit_noise, brownian=path
    )
    assert_close(sol.ys, values[-1] - values[0])


def test_sampled_path_refuses_times_between_its_nodes():
    path = mlem_jax.SampledBrownianPath(0.0, 1.0, jnp.zeros((65, 3)), squared_grid(64))
    with pytest.raises(ValueError, match="`ts` must lie on the nodes.*n = \\[1, 3, 4"):
        mlem_jax.solve(
            [zero_drift], jnp.zeros(3), ts=np.linspace(0, 1, 9), diffusion=unit_noise, brownian=path
        )
    # Traced grids are checked at run time, and so are diffrax's lookups.
    traced = eqx.filter_jit(
        lambda ts: (
            mlem_jax.solve(
                [zero_drift], jnp.zeros(3), ts=ts, diffusion=unit_noise, brownian=path
            ).ys
        )
    )
    with pytest.raises(eqx.EquinoxRuntimeError, match="nodes"):
        traced(jnp.linspace(0.0, 1.0, 9))
    assert_close(traced(jnp.asarray(squared_grid(8), jnp.float32)), jnp.zeros(3))
    with pytest.raises(eqx.EquinoxRuntimeError, match="between its nodes"):
        eqx.filter_jit(path.evaluate)(0.0, 0.5)


@pytest.mark.parametrize(
    "ts, match",
    [
        ([0.0, 0.5, 0.4, 1.0], "strictly monotone"),
        ([0.0, 0.5, 0.5, 1.0], "must not repeat"),
        ([0.5], "at least two times"),
        ([[0.0, 1.0]], "1-d array"),
        ([0.0, np.nan, 1.0], "finite"),
        ([0.0, np.inf], "finite"),
    ],
)
def test_bad_grids_raise_errors_naming_ts(ts, match):
    with pytest.raises(ValueError, match=f"`ts`.*{match}|{match}.*`ts`|`ts` must {match}"):
        mlem_jax.solve([zero_drift], jnp.zeros(2), ts=np.asarray(ts))


def test_grid_in_one_form_only():
    with pytest.raises(ValueError, match="either as `t0, t1, num_steps` or as `ts=`"):
        mlem_jax.solve([zero_drift], jnp.zeros(2), 0.0, 1.0, 4, ts=np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="as `t0, t1, num_steps`.*or as `ts=`"):
        mlem_jax.solve([zero_drift], jnp.zeros(2), 0.0, 1.0)


def test_diffrax_step_to_agrees_with_solve_on_the_same_grid():
    ts = squared_grid(20, 1.5)
    levels = [
        lambda t, y, a: jnp.sin(y) - y,
        lambda t, y, a: jnp.sin(y) - 1.1 * y + 0.1 * t,
        lambda t, y, a: jnp.sin(y) - 1.2 * y + 0.2 * t,
    ]
    table = np.tile([1.0, 0.6, 0.3], (20, 1))
    table[15:, 1:] = 1.0  # every level over the last five steps
    key, path = jax.random.key(7), brownian_tree(jax.random.key(8), 0.0, 1.5, (4,))
    y0 = jnp.linspace(-1.0, 1.0, 4)
    ours = mlem_jax.solve(
        levels,
        y0,
        ts=ts,
        probabilities=table,
        key=key,
        diffusion=lambda t, y, a: 0.2 * jnp.ones_like(y),
        brownian=path,
    )
    terms = diffrax.MultiTerm(
        mlem_jax.MultilevelTerm(levels, table),
        diffrax.ControlTerm(
            lambda t, y, a: lx.DiagonalLinearOperator(0.2 * jnp.ones_like(y)), path
        ),
    )
    theirs = diffrax.diffeqsolve(
        terms,
        mlem_jax.MLEM(key),
        0.0,
        1.5,
        None,
        y0,
        stepsize_controller=diffrax.StepTo(ts=jnp.asarray(ts)),
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    assert_close(theirs.ys[0], ours.ys, rtol=1e-5, atol=1e-6)
    assert np.array_equal(mlem_jax.evaluations(theirs), ours.evaluations)


def test_float32_state_under_x64_keeps_its_dtype():
    def drift(t, y, args):
        return -t * y  # float64 under x64: t is

    ts = squared_grid(32)
    values = jax.random.normal(jax.random.key(0), (33, 4)).cumsum(axis=0) * 0.2
    with jax.enable_x64(True):
        path = mlem_jax.SampledBrownianPath(0.0, 1.0, values, ts)  # float32 values
        y0 = jnp.linspace(0.5, 1.5, 4, dtype=jnp.float32)
        common: dict[str, Any] = dict(ts=ts, diffusion=lambda t, y, a: 0.1, brownian=path)
        sol = mlem_jax.solve([drift], y0, **common)
        wide = mlem_jax.solve([drift], y0.astype(jnp.float64), **common)
        assert sol.ys.dtype == jnp.float32 and sol.ts.dtype == jnp.float64
        # The same solve in float64, on the same path: equal to float32 rounding.
        assert_close(sol.ys, wide.ys.astype(jnp.float32), rtol=1e-5, atol=1e-6)


def test_error_sensitivity_on_a_grid():
    ts = squared_grid(16)
    times, gains = mlem_jax.error_sensitivity(lambda t, y, a: -2.0 * y, jnp.ones(3), ts=ts)
    assert_close(times, ts[:-1])
    # Linear drift: an error after step n is multiplied by prod_{m > n} (1 - 2 h_m).
    factors = np.append(np.cumprod((1 - 2 * np.diff(ts))[::-1])[::-1][1:], 1.0)
    assert_close(gains, factors**2, rtol=1e-4)


def test_optimal_probabilities_weight_steps_by_their_size_squared():
    h = np.diff(squared_grid(8))
    v = np.linspace(1.0, 2.0, 16).reshape(8, 2)
    weighted = mlem_jax.optimal_probabilities(
        [1.0, 4.0, 16.0], v, top_level_evaluations=2.0, num_steps=8, step_sizes=h
    )
    by_hand = mlem_jax.optimal_probabilities(
        [1.0, 4.0, 16.0], h[:, None] ** 2 * v, top_level_evaluations=2.0, num_steps=8
    )
    assert_close(weighted, by_hand)
    # The top level is drawn where the steps are long.
    assert np.all(np.diff(weighted[:, -1]) >= 0) and weighted[0, -1] < weighted[-1, -1]
    with pytest.raises(ValueError, match="`step_sizes`"):
        mlem_jax.optimal_probabilities(
            [1.0, 4.0, 16.0], v, top_level_evaluations=2.0, num_steps=8, step_sizes=h[:-1]
        )


def test_probabilities_are_checked_once_per_solve(monkeypatch):
    import mlem_jax._schedule as schedule

    calls = []
    original = schedule.check_probabilities

    def counted(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(schedule, "check_probabilities", counted)
    table = np.tile([1.0, 0.5, 0.25], (12, 1))
    levels = linear_levels([1.0, 1.1, 1.2])
    mlem_jax.solve(
        levels, jnp.ones(2), ts=squared_grid(12), probabilities=table, key=jax.random.key(0)
    )
    assert len(calls) == 1
    # The diffrax solver: once, when the term is built; its steps take the value as is.
    term = mlem_jax.MultilevelTerm(levels, table)
    diffrax.diffeqsolve(
        term,
        mlem_jax.MLEM(jax.random.key(0)),
        0.0,
        1.0,
        None,
        jnp.ones(2),
        stepsize_controller=diffrax.StepTo(ts=jnp.asarray(squared_grid(12))),
    )
    assert len(calls) == 2
