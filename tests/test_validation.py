"""Bad input raises at trace time, naming the argument, what was expected and given."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax

from conftest import linear_levels


Y0 = jnp.ones(3)
KEY = jax.random.key(0)


def solve(levels=None, *, y0=Y0, t0=0.0, t1=1.0, num_steps=10, **kwargs):
    levels = linear_levels([1.0, 1.1]) if levels is None else levels
    if isinstance(levels, list) and len(levels) > 1:
        kwargs.setdefault("probabilities", [1.0, 0.5])
        kwargs.setdefault("key", KEY)
    return mlem_jax.solve(levels, y0, t0, t1, num_steps, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(levels=[]), ValueError, r"`levels`.*at least one.*got 0"),
        (dict(levels=lambda t, y, a: y), TypeError, r"`levels`.*sequence.*function"),
        (dict(levels=[lambda t, y, a: -y, 3.0]), TypeError, r"`levels\[1\]`.*callable.*float"),
        (
            dict(levels=[lambda t, y, a: -y, lambda t, y, a: -y[:2]]),
            ValueError,
            r"`levels\[1\]`.*float32\[3\].*float32\[2\]",
        ),
        (
            dict(levels=[lambda t, y, a: -y, lambda t, y, a: (-y).astype(jnp.int32)]),
            ValueError,
            r"`levels\[1\]`.*floating dtypes.*int32",
        ),
        (dict(probabilities=None), ValueError, r"`probabilities`.*required with 2 levels"),
        (dict(probabilities=[1.0, 0.5, 0.5]), ValueError, r"`probabilities`.*\(2,\).*\(3,\)"),
        (dict(probabilities=[1.0, 0.0]), ValueError, r"`probabilities`.*\(0, 1\].*0\.0"),
        (dict(probabilities=[1.0, 1.5]), ValueError, r"`probabilities`.*\(0, 1\].*1\.5"),
        (dict(probabilities=[1.0, np.nan]), ValueError, r"`probabilities`.*NaN"),
        (dict(probabilities=[0.9, 0.5]), ValueError, r"`probabilities\[0\]` must be 1.*0\.9"),
        (
            dict(levels=linear_levels([1, 2, 3]), probabilities=[1.0, 0.2, 0.5]),
            ValueError,
            r"non-increasing.*nested.*0\.2, 0\.5",
        ),
        (dict(num_steps=0), ValueError, r"`num_steps`.*positive.*0"),
        (dict(num_steps=2.5), TypeError, r"`num_steps`.*int.*float 2\.5"),
        (dict(num_steps=True), TypeError, r"`num_steps`.*bool"),
        (dict(t0=1.0, t1=1.0), ValueError, r"`t0` and `t1` must differ.*1\.0"),
        (dict(t1=np.inf), ValueError, r"`t1` must be a finite time.*inf"),
        (dict(t0=np.nan), ValueError, r"`t0` must be a finite time.*nan"),
        (
            dict(diffusion=lambda t, y, a: jnp.ones(2), brownian=KEY),
            ValueError,
            r"`diffusion.*broadcast.*\(2,\).*\(3,\)",
        ),
        (
            dict(diffusion=lambda t, y, a: jnp.ones((2, 3)), brownian=KEY),
            ValueError,
            r"`diffusion.*\(2, 3\).*\(3,\)",
        ),
        (dict(diffusion=lambda t, y, a: 1.0), ValueError, r"`diffusion` and `brownian`"),
        (
            dict(diffusion=lambda t, y, a: 1.0, brownian="noise"),
            TypeError,
            r"`brownian`.*PRNG key.*str",
        ),
        (dict(coupling="antithetic"), ValueError, r"`coupling`.*nested.*antithetic"),
        (dict(draws="sobol"), ValueError, r"`draws`.*random.*stratified.*sobol"),
        (dict(key=None), ValueError, r"`key`.*required with 2 levels"),
        (dict(y0=jnp.arange(3)), TypeError, r"`y0`.*floating.*int32"),
        (dict(costs=[1.0]), ValueError, r"`costs`.*\(2,\).*\(1,\)"),
    ],
)
def test_bad_input_is_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        solve(**kwargs)


def test_bad_brownian_path_shape_is_refused():
    import diffrax

    path = diffrax.VirtualBrownianTree(0.0, 1.0, tol=1e-3, shape=(2,), key=KEY)
    with pytest.raises(ValueError, match=r"`brownian`.*float32\[3\].*float32\[2\]"):
        solve(diffusion=lambda t, y, a: 1.0, brownian=path)


def test_errors_are_raised_at_trace_time_inside_jit():
    @jax.jit
    def run(y0):
        return solve([lambda t, y, a: -y, lambda t, y, a: y[:1]], y0=y0).ys

    with pytest.raises(ValueError, match=r"`levels\[1\]`"):
        run(Y0)


def test_build_step_validates_too():
    with pytest.raises(ValueError, match="`coupling`"):
        mlem_jax.build_step(linear_levels([1.0]), coupling="other")
    with pytest.raises(ValueError, match="`draws`"):
        mlem_jax.build_step(linear_levels([1.0]), draws="other")
    with pytest.raises(ValueError, match="`probabilities`"):
        mlem_jax.build_step(linear_levels([1.0, 2.0]), [1.0, 2.0])


def test_one_level_needs_no_key_even_with_its_probability():
    """With one level p_1 = 1 draws nothing: `probabilities=(1.0,)` and no `key` is EM."""
    level = linear_levels([1.3])
    with_p = mlem_jax.solve(level, Y0, 0.0, 1.0, 10, probabilities=(1.0,))
    np.testing.assert_array_equal(with_p.ys, mlem_jax.solve(level, Y0, 0.0, 1.0, 10).ys)
