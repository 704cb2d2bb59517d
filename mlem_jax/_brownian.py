"""Brownian increments over the step grid: drawn from a key, or read off a path."""

from collections.abc import Callable
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from ._sampled_path import SampledBrownianPath
from ._validation import concrete_or_none, describe


BrownianIncrements = Callable[[Int[Array, ""], Any, Any], PyTree]

# The noise stream of a key: `fold_in(key, NOISE_STREAM)`. The level draws use the key
# itself (`draw_levels`: `fold_in(key, n)`), so one key may serve as both `key` and
# `brownian` without step n's draw and step n's increment coming from the same bits.
NOISE_STREAM = 0x6E6F6973  # "nois"


def _is_key(x: Any) -> bool:
    try:
        dtype = jnp.asarray(x).dtype
    except TypeError:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return jnp.shape(x) == ()
    return dtype == jnp.uint32 and jnp.shape(x) == (2,)


def key_increments(key: PRNGKeyArray, y0: PyTree) -> BrownianIncrements:
    """Increments dW_n ~ N(0, |dt|) of the shape of `y0`, from
    `fold_in(fold_in(key, NOISE_STREAM), n)`: a stream of its own, apart from the level
    draws' `fold_in(key, n)`, so the same key may be passed for both.

    Step n's increment depends only on (key, n), so it is reproducible, but runs with
    different step counts do not share a path: pass a diffrax Brownian path for that.
    """
    leaves, treedef = jtu.tree_flatten(y0)
    stream = jax.random.fold_in(key, NOISE_STREAM)

    def increments(n, t, dt):
        step_key = jax.random.fold_in(stream, n)
        keys = [step_key] if len(leaves) == 1 else jax.random.split(step_key, len(leaves))
        scale = jnp.sqrt(jnp.abs(dt))
        draws = [
            (scale * jax.random.normal(k, jnp.shape(x), jnp.result_type(x))).astype(
                jnp.result_type(x)
            )
            for k, x in zip(keys, leaves)
        ]
        return jtu.tree_unflatten(treedef, draws)

    return increments


def path_increments(
    path: diffrax.AbstractBrownianPath, y0: PyTree, ts: Array
) -> BrownianIncrements:
    """Increments dW_n = W(t_{n+1}) - W(t_n) read off a diffrax Brownian path."""
    expected = jax.eval_shape(lambda: y0)
    given = jax.eval_shape(lambda: path.evaluate(jnp.min(ts), jnp.max(ts)))
    if jtu.tree_structure(given) != jtu.tree_structure(expected) or any(
        g.shape != e.shape for g, e in zip(jtu.tree_leaves(given), jtu.tree_leaves(expected))
    ):
        raise ValueError(
            "`brownian` must be a diffrax Brownian path of the shape of `y0` "
            f"({describe(expected)}) for diagonal noise, got increments of shape "
            f"{describe(given)}."
        )
    # A sampled path's nodes are checked once for the whole grid (`on_path_nodes`), so
    # the steps read it unchecked.
    read = path.lookup if isinstance(path, SampledBrownianPath) else path.evaluate

    def increments(n, t, dt):
        # Ask for the increment forwards in time and flip its sign in reverse time:
        # paths such as UnsafeBrownianPath take sqrt(t1 - t0).
        dw = read(jnp.minimum(t, t + dt), jnp.maximum(t, t + dt))
        return jtu.tree_map(lambda w, x: (jnp.sign(dt) * w).astype(x.dtype), dw, y0)

    return increments


def brownian_increments(brownian: Any, y0: PyTree, ts: Array) -> BrownianIncrements:
    """Dispatch on `brownian`: a PRNG key or a diffrax `AbstractBrownianPath`."""
    if isinstance(brownian, diffrax.AbstractBrownianPath):
        return path_increments(brownian, y0, ts)
    if _is_key(brownian):
        return key_increments(brownian, y0)
    raise TypeError(
        "`brownian` must be a PRNG key or a diffrax `AbstractBrownianPath`, got "
        f"{type(brownian).__name__}"
        + (f" of shape {np.shape(brownian)}" if hasattr(brownian, "shape") else "")
        + "."
    )


def on_path_nodes(brownian: Any, ts: Array) -> Array:
    """The grid `ts`, checked to lie on the nodes of a `SampledBrownianPath`: a
    `ValueError` naming `ts` when the grid is concrete, else a run-time error tied to
    the grid. Other paths and keys take any grid."""
    if not isinstance(brownian, SampledBrownianPath):
        return ts
    message = (
        "`ts` must lie on the nodes of the `SampledBrownianPath` passed as `brownian` "
        "(it stores W at its nodes only): build the path on a grid that holds these "
        "times (e.g. a finer grid of the same family)"
    )
    off = brownian.off_nodes(ts)
    known = concrete_or_none(off)
    if known is None:
        return eqx.error_if(ts, jnp.any(off), message + ".")
    if known.any():
        raise ValueError(
            f"{message}; t_n is not a node at n = {np.flatnonzero(known)[:5].tolist()}."
        )
    return ts
