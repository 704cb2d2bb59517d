"""`MLEM` in `diffrax.diffeqsolve`: agreement with `solve` and `Euler`, and refusals."""

from typing import Any

import chex
import diffrax
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import lineax as lx
import pytest

import mlem_jax

from conftest import assert_close, brownian_tree


def drift(t, y, args):
    return jnp.sin(y) - 0.5 * y + t


def diffusion(t, y, args):
    return 0.3 + 0.1 * jnp.cos(y)


LEVELS = [
    lambda t, y, a: 0.8 * drift(t, y, a),
    lambda t, y, a: 0.95 * drift(t, y, a),
    drift,
]
PROBABILITIES = [1.0, 0.5, 0.25]
Y0 = jnp.array([0.3, -1.0, 2.0])


def diagonal_diffusion(t, y, args):
    """Diagonal noise g * dW as a `ControlTerm` vector field (one function object, so
    that equal solves across tests share their compilation)."""
    return lx.DiagonalLinearOperator(diffusion(t, y, args))


def sde_terms(levels, probabilities, path, **kw):
    return diffrax.MultiTerm(
        mlem_jax.MultilevelTerm(levels, probabilities, **kw),
        diffrax.ControlTerm(diagonal_diffusion, path),
    )


def ode_solve(key, **kwargs):
    """ML-EM on the ODE over [0, 1] in 16 steps (equal calls share one compilation)."""
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    return diffrax.diffeqsolve(term, mlem_jax.MLEM(key), 0.0, 1.0, 1 / 16, Y0, **kwargs)


def final(sol):
    return jtu.tree_map(lambda x: x[-1], sol.ys)


# Agreement with `mlem_jax.solve` and with `diffrax.Euler`.


