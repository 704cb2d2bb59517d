"""`solve`: EM and ML-EM over a fixed grid as one jit-compiled `lax.scan`."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Int, PRNGKeyArray, PyTree

from ._brownian import brownian_increments, on_path_nodes
from ._family import LevelFamily, marginal_costs
from ._grid import grid_indices, step_grid
from ._groups import check_group_sizes, check_groups
from ._schedule import checked_probabilities
from ._step import build_step, diagonal_noise, evaluated_at, init
from ._throw import error_if_failed, failed_steps
from ._validation import (
    check_coupling,
    check_diffusion_output,
    check_draws,
    check_level_outputs,
    check_levels,
    check_state,
    check_throw,
)


class Solution(eqx.Module):
    """The result of `solve`.

    - `ys`: the final state, or the states at the requested save times stacked on a
        new leading axis.
    - `ts`: the final time, or the save times.
    - `evaluations`: int array (K,): at how many steps each level was evaluated; with
        `groups` > 1, a float array (K,): the mean over the groups.
    - `cost`: `evaluations @ costs` when `costs` were given (with a `LevelFamily`, the
        sum over steps of the cost of the pass each ran), else None.
    """

    ys: PyTree
    ts: Float[Array, "..."]
    evaluations: Int[Array, " K"] | Float[Array, " K"]
    cost: Float[Array, ""] | None


def _save_indices(saveat: Any, ts: Array) -> tuple[int, ...] | None:
    """Grid indices of the save times; None saves only the final state."""
    if saveat is None:
        return None
    if isinstance(saveat, str):
        if saveat != "steps":
            raise ValueError(
                f"`saveat` must be None, 'steps' or an array of grid times, got {saveat!r}."
            )
        return tuple(range(ts.shape[0]))
    return grid_indices(saveat, ts)


@eqx.filter_jit
def _scan(
    levels,
    probabilities,
    diffusion,
    brownian,
    coupling,
    draws,
    y0,
    ts,
    key,
    args,
    save,
    groups,
    throw,
):
    # Shape checks and closures live inside the jit: they run once per trace, and
    # repeated eager calls hit the cache.
    check_state(y0)
    if groups > 1:
        check_group_sizes(y0, groups)
    check_level_outputs(levels, ts[0], y0, args)
    num_steps = ts.shape[0] - 1
    if diffusion is None:
        noise = increments = None
    else:
        check_diffusion_output(diffusion, ts[0], y0, args)
        noise = diagonal_noise(diffusion)
        increments = brownian_increments(brownian, y0, ts)
    step = build_step(
        levels, probabilities, noise=noise, coupling=coupling, draws=draws, groups=groups
    )

    # The step index is carried in the state rather than scanned over: on CPU, slicing
    # it out of an `xs` array each step makes the loop several times slower for small
    # states.
    def body(carry, _):
        state, saved, failed = carry
        n = state.step
        t = ts[n]
        dt = ts[n + 1] - t
        dw = None if increments is None else increments(n, t, dt)
        state, _ = step(key, state, t, dt, dw, args)
        if save is not None:
            saved = _store(saved, slots, n + 1, state.y)  # pyright: ignore[reportArgumentType]
        if throw:  # recorded at every step, raised once after the loop
            failed = failed_steps(state.y, n, groups, failed)
        return (state, saved, failed), None

    if save is None:
        saved = slots = None
    else:
        unique, order = np.unique(save, return_inverse=True)
        slots = np.full(num_steps + 1, -1, np.int32)
        slots[unique] = np.arange(len(unique))
        slots = jnp.asarray(slots)
        saved = jtu.tree_map(lambda x: jnp.zeros((len(unique),) + x.shape, x.dtype), y0)
        saved = _store(saved, slots, 0, y0)
    failed = jnp.full(groups, -1, jnp.int32) if throw else None
    start = (init(y0, len(levels)), saved, failed)
    (final, saved, failed), _ = lax.scan(body, start, None, length=num_steps)
    if save is None:
        out = final.y, ts[-1], final.evaluations
    else:
        ys = jtu.tree_map(lambda b: b[order], saved)  # pyright: ignore[reportPossiblyUnboundVariable]
        out = ys, ts[jnp.asarray(save)], final.evaluations
    if failed is None:  # not throw
        return out
    return error_if_failed(
        out,
        failed,
        lambda n, group: (
            ts[n],
            evaluated_at(
                key,
                probabilities.row(n, ts[n]),
                n,
                group,
                len(levels),
                probabilities.needed,
                coupling,
                draws,
                groups,
                isinstance(levels, LevelFamily),
            ),
        ),
    )


def _store(saved: PyTree, slots: Int[Array, " N+1"], n: Any, y: PyTree) -> PyTree:
    """Write y into its slot if grid point n is saved: memory O(number of save times)."""
    slot = slots[n]
    return lax.cond(
        slot >= 0,
        lambda s: jtu.tree_map(lambda b, x: lax.dynamic_update_index_in_dim(b, x, slot, 0), s, y),
        lambda s: s,
        saved,
    )


def solve(
    levels: Sequence[Callable] | LevelFamily,
    y0: PyTree,
    t0: float | Float[Array, ""] | None = None,
    t1: float | Float[Array, ""] | None = None,
    num_steps: int | None = None,
    *,
    ts: Float[ArrayLike, " N+1"] | None = None,
    probabilities: Any = None,
    diffusion: Callable | None = None,
    key: PRNGKeyArray | None = None,
    brownian: Any = None,
    args: Any = None,
    coupling: str = "nested",
    draws: str = "random",
    saveat: Any = None,
    costs: Any = None,
    groups: int = 1,
    throw: bool = False,
) -> Solution:
    """Solve dX = f(t, X) dt + g(t, X) dW with EM (one level) or ML-EM (several).

    Step n uses F_n = f^1 + sum_{l >= 2} (B_{n,l} / p_l) (f^l - f^(l-1)), with
    P(B_{n,l} = 1) = p_l (p_{n,l} under a schedule), so E[F_n | X_n] = f^K (the top
    level) at every step (on average over the shift with stratified draws). The draws
    are shared by the whole batch (or by each of `groups` groups of it), and a level that
    is not drawn is skipped with `lax.cond`, also when `solve` is `vmap`ped over `y0`
    with an unbatched `key`. Levels
    that cancel from the estimate (`needed_levels`: under the nested coupling, level l
    when p_l == p_(l+1) at every step, e.g. level 1 when p_2 = 1) are never evaluated
    when `probabilities` are concrete. The loop is a `lax.scan`, jit-compiled and
    differentiable.

    **Arguments:**

    - `levels`: callables `f(t, y, args)` (diffrax's vector-field signature), cheapest
        first, or a `LevelFamily` whose levels share one pass. One level is plain
        Euler-Maruyama.
    - `y0`: the initial state, an array or a pytree of floating arrays. Leading batch
        axes are the levels' business, or `vmap` `solve`. The state keeps its dtypes:
        each step is formed in the wider of the state's, the drift's and the time's
        dtype and rounded back (so a float32 state works under `jax_enable_x64`, with
        float64 times).
    - The time grid, in exactly one of two forms:
        - `t0`, `t1`, `num_steps`: `num_steps` (a positive Python int) equal steps from
          `t0` to `t1`; `t1 < t0` integrates backwards.
        - `ts=`: the grid t_0, ..., t_N itself, any strictly monotone 1-d array of at
          least two finite times (decreasing integrates backwards), e.g. a grid that
          puts most steps near the data end of a diffusion; step n goes from t_n to
          t_(n+1). Checked when its values are concrete.
    - `probabilities`: p_1..p_K, each in (0, 1], p_1 == 1, non-increasing under the
        nested coupling; required when K > 1. Or a schedule: an array (N, K) whose row n
        is used at step n of the grid, or a callable `t -> (K,)` evaluated at the start
        t_n of each step (see `optimal_probabilities` with per-step variances).
    - `diffusion`: `g(t, y, args)`, broadcasting against `y` leaf by leaf (diagonal or
        scalar noise, applied as g * dW). None solves an ODE.
    - `key`: PRNG key of the level draws; required when K > 1.
    - `brownian`: a PRNG key (increments N(0, |dt|) from a stream of their own,
        `fold_in(fold_in(key, NOISE_STREAM), n)`, so the same key as `key` is fine) or a
        diffrax `AbstractBrownianPath` (increments W(t_{n+1}) - W(t_n), shared across
        step counts; a `SampledBrownianPath` must hold every grid point among its
        nodes). Required exactly when `diffusion` is given.
    - `args`: passed to every level and to `diffusion`.
    - `coupling`: `"nested"` (default) or `"independent"`.
    - `draws`: `"random"` (default: independent draws at every step, the method as
        analysed) or `"stratified"` (the steps that draw a level spread evenly over
        the trajectory; see `draw_levels`).
    - `saveat`: None (final state), `"steps"` (every grid point, t_0 included) or an
        array of times on the grid.
    - `costs`: cost of one evaluation of each level (e.g. FLOPs), shape (K,); for a
        `LevelFamily`, of one pass to each level (cumulative, `level_costs(family)`), so
        that a step costs the pass it ran.
    - `groups`: G, the number of groups of the batch (the leading axis of every leaf of
        `y0`, for levels that act on a batch) that draw their levels independently, one
        group after the other at each step (`jax.random.split(key, G)[g]` for group g).
        With shared draws (G = 1, the default) every path of the batch carries the same
        randomisation error, so a mean over the batch does not average it out; with G
        groups it averages over G independent draw sequences. Not for a `vmap`ped
        `solve` (whose batch axis it cannot see): `lax.map` over groups there.
    - `throw`: stop with an `equinox.EquinoxRuntimeError` when the state is not finite
        (as it is once a drift estimate or a noise increment is not), naming the first
        step after which it was not, the step's time, the levels evaluated there and,
        with `groups`, the group. Off (default), nothing is checked; on, each step
        records whether the state is finite and the error is raised after the loop.

    **Returns:**

    A `Solution`.
    """
    levels = check_levels(levels)
    check_coupling(coupling)
    check_draws(draws)
    groups = check_groups(groups)
    throw = check_throw(throw)
    grid = step_grid(t0, t1, num_steps, ts)
    probabilities = checked_probabilities(probabilities, len(levels), coupling, grid)
    if len(levels) > 1 and key is None:
        raise ValueError(
            f"`key` (PRNG key of the level draws) is required with {len(levels)} levels, got None."
        )
    if (diffusion is None) != (brownian is None):
        raise ValueError(
            "`diffusion` and `brownian` go together: pass both for an SDE or neither for "
            f"an ODE; got diffusion={type(diffusion).__name__}, "
            f"brownian={type(brownian).__name__}."
        )
    if costs is not None:
        costs = jnp.asarray(costs, dtype=float)
        if costs.shape != (len(levels),):
            raise ValueError(
                f"`costs` must have shape ({len(levels)},), one per level, got {costs.shape}."
            )
    grid = on_path_nodes(brownian, grid)
    ys, times, evaluations = _scan(
        levels,
        probabilities,
        diffusion,
        brownian,
        coupling,
        draws,
        y0,
        grid,
        key,
        args,
        _save_indices(saveat, grid),
        groups,
        throw,
    )
    if groups > 1:
        evaluations = evaluations / groups
    if costs is not None and isinstance(levels, LevelFamily):
        costs = jnp.asarray(marginal_costs(costs), dtype=costs.dtype)
    cost = None if costs is None else evaluations @ costs
    return Solution(ys=ys, ts=times, evaluations=evaluations, cost=cost)
