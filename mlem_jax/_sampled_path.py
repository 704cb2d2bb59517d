"""A Brownian path stored at fixed times, for strong errors across step counts."""

from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from ._validation import concrete_or_none


# A time is one of the stored ones when it lies within this fraction of the spacing
# around that node, or within a few roundings of it (grids computed in different ways).
NODE_TOLERANCE = 1e-3
ROUNDINGS = 8


class SampledBrownianPath(diffrax.AbstractBrownianPath):
    """W stored at increasing times (its nodes), read back exactly at those times.

    Every step grid whose points are among the nodes sees the same path, as with a
    `diffrax.VirtualBrownianTree`, at the cost of one lookup per step instead of a tree
    descent: e.g. equal steps with N dividing G for nodes t0 + k (t1 - t0) / G, or the
    grids of one family (`mlem_jax.diffusion.time_grid`) whose step count divides the
    nodes'. A time between nodes has no stored value: `evaluate` raises an
    `equinox.EquinoxRuntimeError` there, and `solve` refuses such a grid `ts` up front.

    Build it with `sample_brownian_path`. Pass it as `brownian=` to `solve`.

    **Arguments:**

    - `t0`, `t1`: the first and last node.
    - `values`: W at the nodes, shape (G + 1, ...).
    - `times`: the nodes, increasing, shape (G + 1,); None: G equal intervals on
        [t0, t1].
    """

    t0: float
    t1: float
    values: Float[Array, "G+1 ..."]
    times: Float[Array, " G+1"] | None
    levy_area: ClassVar[type] = diffrax.BrownianIncrement

    def __init__(
        self,
        t0: float,
        t1: float,
        values: Float[ArrayLike, "G+1 ..."],
        times: Float[ArrayLike, " G+1"] | None = None,
    ):
        self.t0, self.t1, self.values = t0, t1, jnp.asarray(values)
        # Equal intervals store no times (the path is then only arrays with a batch
        # axis, as `shard_batch` wants): the nodes are computed.
        self.times = None if times is None else jnp.asarray(times, dtype=jnp.result_type(float))
        count = self.values.shape[0]
        nodes = concrete_or_none(times)
        if self.times is not None and (
            self.times.shape != (count,)
            or (nodes is not None and (np.diff(np.asarray(nodes, np.float64)) <= 0).any())
        ):
            raise ValueError(
                f"`times` must be {count} increasing nodes, one per row of `values`; got "
                f"shape {self.times.shape}."
            )

    def node_index(self, t: Any) -> tuple[Int[Array, ""], Bool[Array, ""]]:
        """The nearest node to t, and whether t is that node (to `NODE_TOLERANCE` of
        the spacing there, or `ROUNDINGS` roundings of t)."""
        last = self.values.shape[0] - 1
        t = jnp.asarray(t)
        rounding = ROUNDINGS * jnp.finfo(jnp.result_type(t, float)).eps * jnp.abs(t)
        if self.times is None:
            spacing = (self.t1 - self.t0) / last
            index = jnp.clip(jnp.rint((t - self.t0) / spacing), 0, last).astype(jnp.int32)
            gap = jnp.abs(t - (self.t0 + index * spacing))
            return index, gap <= jnp.maximum(NODE_TOLERANCE * abs(spacing), rounding)
        right = jnp.clip(jnp.searchsorted(self.times, t), 1, last)
        left = right - 1
        nearer_left = jnp.abs(t - self.times[left]) <= jnp.abs(self.times[right] - t)
        index = jnp.where(nearer_left, left, right)
        gap = jnp.abs(t - self.times[index])
        spacing = self.times[right] - self.times[left]
        return index, gap <= jnp.maximum(NODE_TOLERANCE * spacing, rounding)

    def off_nodes(self, ts: Float[Array, " N"]) -> Bool[Array, " N"]:
        """Which of the times `ts` are not nodes of the path."""
        return ~jax.vmap(lambda t: self.node_index(t)[1])(jnp.reshape(ts, -1))

    def lookup(self, t0: Any, t1: Any) -> Array:
        """W(t1) - W(t0) at the nearest nodes, unchecked: for times known to be nodes."""
        return self.values[self.node_index(t1)[0]] - self.values[self.node_index(t0)[0]]

    def evaluate(self, t0, t1=None, left=True, use_levy=False) -> Array:
        """W(t0), or the increment W(t1) - W(t0) when `t1` is given; an error at run time
        when a time is not a node."""
        del left
        if use_levy:
            raise ValueError("SampledBrownianPath stores increments only, no Levy area.")
        index, on_node = jax.vmap(self.node_index)(jnp.stack([t0, t0 if t1 is None else t1]))
        index = eqx.error_if(
            index,
            ~jnp.all(on_node),
            "SampledBrownianPath: a time between its nodes was asked for; it stores W at "
            "its nodes only. Use step grids whose points are nodes of the path.",
        )
        value = self.values[index[0]]
        return value if t1 is None else self.values[index[1]] - value


def sample_brownian_path(
    path: diffrax.AbstractBrownianPath,
    num_intervals: int | None = None,
    *,
    times: Float[ArrayLike, " G+1"] | None = None,
) -> SampledBrownianPath:
    """Store `path` (e.g. a `VirtualBrownianTree` on [t0, t1]) at `num_intervals + 1`
    equally spaced times, or at the given increasing `times` (e.g. a fine grid of a
    family of grids, read back by every coarser grid of that family). `vmap` it over
    paths built from a batch of keys."""
    if (num_intervals is None) == (times is None):
        raise ValueError(
            "Pass exactly one of `num_intervals` (equal intervals on the path's span) or "
            f"`times`; got num_intervals={num_intervals!r} and times={times!r}."
        )
    t0, t1 = float(path.t0), float(path.t1)
    if times is None:
        nodes = jnp.linspace(t0, t1, int(num_intervals) + 1)  # pyright: ignore[reportArgumentType]
    else:
        nodes = jnp.asarray(times, dtype=jnp.result_type(float))
        t0, t1 = float(nodes[0]), float(nodes[-1])
    # `lax.map`, not `vmap`: a batched tree descent takes several times longer to compile.
    values = jax.lax.map(lambda t: path.evaluate(t0, t), nodes)
    return SampledBrownianPath(t0, t1, values, None if times is None else nodes)
