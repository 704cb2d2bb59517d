"""Levels that share computation (`LevelFamily`): one pass per step, the same estimate."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
import pytest

import mlem_jax


class TanhExits(mlem_jax.LevelFamily):
    """Exit l reads out a residual stream after l tanh blocks; `calls` records the depth
    of every pass that runs (a host callback)."""

    weights: jax.Array
    calls: list = eqx.field(static=True)

    @property
    def num_levels(self):
        return self.weights.shape[0]

    def evaluate(self, t, y, args, depth):
        jax.debug.callback(lambda: self.calls.append(depth))
        h, outputs = y, []
        for w in self.weights[:depth]:
            h = h + 0.5 * jnp.tanh(h @ w + t)
            outputs.append(h - 1.5 * y)
        return tuple(outputs)

    def __hash__(self):
        return id(self)


def family(calls=None, levels=4, dim=3, seed=0):
    weights = jax.random.normal(jax.random.key(seed), (levels, dim, dim)) / np.sqrt(dim)
    return TanhExits(weights, [] if calls is None else calls)


Y0 = jnp.array([0.3, -0.5, 1.0])
P = jnp.array([1.0, 0.6, 0.3, 0.1])


def run(levels, probabilities=P, coupling="nested", draws="random", steps=64, **kwargs):
    return mlem_jax.solve(
        levels,
        Y0,
        0.0,
        1.0,
        steps,
        probabilities=probabilities,
        key=jax.random.key(1),
        diffusion=lambda t, y, a: 0.3,
        brownian=jax.random.key(2),
        coupling=coupling,
        draws=draws,
        **kwargs,
    )


@pytest.mark.parametrize("coupling", ["nested", "independent"])
@pytest.mark.parametrize("draws", ["random", "stratified"])
def test_family_equals_its_levels_given_one_by_one(coupling, draws):
    shared = family()
    one_by_one = list(shared)
    assert all(isinstance(level, mlem_jax.FamilyLevel) for level in one_by_one)
    a = run(shared, coupling=coupling, draws=draws)
    b = run(one_by_one, coupling=coupling, draws=draws)
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-5, atol=1e-6)
    if coupling == "nested":
        np.testing.assert_array_equal(a.evaluations, b.evaluations)
    else:
        # A pass to the deepest drawn level goes through every level below it, also
        # those that one-by-one evaluation would skip.
        assert (np.asarray(a.evaluations) >= np.asarray(b.evaluations)).all()
        assert a.evaluations[-1] == b.evaluations[-1]
    assert int(a.evaluations[-1]) < 64 // 2  # really multilevel: the top level is rare


def test_each_step_runs_one_pass_to_the_deepest_drawn_level():
    calls = []
    shared = family(calls)
    costs = np.array([1.0, 3.0, 9.0, 27.0])  # cumulative: a pass to level l
    sol = run(shared, saveat=None, costs=costs)
    passes = np.asarray(calls)
    assert len(passes) == 64  # one pass per step, not one per drawn level
    # Nested draws: level l runs at the steps whose pass reaches depth >= l + 1.
    counts = [(passes >= depth).sum() for depth in range(1, 5)]
    np.testing.assert_array_equal(sol.evaluations, counts)
    assert sol.cost is not None and float(sol.cost) == pytest.approx(costs[passes - 1].sum())


def test_vmapped_family_still_skips():
    calls = []
    shared = family(calls)
    y0s = jax.random.normal(jax.random.key(3), (16, 3))
    paths = jax.vmap(
        lambda y: (
            mlem_jax.solve(
                shared, y, 0.0, 1.0, 32, probabilities=P, key=jax.random.key(1)
            ).evaluations
        )
    )(y0s)
    assert len(calls) == 32  # one pass per step for the whole batch
    assert int(paths[0, -1]) == int((np.asarray(calls) == 4).sum()) < 32


def test_every_probability_one_is_em_on_the_top_level_exactly():
    shared = family()
    mlem = run(shared, probabilities=jnp.ones(4))
    em = mlem_jax.solve(
        shared[-1:], Y0, 0.0, 1.0, 64, diffusion=lambda t, y, a: 0.3, brownian=jax.random.key(2)
    )
    np.testing.assert_array_equal(mlem.ys, em.ys)
    np.testing.assert_array_equal(mlem.evaluations, [64, 64, 64, 64])


def test_levels_that_cancel_leave_the_estimate_unchanged():
    shared = family()
    p = jnp.array([1.0, 1.0, 0.3, 0.3])  # level 1 and level 3 cancel
    assert mlem_jax.needed_levels(p) == (1, 3)
    a = run(shared, probabilities=p)
    b = run(list(shared), probabilities=p)
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-5, atol=1e-6)


def test_diffrax_mlem_takes_the_same_steps_as_solve():
    shared = family()
    path = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(3,), key=jax.random.key(5))
    noise = diffrax.ControlTerm(lambda t, y, a: lx.DiagonalLinearOperator(0.3 * jnp.ones(3)), path)
    terms = diffrax.MultiTerm(mlem_jax.MultilevelTerm(shared, P), noise)
    sol = diffrax.diffeqsolve(
        terms,
        mlem_jax.MLEM(jax.random.key(1)),
        0.0,
        1.0,
        1 / 32,
        Y0,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    ours = mlem_jax.solve(
        shared,
        Y0,
        0.0,
        1.0,
        32,
        probabilities=P,
        key=jax.random.key(1),
        diffusion=lambda t, y, a: 0.3 * jnp.ones(3),
        brownian=path,
    )
    np.testing.assert_allclose(sol.ys[-1], ours.ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mlem_jax.evaluations(sol), ours.evaluations)


def test_diffrax_mlem_in_reverse_time_sees_the_users_time():
    shared = family()
    term = mlem_jax.MultilevelTerm(shared, P)
    sol = diffrax.diffeqsolve(term, mlem_jax.MLEM(jax.random.key(1)), 1.0, 0.0, -1 / 32, Y0)
    ours = mlem_jax.solve(shared, Y0, 1.0, 0.0, 32, probabilities=P, key=jax.random.key(1))
    np.testing.assert_allclose(sol.ys[-1], ours.ys, rtol=1e-5, atol=1e-6)


def test_indexing_and_errors():
    shared = family()
    assert len(shared) == 4 and shared[-1].index == 3 and len(shared[1:3]) == 2
    np.testing.assert_allclose(shared[2](0.1, Y0, None), shared.evaluate(0.1, Y0, None, 4)[2])
    with pytest.raises(IndexError, match="level index 4 out of range for 4 levels"):
        shared[4]
    with pytest.raises(ValueError, match="`levels` must hold at least one level"):
        mlem_jax.solve(family(levels=0), Y0, 0.0, 1.0, 4)


def test_shared_costs_give_marginal_correction_costs():
    cumulative = [1.0, 3.0, 9.0, 27.0]
    np.testing.assert_allclose(mlem_jax.correction_costs(cumulative, shared=True), [2.0, 6.0, 18.0])
    np.testing.assert_allclose(mlem_jax.marginal_costs(cumulative), [1.0, 2.0, 6.0, 18.0])
    v = [4.0, 1.0, 0.25]
    p = mlem_jax.optimal_probabilities(
        cumulative, v, top_level_evaluations=4, num_steps=64, shared=True
    )
    shape = np.sqrt(np.asarray(v) / [2.0, 6.0, 18.0])
    np.testing.assert_allclose(p[1:], np.minimum(1, shape * (4 / 64) / shape[-1]))
    with pytest.raises(ValueError, match="needs coupling='nested', got 'independent'"):
        mlem_jax.correction_costs(cumulative, "independent", shared=True)
    with pytest.raises(ValueError, match="so they must increase; got"):
        mlem_jax.correction_costs([1.0, 1.0, 2.0], shared=True)


def test_truncated_family_is_the_first_levels():
    shared = family()
    low = shared.truncated(2)
    assert len(low) == 2
    np.testing.assert_allclose(low[-1](0.2, Y0, None), shared[1](0.2, Y0, None))
    np.testing.assert_allclose(
        run(low, probabilities=P[:2]).ys, run(list(shared)[:2], probabilities=P[:2]).ys, rtol=1e-5
    )
    assert low.calls is shared.calls  # pyright: ignore[reportAttributeAccessIssue]
    with pytest.raises(ValueError, match=r"`num_levels` must be in 1..4, got 5"):
        shared.truncated(5)


def test_level_statistics_of_a_family_equal_those_of_its_levels():
    shared = family()
    ts = jnp.linspace(0.1, 0.9, 5)
    ys = jax.random.normal(jax.random.key(4), (5, 3))
    a = mlem_jax.level_statistics(shared, ts, ys)
    b = mlem_jax.level_statistics(list(shared), ts, ys)
    np.testing.assert_allclose(a.variances, b.variances, rtol=1e-5)
    np.testing.assert_allclose(a.errors, b.errors, rtol=1e-5, atol=1e-6)
    # The top level against itself: exactly 0, though a separate pass to it may round
    # differently (fit_gamma leaves out only the levels with eps_l == 0).
    assert a.errors[-1] == 0.0 and b.errors[-1] == 0.0


def test_stacked_family_runs_the_family_then_the_levels_above():
    calls = []
    shared = family(calls, levels=3)
    top = lambda t, y, a: jnp.sin(y) - y  # noqa: E731
    stacked = mlem_jax.StackedFamily(shared, [top])
    assert len(stacked) == 4 and stacked.calls is calls
    outputs = stacked.evaluate(0.2, Y0, None, 4)
    np.testing.assert_allclose(outputs[3], top(0.2, Y0, None))
    np.testing.assert_allclose(outputs[2], shared[2](0.2, Y0, None))
    assert len(stacked.evaluate(0.2, Y0, None, 2)) == 2
    a = run(stacked)
    b = run(list(stacked))
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.evaluations, b.evaluations)


def test_family_costs_are_those_of_a_pass_returning_every_level():
    # The top of a StackedFamily does not use the family's outputs: a lone evaluation of
    # it would cost the top alone, while ML-EM's pass to it runs the family too.
    shared = family(levels=3)
    top = lambda t, y, a: y @ jnp.ones((3, 3))  # noqa: E731
    stacked = mlem_jax.StackedFamily(shared, [top])
    costs = mlem_jax.level_costs(stacked, 0.3, Y0, repeats=1).flops
    alone = mlem_jax.level_costs([top], 0.3, Y0, repeats=1).flops[0]
    assert (np.diff(costs) > 0).all()
    assert costs[3] > costs[2] + 0.9 * alone


def test_family_with_base_puts_its_base_below_the_family():
    calls = []
    shared = family(calls, levels=3)
    base = lambda t, y, a: -y  # noqa: E731
    based = mlem_jax.FamilyWithBase(base, shared)
    assert len(based) == 4 and based.calls is calls
    outputs = based.evaluate(0.2, Y0, None, 4)
    np.testing.assert_allclose(outputs[0], -Y0)
    for level in range(3):
        np.testing.assert_allclose(outputs[level + 1], shared[level](0.2, Y0, None))
    calls.clear()
    assert len(based.evaluate(0.2, Y0, None, 1)) == 1
    jax.effects_barrier()
    assert calls == []  # level 1 alone runs no pass of the family
    a = run(based)
    b = run(list(based))
    np.testing.assert_allclose(a.ys, b.ys, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(a.evaluations, b.evaluations)
    # Every p_l = 1: the telescoping sum is the top level, EM on the family's top.
    every = run(based, probabilities=jnp.ones(4))
    em = run([shared[-1]], probabilities=jnp.ones(1))
    np.testing.assert_allclose(every.ys, em.ys, rtol=1e-5, atol=1e-5)