@pytest.mark.parametrize(
    "t0, t1, coupling, draws",
    [
        (0.0, 1.0, "nested", "random"),
        (1.0, 0.0, "independent", "random"),
        (1.0, 0.0, "nested", "stratified"),
    ],
)
def test_sde_agrees_with_solve(t0, t1, coupling, draws):
    key, path = jax.random.key(5), brownian_tree(jax.random.key(0), t0, t1, (3,))
    num_steps = 16
    expected = mlem_jax.solve(
        LEVELS,
        Y0,
        t0,
        t1,
        num_steps,
        probabilities=PROBABILITIES,
        key=key,
        diffusion=diffusion,
        brownian=path,
        coupling=coupling,
        draws=draws,
    )
    sol = diffrax.diffeqsolve(
        sde_terms(LEVELS, PROBABILITIES, path, coupling=coupling, draws=draws),
        mlem_jax.MLEM(key),
        t0,
        t1,
        (t1 - t0) / num_steps,
        Y0,
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    assert_close(final(sol), expected.ys)
    assert mlem_jax.evaluations(sol).tolist() == expected.evaluations.tolist()
    # The draws really vary: not every level at every step.
    assert expected.evaluations[-1] < num_steps
    assert int(sol.stats["num_steps"]) == num_steps


def test_ode_agrees_with_solve_with_dt0_and_with_step_to_in_reverse_time():
    key, num_steps = jax.random.key(7), 32
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    save = diffrax.SaveAt(t1=True, solver_state=True)
    with_dt0 = diffrax.diffeqsolve(
        term, mlem_jax.MLEM(key), 0.0, 2.0, 2 / num_steps, Y0, saveat=save
    )
    step_to = diffrax.diffeqsolve(
        term,
        mlem_jax.MLEM(key),
        2.0,
        0.0,
        None,
        Y0,
        saveat=save,
        stepsize_controller=diffrax.StepTo(ts=jnp.linspace(2.0, 0.0, num_steps + 1)),
    )
    for sol, (t0, t1) in ((with_dt0, (0.0, 2.0)), (step_to, (2.0, 0.0))):
        expected = mlem_jax.solve(
            LEVELS, Y0, t0, t1, num_steps, probabilities=PROBABILITIES, key=key
        )
        assert_close(final(sol), expected.ys)
        assert mlem_jax.evaluations(sol).tolist() == expected.evaluations.tolist()
    # A different key gives different draws, so the agreement above is not vacuous.
    other = diffrax.diffeqsolve(term, mlem_jax.MLEM(jax.random.key(8)), 0.0, 2.0, 2 / num_steps, Y0)
    assert not jnp.allclose(final(other), final(with_dt0))


def test_all_probabilities_one_equals_diffrax_euler_on_the_top_level_in_reverse_time():
    t0, t1 = 1.0, 0.0
    path = diffrax.UnsafeBrownianPath(shape=(3,), key=jax.random.key(1))  # cheap here
    dt0 = (t1 - t0) / 20
    common: dict[str, Any] = dict(
        saveat=diffrax.SaveAt(steps=True, solver_state=True), adjoint=diffrax.ForwardMode()
    )
    mlem = diffrax.diffeqsolve(
        sde_terms(LEVELS, [1.0, 1.0, 1.0], path),
        mlem_jax.MLEM(jax.random.key(2)),
        t0,
        t1,
        dt0,
        Y0,
        **common,
    )
    euler_terms = diffrax.MultiTerm(
        diffrax.ODETerm(LEVELS[-1]), diffrax.ControlTerm(diagonal_diffusion, path)
    )
    euler = diffrax.diffeqsolve(euler_terms, diffrax.Euler(), t0, t1, dt0, Y0, **common)
    finite = jnp.isfinite(jnp.asarray(euler.ts))
    assert_close(mlem.ts[finite], euler.ts[finite])
    assert_close(mlem.ys[finite], euler.ys[finite])
    # Levels 1 and 2 cancel from the estimate (p_1 = p_2 = p_3) and are skipped.
    assert mlem_jax.evaluations(mlem).tolist() == [0, 0, 20]
    # One level is Euler-Maruyama and needs no key.
    one_level = diffrax.diffeqsolve(
        sde_terms(LEVELS[-1:], None, path), mlem_jax.MLEM(), t0, t1, dt0, Y0, **common
    )
    assert_close(one_level.ys[finite], euler.ys[finite])


def test_multilevel_term_is_the_top_level_for_other_solvers():
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    args = (diffrax.Euler(), 0.0, 1.0, 0.1, Y0)
    assert_close(
        diffrax.diffeqsolve(term, *args).ys,
        diffrax.diffeqsolve(diffrax.ODETerm(LEVELS[-1]), *args).ys,
    )


def test_pytree_state_agrees_with_solve():
    levels = [
        lambda t, y, a: {"u": -y["u"], "v": -y["v"] + y["u"][0]},
        lambda t, y, a: {"u": -1.3 * y["u"], "v": -y["v"] + 1.1 * y["u"][0]},
    ]
    g = lambda t, y, a: {"u": 0.2 * jnp.ones(2), "v": 0.1 + 0.1 * y["v"]}
    y0 = {"u": jnp.array([1.0, -0.5]), "v": jnp.array([0.2, 0.4, 0.6])}
    shape = jtu.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), y0)
    path = diffrax.UnsafeBrownianPath(shape, jax.random.key(4))  # exact on this grid
    key = jax.random.key(6)
    expected = mlem_jax.solve(
        levels,
        y0,
        0.0,
        1.0,
        16,
        probabilities=[1.0, 0.4],
        key=key,
        diffusion=g,
        brownian=path,
    )
    terms = diffrax.MultiTerm(
        mlem_jax.MultilevelTerm(levels, [1.0, 0.4]),
        diffrax.ControlTerm(lambda t, y, a: jtu.tree_map(jnp.diag, g(t, y, a)), path),
    )
    sol = diffrax.diffeqsolve(
        terms,
        mlem_jax.MLEM(key),
        0.0,
        1.0,
        1 / 16,
        y0,
        adjoint=diffrax.ForwardMode(),
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    assert_close(final(sol), expected.ys)
    assert mlem_jax.evaluations(sol).tolist() == expected.evaluations.tolist()


# SaveAt, Brownian paths, adjoints, transformations.


def test_saveat_ts_steps_and_dense_agree_with_solve_on_the_grid():
    key = jax.random.key(9)
    terms, solver = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES), mlem_jax.MLEM(key)
    grid = jnp.linspace(0.0, 1.0, 17)
    expected = mlem_jax.solve(
        LEVELS, Y0, 0.0, 1.0, 16, probabilities=PROBABILITIES, key=key, saveat="steps"
    )
    subs = [diffrax.SubSaveAt(ts=grid[::4]), diffrax.SubSaveAt(t0=True, steps=True)]
    sol = diffrax.diffeqsolve(
        terms,
        solver,
        0.0,
        1.0,
        1 / 16,
        Y0,
        max_steps=32,
        saveat=diffrax.SaveAt(subs=subs, dense=True),
    )
    at_ts, at_steps = sol.ys  # pyright: ignore[reportGeneralTypeIssues]
    assert_close(at_ts, expected.ys[::4])
    assert_close(at_steps[:17], expected.ys)
    dense = sol
    assert_close(jax.vmap(dense.evaluate)(grid), expected.ys)
    # Between grid points the dense output is the linear interpolation of the steps.
    assert_close(dense.evaluate(grid[3] / 2 + grid[4] / 2), expected.ys[3:5].mean(0))


