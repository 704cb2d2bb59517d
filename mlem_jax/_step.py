"""The pure ML-EM step, shared by `solve`, the diffrax solver and the samplers."""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Bool, Int, PRNGKeyArray, PyTree

from ._levels import draw_levels, multilevel_drift
from ._validation import check_coupling, check_draws, check_levels, check_probabilities


class MLEMState(NamedTuple):
    """State carried from step to step.

    - `y`: the current state X_n.
    - `evaluations`: int array (K,), at how many steps so far each level was evaluated.
    - `step`: int scalar, the index n of the next step (the steps made so far).
    """

    y: PyTree
    evaluations: Int[Array, " K"]
    step: Int[Array, ""]


class MLEMInfo(NamedTuple):
    """What happened in one step.

    - `drawn`: bool (K,), which corrections f^l - f^(l-1) entered the estimate.
    - `evaluated`: bool (K,), which levels were evaluated.
    """

    drawn: Bool[Array, " K"]
    evaluated: Bool[Array, " K"]


class NoiseIncrement(Protocol):
    def __call__(self, t: Any, y: PyTree, args: Any, dw: PyTree) -> PyTree: ...


class Step(Protocol):
    def __call__(
        self, key: PRNGKeyArray, state: MLEMState, t: Any, dt: Any, dw: PyTree, args: Any
    ) -> tuple[MLEMState, MLEMInfo]: ...


def init(y0: PyTree, num_levels: int) -> MLEMState:
    """The initial state: `y0`, no evaluations and no steps yet."""
    return MLEMState(y=y0, evaluations=jnp.zeros(num_levels, jnp.int32),
                     step=jnp.zeros((), jnp.int32))


def diagonal_noise(diffusion: Callable) -> NoiseIncrement:
    """The noise increment g(t, y, args) * dW for diagonal or scalar noise."""

    def increment(t, y, args, dw):
        return jtu.tree_map(lambda g, w: (g * w).astype(w.dtype), diffusion(t, y, args), dw)

    return increment


def build_step(
    levels: Sequence[Callable],
    probabilities: Any = None,
    *,
    noise: NoiseIncrement | None = None,
    coupling: str = "nested",
    draws: str = "random",
) -> Step:
    """Build the ML-EM step `step(key, state, t, dt, dw, args) -> (state, info)`.

    X_{n+1} = X_n + dt F_n + noise(t_n, X_n, args, dW_n), with F_n the unbiased
    multilevel drift estimate (`multilevel_drift`). With one level this is plain
    Euler-Maruyama and `key` is unused.

    **Arguments:**

    - `levels`: callables `f(t, y, args)`, cheapest first.
    - `probabilities`: p_1..p_K with p_1 == 1; required when K > 1.
    - `noise`: `noise(t, y, args, dw)` returning the noise increment (e.g.
        `diagonal_noise(g)`), or None for an ODE.
    - `coupling`: `"nested"` or `"independent"` (see `draw_levels`).
    - `draws`: `"random"` or `"stratified"` (see `draw_levels`).

    **Returns:**

    A pure, jittable `step`. `key` is the trajectory's key of the level draws, the same
    at every step: step `state.step` draws from it with `draw_levels` (keep it
    unbatched under `vmap`). `dw` is the Brownian increment over [t, t + dt] (ignored
    for an ODE).
    """
    levels = check_levels(levels)
    check_coupling(coupling)
    check_draws(draws)
    p = check_probabilities(probabilities, len(levels), coupling)

    def step(key, state, t, dt, dw, args):
        if p is None:
            drift = levels[0](t, state.y, args)
            drawn = evaluated = jnp.ones(1, bool)
        else:
            drawn = draw_levels(key, p, coupling, step=state.step, draws=draws)
            drift, evaluated = multilevel_drift(
                levels, p, drawn, t, state.y, args, coupling
            )
        y = jtu.tree_map(lambda y, f: y + (dt * f).astype(y.dtype), state.y, drift)
        if noise is not None:
            y = jtu.tree_map(jnp.add, y, noise(t, state.y, args, dw))
        evaluations = state.evaluations + evaluated.astype(jnp.int32)
        return MLEMState(y, evaluations, state.step + 1), MLEMInfo(drawn, evaluated)

    return step
