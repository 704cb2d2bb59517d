"""A batch sharded over a `jax.sharding.Mesh`: JAX's own partitioner runs `solve`.

Nothing in `solve` changes: a batch placed with a `NamedSharding` on its batch axis
flows through the jitted scan, XLA partitions every level evaluation over the devices,
and the level draws (from one unbatched key) are replicated, so every device takes the
same branch of each `lax.cond` and the result stays sharded. Key-drawn noise
(`brownian=key`) uses JAX's partitionable threefry, so its values do not depend on the
sharding and the sharded run equals the single-device one.
"""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import PyTree


BATCH = "batch"


def batch_mesh(devices: Sequence[Any] | None = None, axis_name: str = BATCH) -> Mesh:
    """A one-dimensional mesh whose only axis, `axis_name`, runs over `devices`.

    **Arguments:**

    - `devices`: the devices, default `jax.devices()` (every device of every process).
    - `axis_name`: the name of the mesh axis.

    **Returns:**

    A `jax.sharding.Mesh`.
    """
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("`devices` must hold at least one device, got none.")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"`axis_name` must be a non-empty string, got {axis_name!r}.")
    return Mesh(np.asarray(devices), (axis_name,))


def batch_sharding(
    mesh: Mesh | None = None, *, axis: int = 0, axis_name: str = BATCH
) -> NamedSharding:
    """The `NamedSharding` that splits array axis `axis` over the mesh axis `axis_name`
    and replicates the other axes.

    **Arguments:**

    - `mesh`: the mesh, default `batch_mesh()`.
    - `axis`: the batch axis of the arrays (non-negative).
    - `axis_name`: the mesh axis to split it over.

    **Returns:**

    A `jax.sharding.NamedSharding`.
    """
    mesh = batch_mesh(axis_name=axis_name) if mesh is None else mesh
    if axis_name not in mesh.axis_names:
        raise ValueError(
            f"`axis_name` must be an axis of `mesh` {tuple(mesh.axis_names)}, got {axis_name!r}."
        )
    if isinstance(axis, bool) or not isinstance(axis, int) or axis < 0:
        raise ValueError(f"`axis` must be a non-negative int, got {axis!r}.")
    return NamedSharding(mesh, PartitionSpec(*([None] * axis), axis_name))


def _place(x: Any, sharding: NamedSharding, axis: int, axis_name: str) -> jax.Array:
    shape, count = np.shape(x), sharding.mesh.shape[axis_name]
    if len(shape) <= axis:
        raise ValueError(f"`x` must have a batch axis {axis}, got an array of shape {shape}.")
    if shape[axis] % count:
        raise ValueError(
            f"`x`'s batch axis {axis} must be divisible by the {count} devices of mesh "
            f"axis {axis_name!r}, got size {shape[axis]} (shape {shape})."
        )
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    # Several processes: each one holds the same global value and keeps its own shards.
    host = np.asarray(x)
    return jax.make_array_from_callback(shape, sharding, lambda index: host[index])


def shard_batch(
    x: PyTree, mesh: Mesh | None = None, *, axis: int = 0, axis_name: str = BATCH
) -> PyTree:
    """Place every array leaf of `x` on `mesh`, split along `axis`, replicated otherwise.

    Pass the result to `solve` or `mlem_jax.diffusion.sample`: the solution comes back
    sharded the same way. A diffrax-style Brownian path storing the batch on another
    axis (a `SampledBrownianPath`'s values are (G + 1, B, ...)) is sharded with
    `axis=1`. Under several processes (`mlem_jax.distributed`), every process passes
    the same global value and keeps the shards of its own devices.

    **Arguments:**

    - `x`: an array or a pytree (e.g. an equinox module) of arrays with a batch axis.
    - `mesh`: the mesh, default `batch_mesh()` over every device.
    - `axis`: the batch axis.
    - `axis_name`: the mesh axis to split it over.

    **Returns:**

    `x` with its array leaves as sharded `jax.Array`s. Raises `ValueError` when a batch
    axis is missing or its size is not divisible by the number of devices.
    """
    sharding = batch_sharding(mesh, axis=axis, axis_name=axis_name)
    return jtu.tree_map(
        lambda leaf: _place(leaf, sharding, axis, axis_name) if eqx.is_array(leaf) else leaf,
        x,
    )
