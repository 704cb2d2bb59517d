"""Wall-clock timing of jitted functions, shared by calibration, benchmarks and demos."""

import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


def _seconds(fn: Callable, args: tuple) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def median_seconds(fn: Callable, *args: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of `fn(*args)` after one warm-up (compilation) call."""
    return interleaved_median_seconds([fn], *args, repeats=repeats)[0]


def interleaved_median_seconds(
    fns: Sequence[Callable], *args: Any, repeats: int = 5
) -> list[float]:
    """Median seconds of each `fn(*args)`, timed in turns (f1, f2, f1, f2, ...).

    Taking turns exposes every function to the same load on a shared machine, so their
    ratio is steadier than that of two separate runs.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    for fn in fns:
        jax.block_until_ready(fn(*args))
    times = np.array([[_seconds(fn, args) for fn in fns] for _ in range(repeats)])
    return np.median(times, axis=0).tolist()
