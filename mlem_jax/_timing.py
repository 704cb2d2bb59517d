"""Wall-clock timing of jitted functions, shared by calibration, benchmarks and demos."""

import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np


def median_seconds(fn: Callable, *args: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of `fn(*args)` after one warm-up (compilation) call."""
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))