def test_unsafe_brownian_path_with_forward_mode_agrees_with_solve():
    # UnsafeBrownianPath draws W(t1) - W(t0) from the bits of (t0, t1): on a grid of
    # steps 1/16 both sides compute the same times exactly, so the same increments.
    path = diffrax.UnsafeBrownianPath(shape=(3,), key=jax.random.key(11))
    key = jax.random.key(0)
    expected = mlem_jax.solve(
        LEVELS,
        Y0,
        0.0,
        1.0,
        16,
        probabilities=PROBABILITIES,
        key=key,
        diffusion=diffusion,
        brownian=path,
    )
    # diffrax refuses RecursiveCheckpointAdjoint (the default) with this path.
    sol = diffrax.diffeqsolve(
        sde_terms(LEVELS, PROBABILITIES, path),
        mlem_jax.MLEM(key),
        0.0,
        1.0,
        1 / 16,
        Y0,
        adjoint=diffrax.ForwardMode(),
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    assert_close(final(sol), expected.ys)
    assert mlem_jax.evaluations(sol).tolist() == expected.evaluations.tolist()


def test_jit_with_traced_key_and_time_agrees_with_solve():
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)

    @jax.jit
    def run(key, t1):
        return diffrax.diffeqsolve(term, mlem_jax.MLEM(key), 0.0, t1, t1 / 16, Y0).ys

    key = jax.random.key(12)
    expected = mlem_jax.solve(LEVELS, Y0, 0.0, 1.0, 16, probabilities=PROBABILITIES, key=key)
    assert_close(run(key, 1.0)[-1], expected.ys)


def test_grad_agrees_with_grad_through_solve():
    key, path = jax.random.key(13), brownian_tree(jax.random.key(14), 0.0, 1.0, (3,))
    levels = [lambda t, y, a, s=s: s * a * drift(t, y, None) for s in (0.9, 1.0)]

    def through_diffrax(rate):
        sol = diffrax.diffeqsolve(
            sde_terms(levels, [1.0, 0.3], path),
            mlem_jax.MLEM(key),
            0.0,
            1.0,
            1 / 16,
            Y0,
            args=rate,
            max_steps=16,
        )
        return jnp.sum(sol.ys**2)

    def through_solve(rate):
        sol = mlem_jax.solve(
            levels,
            Y0,
            0.0,
            1.0,
            16,
            probabilities=[1.0, 0.3],
            key=key,
            diffusion=diffusion,
            brownian=path,
            args=rate,
        )
        return jnp.sum(sol.ys**2)

    value, grad = jax.value_and_grad(through_diffrax)(1.2)
    expected_value, expected_grad = jax.value_and_grad(through_solve)(1.2)
    assert_close(value, expected_value)
    assert_close(grad, expected_grad, rtol=1e-4)
    assert abs(float(grad)) > 1e-3


