"""Wall-clock timing of jitted functions, shared by calibration, benchmarks and demos."""

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np


MIN_SAMPLE_SECONDS = 0.02


def _seconds(fn: Callable, args: tuple, number: int) -> float:
    """Mean seconds of `number` back-to-back calls, waiting for the result of each."""
    start = time.perf_counter()
    for _ in range(number):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - start) / number


def median_seconds(fn: Callable, *args: Any, repeats: int = 5) -> float:
    """Median wall-clock seconds of `fn(*args)` after one warm-up (compilation) call."""
    return interleaved_median_seconds([fn], *args, repeats=repeats)[0]


def interleaved_median_seconds(
    fns: Sequence[Callable], *args: Any, repeats: int = 5
) -> list[float]:
    """Median seconds of one call of each `fn(*args)`, timed in turns (f1, f2, f1, ...).

    Taking turns exposes every function to the same load on a shared machine, so their
    ratio is steadier than that of two separate runs. Each sample averages enough calls
    to last about 20 ms, so that one descheduling does not dominate a short call.
    """
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")
    numbers = []
    for fn in fns:
        jax.block_until_ready(fn(*args))  # compile
        numbers.append(max(1, math.ceil(MIN_SAMPLE_SECONDS / _seconds(fn, args, 1))))
    times = np.array(
        [[_seconds(fn, args, n) for fn, n in zip(fns, numbers)] for _ in range(repeats)]
    )
    return np.median(times, axis=0).tolist()
