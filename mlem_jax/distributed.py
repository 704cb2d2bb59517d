"""Sampling over several processes (hosts) on JAX's multi-process runtime.

Every process runs the same program: `initialize` joins the job
(`jax.distributed.initialize`; on CPU with gloo collectives), `global_noise` builds the
initial noise as one global batch sharded over every device of every process (each
process computes only its own shards; with JAX's partitionable threefry the values do
not depend on how the batch is split), `sample` integrates it with the level draws and
the Brownian key replicated, and `gather` collects the samples on every process. The
gathered samples equal a single-process run with the same seeds.

The `mlem-jax distributed-sample` command is the launcher: start it once per process
with the same `--coordinator`, `--num-processes` and a distinct `--process-id`.
"""

import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from jaxtyping import Array, PRNGKeyArray

from ._family import LevelFamily
from ._sharding import BATCH, batch_mesh, batch_sharding
from .diffusion.sample import initial_noise, sample
from .diffusion.sde import Drift


_ADDRESS = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


def check_coordinator(address: str, name: str = "`coordinator_address`") -> str:
    """`address` if it reads `host:port`, else a `ValueError` naming the argument."""
    if (
        not isinstance(address, str)
        or not _ADDRESS.match(address)
        or not (0 < int(address.rsplit(":", 1)[1]) < 65536)
    ):
        raise ValueError(f"{name} must be host:port (e.g. 127.0.0.1:1234), got {address!r}.")
    return address


def initialize(
    coordinator_address: str,
    num_processes: int,
    process_id: int,
    *,
    local_device_count: int | None = None,
    timeout: int = 300,
) -> None:
    """Join a multi-process JAX job; call it before any other JAX work.

    On CPU the cross-process collectives are gloo's (`jax_cpu_collectives_implementation`,
    JAX's default in 0.10). On GPU and TPU JAX's own defaults apply.

    **Arguments:**

    - `coordinator_address`: `host:port` of process 0, the same for every process.
    - `num_processes`: the number of processes of the job.
    - `process_id`: this process, in [0, num_processes).
    - `local_device_count`: CPU devices of this process (default: JAX's, one); a
        stand-in for the accelerators of a host.
    - `timeout`: seconds to wait for the other processes to join.
    """
    check_coordinator(coordinator_address)
    for name, value, low in (("num_processes", num_processes, 1), ("timeout", timeout, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an int >= {low}, got {value!r}.")
    if (
        isinstance(process_id, bool)
        or not isinstance(process_id, int)
        or not (0 <= process_id < num_processes)
    ):
        raise ValueError(
            f"`process_id` must be an int in [0, {num_processes}), got {process_id!r}."
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if local_device_count is not None:
        if local_device_count < 1:
            raise ValueError(f"`local_device_count` must be >= 1, got {local_device_count!r}.")
        jax.config.update("jax_num_cpu_devices", local_device_count)
    jax.distributed.initialize(
        coordinator_address, num_processes, process_id, initialization_timeout=timeout
    )


def shutdown() -> None:
    """Leave the job (`jax.distributed.shutdown`)."""
    jax.distributed.shutdown()


def global_noise(
    key: PRNGKeyArray,
    count: int,
    image_shape: Sequence[int],
    mesh: Mesh | None = None,
    axis_name: str = BATCH,
) -> Array:
    """X_1 ~ N(0, I) of shape (count, *image_shape) as one batch sharded over `mesh`,
    equal to `initial_noise(key, count, image_shape)` on one device.

    Each process computes only the shards of its own devices.

    **Arguments:**

    - `key`: PRNG key of the noise, the same on every process.
    - `count`: the global batch size, divisible by the number of devices of the mesh.
    - `image_shape`: (C, H, W).
    - `mesh`: default `batch_mesh()`, every device of every process.
    - `axis_name`: the mesh axis of the batch.

    **Returns:**

    The sharded global batch.
    """
    sharding = batch_sharding(mesh, axis_name=axis_name)
    devices = sharding.mesh.shape[axis_name]
    if isinstance(count, bool) or not isinstance(count, int) or count < 1 or count % devices:
        raise ValueError(
            f"`count` must be a positive multiple of the {devices} devices of mesh axis "
            f"{axis_name!r}, got {count!r}."
        )
    return _noise_maker(count, tuple(image_shape), sharding)(key)


@functools.cache
def _noise_maker(count: int, shape: tuple[int, ...], sharding) -> Callable:
    """`initial_noise` jitted to come out sharded: built, and compiled, once per batch."""
    return jax.jit(lambda k: initial_noise(k, count, shape), out_shardings=sharding)


def gather(x: Any) -> np.ndarray:
    """The whole of a sharded array (or pytree of them) on every process, as NumPy."""
    return multihost_utils.process_allgather(x, tiled=True)


def sample_sharded(
    method: str,
    levels: Sequence[Drift] | LevelFamily,
    key: PRNGKeyArray,
    count: int,
    image_shape: Sequence[int],
    num_steps: int,
    *,
    probabilities: Any = None,
    draws: str = "random",
    switch: float | None = None,
    mesh: Mesh | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw `count` samples with the batch sharded over every device of every process.

    Single- and multi-process runs with the same `key` give the same samples: the
    noise comes from `global_noise`, the Brownian increments from a replicated key
    (partitionable threefry) and the ML-EM draws from a replicated key, so every
    device takes the same branch.

    **Arguments:**

    - `method`: `"em"`, `"mlem"` or `"tstitch"` (see `mlem_jax.diffusion.sample`).
    - `levels`: `ScoreDrift` levels, cheapest first, or a `LevelFamily` (the exits of
        a `CascadeUNet`), the same on every process.
    - `key`: PRNG key, split into the noise, Brownian and level-draw keys.
    - `count`: global batch size, divisible by the number of devices.
    - `image_shape`: (C, H, W).
    - `num_steps`: steps from t = 1 to t_min.
    - `probabilities`, `draws`, `switch`: as in `mlem_jax.diffusion.sample`.
    - `mesh`: default `batch_mesh()`.

    **Returns:**

    `(samples, evaluations)` as NumPy arrays, the samples (count, *image_shape)
    gathered on every process.
    """
    mesh = batch_mesh() if mesh is None else mesh
    noise_key, path_key, draw_key = jax.random.split(key, 3)
    x1 = global_noise(noise_key, count, image_shape, mesh)
    solution = sample(
        method,
        levels,
        x1,
        num_steps,
        key=draw_key,
        brownian=path_key,
        probabilities=probabilities,
        draws=draws,
        switch=switch,
    )
    return gather(solution.ys), gather(solution.evaluations)