def test_vmap_with_unbatched_key_shares_draws_and_skips_the_top_level():
    calls = []

    def top(t, y, args):
        jax.debug.callback(lambda: calls.append(1))
        return -1.5 * y

    term = mlem_jax.MultilevelTerm([lambda t, y, a: -y, top], [1.0, 0.05])

    def run(y0):
        return diffrax.diffeqsolve(
            term,
            mlem_jax.MLEM(jax.random.key(3)),
            0.0,
            1.0,
            1 / 200,
            y0,
            saveat=diffrax.SaveAt(t1=True, solver_state=True),
        )

    sol = jax.jit(jax.vmap(run))(jnp.ones((8, 3)))
    jax.effects_barrier()
    counts = mlem_jax.evaluations(sol)
    chex.assert_shape(counts, (8, 2))
    assert jnp.all(counts == counts[0])  # one draw per step for the whole batch
    top_evaluations = int(counts[0, 1])
    assert 0 < top_evaluations < 40  # Binomial(200, 0.05): mean 10, sd 3.1
    # Under a select (a batched predicate) the top level would run at all 200 steps.
    assert len(calls) == top_evaluations


def test_vmap_over_keys_gives_independent_draws_per_sample():
    keys = jax.random.split(jax.random.key(15), 3)
    batched = jax.vmap(lambda key: ode_solve(key).ys)(keys)
    for index in range(3):
        assert_close(batched[index], ode_solve(keys[index]).ys)
    assert not jnp.allclose(batched[0], batched[1])


def test_continuing_from_the_saved_solver_state_continues_the_draws():
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    key = jax.random.key(16)
    save = diffrax.SaveAt(t1=True, solver_state=True)
    first = diffrax.diffeqsolve(term, mlem_jax.MLEM(key), 0.0, 0.5, 1 / 16, Y0, saveat=save)
    second = diffrax.diffeqsolve(
        term,
        mlem_jax.MLEM(key),
        0.5,
        1.0,
        1 / 16,
        first.ys[-1],
        saveat=save,
        solver_state=first.solver_state,
    )
    whole = mlem_jax.solve(LEVELS, Y0, 0.0, 1.0, 16, probabilities=PROBABILITIES, key=key)
    assert_close(final(second), whole.ys)
    assert int(second.solver_state.num_steps) == 16
    assert mlem_jax.evaluations(second).tolist() == whole.evaluations.tolist()


def test_progress_meter(capfd):
    key = jax.random.key(17)
    meter = ode_solve(key, progress_meter=diffrax.TextProgressMeter())
    jax.effects_barrier()
    assert "100.00%" in capfd.readouterr().out
    assert_close(meter.ys, ode_solve(key).ys)


# Refusals, with messages that say what to do.


def test_no_error_estimate_and_honest_orders_as_diffrax_solvers_state_them():
    path = brownian_tree(jax.random.key(1), 0.0, 1.0, (3,))
    solver = mlem_jax.MLEM(jax.random.key(0))
    for terms in (
        mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES),
        sde_terms(LEVELS, PROBABILITIES, path),
    ):
        assert solver.order(terms) is None and solver.error_order(terms) is None
        assert solver.strong_order(terms) == 0.5
        state = solver.init(terms, 0.0, 0.1, Y0, None)
        y1, y_error, _, _, result = solver.step(terms, 0.0, 0.1, Y0, None, state, False)
        assert y_error is None and result == diffrax.RESULTS.successful
        chex.assert_equal_shape([y1, Y0])


@pytest.mark.parametrize("error_order", [None, 1.0])
def test_adaptive_step_sizes_are_refused(error_order):
    path = brownian_tree(jax.random.key(1), 0.0, 1.0, (3,))
    controller = diffrax.PIDController(rtol=1e-3, atol=1e-3, error_order=error_order)
    for terms in (
        mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES),
        sde_terms(LEVELS, PROBABILITIES, path),
    ):
        with pytest.raises(RuntimeError, match="solver that does not provide error estimates"):
            diffrax.diffeqsolve(
                terms,
                mlem_jax.MLEM(jax.random.key(0)),
                0.0,
                1.0,
                0.1,
                Y0,
                stepsize_controller=controller,
            )


