"""The multilevel drift estimate: level draws, couplings and the unbiased sum."""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree

from ._family import LevelFamily
from ._validation import concrete_or_none


def draw_levels(
    key: PRNGKeyArray,
    probabilities: Float[Array, " K"],
    coupling: str = "nested",
    *,
    step: Int[ArrayLike, ""] = 0,
    draws: str = "random",
) -> Bool[Array, " K"]:
    """Draw which corrections f^l - f^(l-1) enter the drift estimate of one step.

    **Arguments:**

    - `key`: the trajectory's PRNG key of the level draws, the same at every step; keep
        it unbatched under `vmap` so the whole batch takes the same branch and skipped
        levels are really skipped. (Key-drawn Brownian increments come from another
        stream of their key, so it may also be `solve`'s `brownian`.)
    - `probabilities`: p_1..p_K with p_1 == 1.
    - `coupling`: `"nested"` compares one uniform U with every p_l, B_l = 1{U < p_l}, so
        the drawn levels are always 1..L; `"independent"` uses one uniform per level.
    - `step`: the index n of the step in the trajectory.
    - `draws`: how the uniforms of successive steps relate. `"random"`: independent,
        U_n from `jax.random.fold_in(key, n)` (the method as analysed: the estimate is
        unbiased given the state). `"stratified"`: U_n = (S + vdc(n)) mod 1, the van der
        Corput sequence (`van_der_corput`) shifted by one uniform S drawn from `key`.
        Every U_n is still uniform, so P(B_l) = p_l at every step, but the steps that
        draw level l are spread evenly: among any 2^k consecutive steps starting at a
        multiple of 2^k, level l is drawn floor(2^k p_l) or ceil(2^k p_l) times (for
        a constant p_l). The randomisation errors of neighbouring steps then partly
        cancel instead of adding up; the price is that a step's draw is no longer
        independent of the state, so the estimate is unbiased only on average over S.

    **Returns:**

    A boolean array B of shape (K,) with P(B_l) = p_l; B_1 is always True.
    """
    shape = () if coupling == "nested" else probabilities.shape
    if draws == "random":
        uniform = jax.random.uniform(
            jax.random.fold_in(key, step), shape, dtype=probabilities.dtype
        )
    else:
        shift = jax.random.uniform(key, shape, dtype=probabilities.dtype)
        uniform = (shift + van_der_corput(step).astype(probabilities.dtype)) % 1
    return uniform < probabilities


def van_der_corput(n: Int[ArrayLike, ""], bits: int = 31) -> Float[Array, ""]:
    """The n-th point of the base-2 van der Corput sequence: the binary digits of n
    mirrored about the point (6 = 110b -> 0.011b = 0.375). Its first 2^k points are
    the multiples of 2^-k, each once, so the sequence fills [0, 1) evenly from the
    start."""
    digits = (jnp.asarray(n, jnp.uint32) >> jnp.arange(bits, dtype=jnp.uint32)) & 1
    return jnp.sum(digits * 0.5 ** jnp.arange(1, bits + 1, dtype=jnp.float32))


def levels_to_evaluate(drawn: Bool[Array, " K"]) -> Bool[Array, " K"]:
    """Level l is evaluated when correction l or correction l+1 is drawn.

    Under the nested coupling this is `drawn` itself.
    """
    return drawn.at[:-1].set(drawn[:-1] | drawn[1:])


def needed_levels(probabilities: Any, coupling: str = "nested") -> tuple[int, ...]:
    """The indices of the levels that the drift estimate depends on.

    Under the nested coupling one uniform draws every level, so levels l and l + 1
    with p_l == p_(l+1) (in every row of a schedule) are always drawn together and
    f^l cancels from the estimate: (f^l - f^(l-1)) / p + (f^(l+1) - f^l) / p =
    (f^(l+1) - f^(l-1)) / p, with f^0 = 0. Leaving such levels out changes no draw and,
    up to rounding, no estimate; e.g. p = (1, 1, 0.5, 0.25) needs levels 2, 3 and 4
    only, and every p_l = 1 needs the top level alone (EM). Under the independent
    coupling, and for traced `probabilities`, every level is needed.

    **Returns:**

    Sorted 0-based indices, the top level's always among them.
    """
    values = concrete_or_none(probabilities)
    if values is None or coupling != "nested":
        return tuple(range(np.shape(probabilities)[-1]))
    rows = values.reshape(-1, values.shape[-1])
    redundant = (rows[:, :-1] == rows[:, 1:]).all(axis=0)
    return tuple(int(i) for i in np.flatnonzero(~np.append(redundant, False)))


def _zeros_like(tree: PyTree) -> PyTree:
    return jtu.tree_map(jnp.zeros_like, tree)


def _widened(tree: PyTree, state: PyTree) -> PyTree:
    """A level's output in the state's dtypes, widened to at least float32, where the
    corrections are formed: in bfloat16, p_l itself would round (0.3 -> 0.30078) and
    bias every correction by as much. (A float64 output for a float32 state, as under
    `jax_enable_x64` with float64 times, is rounded to float32 here.)"""
    return jtu.tree_map(
        lambda x, y: x.astype(jnp.promote_types(jnp.result_type(y), jnp.float32)), tree, state
    )


