"""The pure ML-EM step, shared by `solve`, the diffrax solver and the samplers."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree

from ._family import LevelFamily
from ._groups import check_group_sizes, check_groups, group_keys, grouped
from ._levels import (
    draw_levels,
    family_drift,
    levels_to_evaluate,
    multilevel_drift,
)
from ._schedule import checked_probabilities
from ._validation import check_coupling, check_draws, check_levels


class MLEMState(NamedTuple):
    """State carried from step to step.

    - `y`: the current state X_n.
    - `evaluations`: int array (K,), at how many steps so far each level was evaluated
        (with grouped draws, on how many (step, group) pairs).
    - `step`: int scalar, the index n of the next step (the steps made so far).
    """

    y: PyTree
    evaluations: Int[Array, " K"]
    step: Int[Array, ""]


class MLEMInfo(NamedTuple):
    """What happened in one step.

    - `drawn`: bool (K,), which corrections f^l - f^(l-1) entered the estimate; (G, K),
        one row per group, with grouped draws.
    - `evaluated`: bool (K,) or (G, K), which levels were evaluated.
    """

    drawn: Bool[Array, " K"]
    evaluated: Bool[Array, " K"]


class NoiseIncrement(Protocol):
    def __call__(self, t: Any, y: PyTree, args: Any, dw: PyTree) -> PyTree: ...


class Step(Protocol):
    def __call__(
        self, key: PRNGKeyArray | None, state: MLEMState, t: Any, dt: Any, dw: PyTree, args: Any
    ) -> tuple[MLEMState, MLEMInfo]: ...


def init(y0: PyTree, num_levels: int) -> MLEMState:
    """The initial state: `y0`, no evaluations and no steps yet."""
    return MLEMState(
        y=y0, evaluations=jnp.zeros(num_levels, jnp.int32), step=jnp.zeros((), jnp.int32)
    )


def evaluated_at(
    key: PRNGKeyArray,
    probabilities: Any,
    step: Any,
    group: Any,
    num_levels: int,
    needed: Sequence[int],
    coupling: str,
    draws: str,
    groups: int,
    shared: bool = False,
) -> Bool[Array, " K"]:
    """The levels that step `step` evaluates (for `group` of `groups`, whose key is
    `jax.random.split(key, groups)[group]`), from its draws alone: what `build_step`'s
    step reports in `MLEMInfo.evaluated`, without evaluating any level. `shared`: the
    levels are a `LevelFamily`."""
    if probabilities is None:
        return jnp.ones(1, bool)
    index = np.array(needed)
    if groups > 1 and len(needed) > 1:
        key = group_keys(key, groups)[group]
    drawn = draw_levels(key, probabilities, coupling, step=step, draws=draws)[..., index]
    evaluated = drawn if coupling == "nested" else levels_to_evaluate(drawn)
    evaluated = jnp.zeros(num_levels, bool).at[index].set(evaluated)
    if shared:  # one pass of a `LevelFamily` goes through every level below its depth
        deepest = jnp.max(jnp.where(evaluated, jnp.arange(num_levels), 0))
        evaluated = jnp.arange(num_levels) <= deepest
    return evaluated


def diagonal_noise(diffusion: Callable) -> NoiseIncrement:
    """The noise increment g(t, y, args) * dW for diagonal or scalar noise."""

    def increment(t, y, args, dw):
        return jtu.tree_map(lambda g, w: (g * w).astype(w.dtype), diffusion(t, y, args), dw)

    return increment


def build_step(
    levels: Sequence[Callable] | LevelFamily,
    probabilities: Any = None,
    *,
    noise: NoiseIncrement | None = None,
    coupling: str = "nested",
    draws: str = "random",
    needed: Sequence[int] | None = None,
    groups: int = 1,
) -> Step:
    """Build the ML-EM step `step(key, state, t, dt, dw, args) -> (state, info)`.

    X_{n+1} = X_n + dt F_n + noise(t_n, X_n, args, dW_n), with F_n the unbiased
    multilevel drift estimate (`multilevel_drift`). With one level this is plain
    Euler-Maruyama and `key` is unused.

    **Arguments:**

    - `levels`: callables `f(t, y, args)`, cheapest first, or a `LevelFamily` (a step
        then runs one pass of the family, to the deepest level it draws).
    - `probabilities`: p_1..p_K with p_1 == 1, required when K > 1; or a schedule: an
        array (N, K) whose row `state.step` is used at each step, or a callable
        `t -> (K,)` evaluated at the step's start (checked at run time). Checked once,
        here, into a `Probabilities` (one passed in is taken as it is).
    - `noise`: `noise(t, y, args, dw)` returning the noise increment (e.g.
        `diagonal_noise(g)`), or None for an ODE.
    - `coupling`: `"nested"` or `"independent"` (see `draw_levels`).
    - `draws`: `"random"` or `"stratified"` (see `draw_levels`).
    - `needed`: the 0-based indices of the levels to evaluate, `needed_levels(p)`:
        levels that cancel from the estimate are skipped. None works them out from
        `probabilities` when they are concrete (every level when they are traced, as
        inside a jit: compute `needed_levels` outside it and pass it here).
    - `groups`: G, the number of groups of the state's leading (batch) axis that draw
        their levels independently (`jax.random.split(key, G)[g]` for group g), one
        group after the other. 1 (default): the whole batch shares one draw per step.

    **Returns:**

    A pure, jittable `step`. `key` is the trajectory's key of the level draws, the same
    at every step: step `state.step` draws from it with `draw_levels` (keep it
    unbatched under `vmap`). `dw` is the Brownian increment over [t, t + dt] (ignored
    for an ODE). With G groups, `info.drawn` and `info.evaluated` are (G, K) and
    `state.evaluations` counts evaluations on a group: G per step for a level every
    group evaluates.
    """
    levels = check_levels(levels)
    check_coupling(coupling)
    check_draws(draws)
    groups = check_groups(groups)
    probabilities = checked_probabilities(probabilities, len(levels), coupling, needed=needed)
    chosen = probabilities.needed
    used = [levels[i] for i in chosen]
    index = np.array(chosen)

    def estimate(key, n, t, y, args, p: Array):
        drawn = draw_levels(key, p, coupling, step=n, draws=draws)
        if isinstance(levels, LevelFamily):
            drift, evaluated = family_drift(levels, chosen, p, drawn, t, y, args, coupling)
            return drift, drawn, evaluated
        drift, evaluated_used = multilevel_drift(
            used, p[..., index], drawn[..., index], t, y, args, coupling
        )
        return drift, drawn, jnp.zeros(len(levels), bool).at[index].set(evaluated_used)

    def step(key, state, t, dt, dw, args):
        if groups > 1:
            check_group_sizes(state.y, groups)
        p = probabilities.row(state.step, t)
        if p is None or len(levels) == 1:  # one level: p_1 = 1, nothing to draw
            drift = levels[-1](t, state.y, args)
            drawn = evaluated = jnp.ones(1, bool)
        else:
            drawing: Array = p
            drift, drawn, evaluated = grouped(
                lambda key, y: estimate(key, state.step, t, y, args, drawing),
                key,
                state.y,
                groups if len(used) > 1 else 1,  # one level: nothing is drawn
            )
        # In the drift's dtype (at least float32), rounded to the state's once.
        y = jtu.tree_map(lambda y, f: (y + dt * f).astype(y.dtype), state.y, drift)
        if noise is not None:
            y = jtu.tree_map(jnp.add, y, noise(t, state.y, args, dw))
        counts = evaluated.sum(axis=0) if evaluated.ndim == 2 else groups * evaluated
        evaluations = state.evaluations + counts.astype(jnp.int32)
        return MLEMState(y, evaluations, state.step + 1), MLEMInfo(drawn, evaluated)

    return step
