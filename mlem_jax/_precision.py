"""Levels evaluated in a lower precision (bfloat16, TPU's native type) inside a float32
solve: the state and the accumulated corrections stay in the state's dtype."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import PyTree


def cast_floating(tree: PyTree, dtype: Any) -> PyTree:
    """`tree` with every floating array leaf (and Python float) cast to `dtype`; other
    leaves (ints, bools, keys, functions, static fields) are left alone."""

    def cast(leaf):
        if isinstance(leaf, float) or (
            eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating)
        ):
            return jnp.asarray(leaf, dtype)
        return leaf

    return jtu.tree_map(cast, tree)


class InPrecision(eqx.Module):
    """A level `f(t, y, args)` that computes in `dtype` and answers in y's dtype.

    y, the floating leaves of `args` and the level's own floating parameters (the array
    leaves of an equinox module, cast once here) are in `dtype`, so the level's network
    runs in it. t is passed as given (float32): rounding it to bfloat16 (2^-9 relative,
    half a step of a 256-step grid near t = 1) would add a time error that has nothing
    to do with the network's precision, and where the level combines t with the
    network's output (e.g. the VP-SDE's beta(t) and sigma(t)) that part runs in float32.
    The output is cast back leaf by leaf to the dtype of y, so `solve`'s state, the
    corrections (f^l - f^(l-1)) / p_l and their sum are float32, formed from outputs
    that carry the level's bfloat16 rounding. Other attributes are read from the wrapped
    level (a `ScoreDrift`'s `kind` and `sde`), so it drops into
    `mlem_jax.diffusion.sample`. Build it with `in_precision`.
    """

    level: Callable
    dtype: Any = eqx.field(static=True)

    def __call__(self, t: Any, y: PyTree, args: Any) -> PyTree:
        out = self.level(t, cast_floating(y, self.dtype), cast_floating(args, self.dtype))
        return jtu.tree_map(lambda o, x: jnp.asarray(o).astype(jnp.result_type(x)), out, y)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "level":
            raise AttributeError(name)
        return getattr(self.level, name)


def in_precision(level: Callable, dtype: Any = jnp.bfloat16) -> InPrecision:
    """Wrap `level` so that it computes in `dtype` (default bfloat16).

    **Arguments:**

    - `level`: a callable `f(t, y, args)`; if it is an equinox module (e.g. a
        `ScoreDrift` holding a UNet), its floating parameters are stored in `dtype`.
        Arrays captured by a plain closure are not cast (and promote the computation
        back to their dtype): make such a level an equinox module.
    - `dtype`: a floating dtype, e.g. `jnp.bfloat16` or `jnp.float16`.

    **Returns:**

    An `InPrecision` level with the same output structure as `level` and the dtype of
    y. Use it for some or all of `solve`'s levels, e.g.
    `[in_precision(f) for f in levels]`.
    """
    if not callable(level):
        raise TypeError(f"`level` must be a callable f(t, y, args), got {type(level).__name__}.")
    try:
        floating = jnp.issubdtype(jnp.dtype(dtype), jnp.floating)
    except TypeError:
        floating = False
    if not floating:
        raise ValueError(f"`dtype` must be a floating dtype such as bfloat16, got {dtype!r}.")
    dtype = jnp.dtype(dtype)
    return InPrecision(cast_floating(level, dtype), dtype)