def multilevel_drift(
    levels: Sequence[Callable],
    probabilities: Float[Array, " K"],
    drawn: Bool[Array, " K"],
    t: Any,
    y: PyTree,
    args: Any,
    coupling: str = "nested",
) -> tuple[PyTree, Bool[Array, " K"]]:
    """The unbiased drift estimate of one step.

    F = f^1 + sum_{l >= 2} (B_l / p_l) (f^l - f^(l-1)), so E[F] = f^K. Each level is
    evaluated inside `lax.cond` on an unbatched predicate, so a level that is not needed
    costs nothing, also under `vmap` over `y`. Under the nested coupling the conds are
    nested (level l + 1 is only considered once level l was drawn), so a step that draws
    L levels pays for L + 1 conds, not K. The corrections and their sum are formed in at
    least float32, so for a bfloat16 or float16 state E[F] = f^K to float32 accuracy.

    **Returns:**

    `(F, evaluated)`, where `evaluated[l]` says whether f^l was computed. F has the
    structure of `y`, in y's dtypes promoted to at least float32.
    """
    first = _widened(levels[0](t, y, args), y)
    if coupling == "nested":
        corrections = _nested_corrections(levels, probabilities, drawn, t, y, args, 1, first)
        return jtu.tree_map(jnp.add, first, corrections), drawn
    return _independent_drift(levels, probabilities, drawn, t, y, args, first)


def _scaled_difference(upper: PyTree, lower: PyTree, probability: Array) -> PyTree:
    return jtu.tree_map(lambda u, lo: (u - lo) / probability.astype(u.dtype), upper, lower)


def _nested_corrections(levels, probabilities, drawn, t, y, args, index, lower):
    """sum_{l >= index} (f^l - f^(l-1)) / p_l over the drawn levels, given f^(index-1)."""
    if index == len(levels):
        return _zeros_like(lower)

    def evaluate():
        upper = _widened(levels[index](t, y, args), y)
        rest = _nested_corrections(levels, probabilities, drawn, t, y, args, index + 1, upper)
        own = _scaled_difference(upper, lower, probabilities[index])
        return jtu.tree_map(jnp.add, own, rest)

    return lax.cond(drawn[index], evaluate, lambda: _zeros_like(lower))


def _independent_drift(levels, probabilities, drawn, t, y, args, first):
    """Each correction drawn on its own: level l runs if correction l or l + 1 is."""
    evaluated = levels_to_evaluate(drawn)
    values = [first]
    for index in range(1, len(levels)):
        values.append(
            lax.cond(
                evaluated[index],
                lambda lv=levels[index]: _widened(lv(t, y, args), y),
                lambda: _zeros_like(first),
            )
        )
    drift = first
    for index in range(1, len(levels)):
        correction = _scaled_difference(values[index], values[index - 1], probabilities[index])
        drift = jtu.tree_map(
            lambda total, c, b=drawn[index]: total + jnp.where(b, c, 0).astype(total.dtype),
            drift,
            correction,
        )
    return drift, evaluated


def family_drift(
    family: LevelFamily,
    needed: tuple[int, ...],
    probabilities: Float[Array, " K"],
    drawn: Bool[Array, " K"],
    t: Any,
    y: PyTree,
    args: Any,
    coupling: str,
) -> tuple[PyTree, Bool[Array, " K"]]:
    """The multilevel drift estimate from one pass of `family`, as deep as the draws ask.

    `lax.switch` on an unbatched index picks the pass, so under `vmap` a step still runs
    one pass of the depth drawn. Nested coupling: the drawn levels among `needed` form
    a prefix, and the estimate sums the corrections over it (levels left out of `needed`
    cancel, see `needed_levels`). Independent coupling: the pass goes to the deepest
    drawn level and each drawn correction enters on its own.

    **Returns:**

    `(F, evaluated)`, `evaluated[l]` saying whether the pass went through level l.
    """
    num_levels = len(family)
    if coupling == "nested":
        depths = [level + 1 for level in needed]
        choice = jnp.sum(drawn[np.asarray(needed)]) - 1

        def estimate(depth):
            outputs = [_widened(o, y) for o in family.evaluate(t, y, args, depth)]
            used = [level for level in needed if level < depth]
            total = outputs[used[0]]
            for lower, upper in zip(used, used[1:]):
                correction = _scaled_difference(
                    outputs[upper], outputs[lower], probabilities[upper]
                )
                total = jtu.tree_map(jnp.add, total, correction)
            return total
    else:
        depths = list(range(1, num_levels + 1))
        choice = jnp.max(jnp.where(drawn, jnp.arange(num_levels), 0))

        def estimate(depth):
            outputs = [_widened(o, y) for o in family.evaluate(t, y, args, depth)]
            total = outputs[0]
            for level in range(1, depth):
                correction = _scaled_difference(
                    outputs[level], outputs[level - 1], probabilities[level]
                )
                total = jtu.tree_map(
                    lambda s, c, b=drawn[level]: s + jnp.where(b, c, 0).astype(s.dtype),
                    total,
                    correction,
                )
            return total

    branches = [
        lambda depth=depth: (estimate(depth), jnp.arange(num_levels) < depth) for depth in depths
    ]
    return lax.switch(choice, branches)
