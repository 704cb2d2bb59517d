"""`throw=True`: a non-finite drift estimate or state stops with an error that names the
step, its time and the levels evaluated there; off, nothing is checked."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax


STEPS, P = 64, jnp.array([1.0, 0.3])
KEY = jax.random.key(0)
LEVELS = [lambda t, y, a: -y, lambda t, y, a: jnp.where(t > 0.5, jnp.nan, -1.1 * y)]


def first_top_level_step_after_half(key):
    """The first step n with t_n > 0.5 that draws the top level (which returns NaN)."""
    return next(
        n for n in range(STEPS) if n / STEPS > 0.5 and bool(mlem_jax.draw_levels(key, P, step=n)[1])
    )


def expected(n, group=None):
    where = f" in group {group}" if group is not None else ""
    return (
        f"the state after step {n} (t = {n / STEPS:.6g}){where} is not finite (its "
        "drift estimate or noise increment is not); levels evaluated there: "
        "levels[0], levels[1]."
    )


def test_nan_from_a_level_names_the_step_its_time_and_the_levels():
    n = first_top_level_step_after_half(KEY)
    y0 = jnp.ones(3)
    run = lambda **kw: mlem_jax.solve(LEVELS, y0, 0.0, 1.0, STEPS, probabilities=P, key=KEY, **kw)
    assert bool(jnp.isnan(run().ys).all())  # off: a silent NaN, as before
    with pytest.raises(eqx.EquinoxRuntimeError) as error:
        run(throw=True)
    assert expected(n) in str(error.value)
    # The diffrax solver with the same key stops at the same step.
    with pytest.raises(eqx.EquinoxRuntimeError) as error:
        diffrax.diffeqsolve(
            mlem_jax.MultilevelTerm(LEVELS, P),
            mlem_jax.MLEM(KEY, throw=True),
            0.0,
            1.0,
            1 / STEPS,
            y0,
        )
    assert expected(n) in str(error.value)
    # And so does a vmapped solve under `jax.jit` (whose error type is JAX's own).
    batched = jax.jit(
        jax.vmap(
            lambda y: (
                mlem_jax.solve(LEVELS, y, 0.0, 1.0, STEPS, probabilities=P, key=KEY, throw=True).ys
            )
        )
    )
    with pytest.raises(jax.errors.JaxRuntimeError) as error:
        batched(jnp.ones((4, 3)))
    assert expected(n) in str(error.value)


def test_grouped_draws_name_the_first_group_that_failed():
    groups = 4
    steps = [first_top_level_step_after_half(k) for k in jax.random.split(KEY, groups)]
    group = int(np.argmin(steps))
    with pytest.raises(eqx.EquinoxRuntimeError) as error:
        mlem_jax.solve(
            LEVELS,
            jnp.ones((8, 3)),
            0.0,
            1.0,
            STEPS,
            probabilities=P,
            key=KEY,
            groups=groups,
            throw=True,
        )
    assert expected(steps[group], group) in str(error.value)


def test_infinite_noise_is_caught_at_its_step_too():
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"after step 17 \(t = 0\.265625\)"):
        mlem_jax.solve(
            LEVELS[:1],
            jnp.ones(3),
            0.0,
            1.0,
            STEPS,
            throw=True,
            diffusion=lambda t, y, a: jnp.where(t > 0.25, jnp.inf, 1.0),
            brownian=KEY,
        )


def test_off_compiles_no_check_and_bad_flags_are_refused():
    def jaxpr(throw):
        return str(
            jax.make_jaxpr(
                lambda y: (
                    mlem_jax.solve(
                        LEVELS, y, 0.0, 1.0, STEPS, probabilities=P, key=KEY, throw=throw
                    ).ys
                )
            )(jnp.ones(3))
        )

    assert "callback" not in jaxpr(False) and "callback" in jaxpr(True)
    with pytest.raises(TypeError, match=r"`throw` must be a bool, got str 'yes'"):
        mlem_jax.solve(LEVELS, jnp.ones(3), 0.0, 1.0, STEPS, probabilities=P, key=KEY, throw="yes")  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match=r"`throw` must be a bool"):
        mlem_jax.MLEM(KEY, throw=1)  # pyright: ignore[reportArgumentType]
