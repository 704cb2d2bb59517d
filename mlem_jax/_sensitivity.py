"""How much an error made at step n still weighs at the final time."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._brownian import brownian_increments, on_path_nodes
from ._grid import step_grid
from ._step import build_step, diagonal_noise, init
from ._validation import check_state


def _sum_squares(tree: PyTree) -> Any:
    return sum(
        jnp.sum(jnp.square(leaf), axis=tuple(range(1, leaf.ndim))) for leaf in jtu.tree_leaves(tree)
    )


@eqx.filter_jit
def _gains(drift, diffusion, brownian, y0, ts, args, key):
    noise = None if diffusion is None else diagonal_noise(diffusion)
    increments = None if diffusion is None else brownian_increments(brownian, y0, ts)
    step = build_step([drift], noise=noise)
    num_steps = ts.shape[0] - 1

    @jax.checkpoint  # keep one state per step for the backward pass, not activations
    def body(state, error):
        n = state.step
        t = ts[n]
        dt = ts[n + 1] - t
        dw = None if increments is None else increments(n, t, dt)
        state, _ = step(None, state, t, dt, dw, args)
        return state._replace(y=jtu.tree_map(jnp.add, state.y, error)), None

    def final(errors):
        state, _ = lax.scan(body, init(y0, 1), errors)
        return state.y

    errors = jtu.tree_map(lambda x: jnp.zeros((num_steps,) + x.shape, x.dtype), y0)
    y1, pullback = jax.vjp(final, errors)
    leaves, treedef = jtu.tree_flatten(y1)
    keys = jax.random.split(key, len(leaves))
    probe = treedef.unflatten(
        [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )
    (cotangents,) = pullback(probe)
    return _sum_squares(cotangents) / _sum_squares(jtu.tree_map(lambda x: x[None], probe))


def error_sensitivity(
    drift: Callable,
    y0: PyTree,
    t0: float | None = None,
    t1: float | None = None,
    num_steps: int | None = None,
    *,
    ts: Any = None,
    diffusion: Callable | None = None,
    brownian: Any = None,
    args: Any = None,
    key: PRNGKeyArray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """w_n = E||G_n e||^2 / E||e||^2: how much an error e added to X_{n+1} (e.g. step n's
    randomisation error h (F_n - f(t_n, X_n))) is amplified by the final time, along the
    Euler-Maruyama run of `drift`. G_n = dX_N / dX_{n+1}, so the last step has w = 1.

    Weighting the per-step variances by w (`optimal_probabilities(costs,
    w[:, None] * v)`) minimises the final-time error rather than the sum of the errors
    made along the way: where the dynamics contract, a draw matters less.

    **Arguments:**

    - `drift`: the drift `f(t, y, args)` (the top level); `diffusion`, `brownian`,
        `args`, `y0` and the grid (`t0`, `t1`, `num_steps`, or `ts`): as in `solve`.
    - `key`: PRNG key of the random probe u (Hutchinson: E||G^T u||^2 = tr(G G^T) for
        u ~ N(0, I), estimated with one probe over all of `y0`'s entries).

    **Returns:**

    `(ts, w)`: the start time of each step, shape (N,), and w_n, shape (N,).
    """
    grid = step_grid(t0, t1, num_steps, ts)
    check_state(y0)
    if (diffusion is None) != (brownian is None):
        raise ValueError(
            "`diffusion` and `brownian` go together: pass both for an SDE or neither for an ODE."
        )
    key = jax.random.key(0) if key is None else key
    gains = _gains(drift, diffusion, brownian, y0, on_path_nodes(brownian, grid), args, key)
    return np.asarray(grid[:-1]), np.asarray(gains, dtype=np.float64)