def test_diffrax_private_names_are_where_mlem_looks():
    """The one private import of diffrax (`mlem_jax/_diffrax_private.py`): fails, naming
    the installed diffrax version, when a diffrax release moves the names."""
    from mlem_jax._diffrax_private import wrapper_terms

    try:
        wrap_term, adjoint_term = wrapper_terms()
    except ImportError as error:
        pytest.fail(str(error))
    # (The reverse-time and BacksolveAdjoint tests check that these are what diffrax
    # wraps the terms in.)
    assert wrap_term.__name__ == "WrapTerm" and adjoint_term.__name__ == "AdjointTerm"


def test_a_moved_private_name_is_reported_with_the_diffrax_version(monkeypatch):
    import sys
    import types

    from mlem_jax._diffrax_private import wrapper_terms

    monkeypatch.setitem(sys.modules, "diffrax._term", types.ModuleType("diffrax._term"))
    with pytest.raises(ImportError, match=f"diffrax {diffrax.__version__} does not have"):
        wrapper_terms()
    with pytest.raises(ImportError, match="`mlem_jax.MLEM` needs `WrapTerm`"):
        diffrax.diffeqsolve(
            mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES),
            mlem_jax.MLEM(jax.random.key(0)),
            0.0,
            1.0,
            0.5,
            Y0,
        )


def test_terms_without_exactly_one_multilevel_term_are_refused():
    path = brownian_tree(jax.random.key(1), 0.0, 1.0, (3,))
    noise = diffrax.ControlTerm(diagonal_diffusion, path)
    multilevel = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    solver = mlem_jax.MLEM(jax.random.key(0))
    for terms in (
        diffrax.ODETerm(drift),
        diffrax.MultiTerm(diffrax.ODETerm(drift), noise),
        diffrax.MultiTerm(multilevel, multilevel),
    ):
        with pytest.raises(TypeError, match=r"exactly one `mlem_jax.MultilevelTerm`"):
            diffrax.diffeqsolve(terms, solver, 0.0, 1.0, 0.1, Y0)


def test_levels_with_mismatched_outputs_are_refused():
    term = mlem_jax.MultilevelTerm([drift, lambda t, y, a: y[:2]], [1.0, 0.5])
    with pytest.raises(ValueError, match=r"`levels\[1\]` must return"):
        diffrax.diffeqsolve(term, mlem_jax.MLEM(jax.random.key(0)), 0.0, 1.0, 0.1, Y0)


@pytest.mark.parametrize(
    "probabilities, message",
    [
        (None, "are required with 3 levels"),
        ([1.0, 0.5], r"must have shape \(3,\)"),
        ([0.9, 0.5, 0.2], r"`probabilities\[0\]` must be 1"),
        ([1.0, 0.2, 0.5], "non-increasing"),
        ([1.0, 1.5, 0.5], r"must lie in \(0, 1\]"),
    ],
)
def test_invalid_probabilities_are_refused(probabilities, message):
    with pytest.raises(ValueError, match=message):
        mlem_jax.MultilevelTerm(LEVELS, probabilities)


def test_bad_levels_coupling_and_draws_are_refused():
    with pytest.raises(TypeError, match="sequence of callables"):
        mlem_jax.MultilevelTerm(drift)  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`coupling` must be one of"):
        mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES, coupling="shared")
    with pytest.raises(ValueError, match="`draws` must be one of.*'sobol'"):
        mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES, draws="sobol")


def test_missing_key_is_refused():
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)
    with pytest.raises(ValueError, match=r"needs a PRNG key"):
        diffrax.diffeqsolve(term, mlem_jax.MLEM(), 0.0, 1.0, 0.1, Y0)


def test_backsolve_adjoint_is_refused():
    term = mlem_jax.MultilevelTerm(LEVELS, PROBABILITIES)

    def loss(y0):
        sol = diffrax.diffeqsolve(
            term,
            mlem_jax.MLEM(jax.random.key(0)),
            0.0,
            1.0,
            0.1,
            y0,
            adjoint=diffrax.BacksolveAdjoint(),
        )
        return jnp.sum(jnp.asarray(sol.ys))

    with pytest.raises(ValueError, match="BacksolveAdjoint"):
        jax.grad(loss)(Y0)


def test_evaluations_needs_the_solver_state():
    sol = ode_solve(jax.random.key(0))
    with pytest.raises(ValueError, match=r"solver_state=True"):
        mlem_jax.evaluations(sol)
