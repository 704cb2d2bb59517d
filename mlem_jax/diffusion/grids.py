"""Time grids for the reverse process: num_steps + 1 strictly decreasing times from t_max
down to t_min, as NumPy float64 arrays.

Every family is the image of a uniform grid under a fixed monotone map (the identity,
Karras et al.'s rho schedule in the noise ratio sigma/alpha, or uniform log-SNR), so the
grid with N steps is contained in the grid with k N steps, as its points i k: a Brownian
path stored on a fine grid of a family serves every coarser grid of the same family.
"""

from numbers import Integral

import numpy as np

from .sde import SDE, T_MIN


GRIDS = ("uniform", "edm", "logsnr")
"""The names `time_grid` takes."""
DEFAULT_GRID = "uniform"
"""The grid `mlem-jax demo`, `sample` and `calibrate` use unless told otherwise."""


def _check_grid(num_steps: int, t_min: float, t_max: float) -> None:
    if isinstance(num_steps, bool) or not isinstance(num_steps, Integral) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    if not 0.0 < t_min < t_max:
        raise ValueError(
            f"`t_min` and `t_max` must satisfy 0 < t_min < t_max, got t_min={t_min!r}, "
            f"t_max={t_max!r}."
        )


def _fractions(num_steps: int) -> np.ndarray:
    """i / N for i = 0..N, exactly 0 and 1 at the ends."""
    return np.arange(num_steps + 1, dtype=np.float64) / num_steps


def _finish(times: np.ndarray, t_min: float, t_max: float) -> np.ndarray:
    """Pin the end points to `t_max` and `t_min` and check that the times decrease."""
    times[0], times[-1] = t_max, t_min
    if not (np.diff(times) < 0).all():
        raise ValueError(
            f"The grid of {len(times) - 1} steps on [{t_min}, {t_max}] is too fine for "
            "float64: its times do not strictly decrease."
        )
    return times


def uniform_grid(num_steps: int, t_min: float = T_MIN, t_max: float = 1.0) -> np.ndarray:
    """Equal steps: t_i = t_max + i / N (t_min - t_max).

    **Arguments:**

    - `num_steps`: N, a positive int.
    - `t_min`, `t_max`: the end points, 0 < t_min < t_max.

    **Returns:**

    The N + 1 times, float64, from `t_max` down to `t_min`.
    """
    _check_grid(num_steps, t_min, t_max)
    times = t_max + _fractions(num_steps) * (t_min - t_max)
    return _finish(times, t_min, t_max)


def edm_grid(
    sde: SDE, num_steps: int, t_min: float = T_MIN, t_max: float = 1.0, rho: float = 7.0
) -> np.ndarray:
    """Karras et al.'s (EDM) schedule: uniform in r^(1/rho), r = sigma/alpha the noise
    ratio, r_i = (r_max^(1/rho) + i / N (r_min^(1/rho) - r_max^(1/rho)))^rho, mapped back
    to times with `sde.time_of_noise_ratio`. Steps shrink towards t_min.

    **Arguments:**

    - `sde`: the forward SDE, a `VPSDE` or a `VESDE`.
    - `num_steps`: N, a positive int.
    - `t_min`, `t_max`: the end points, 0 < t_min < t_max.
    - `rho`: the schedule's exponent, > 0 (7 in EDM; 1 is uniform in r).

    **Returns:**

    The N + 1 times, float64, from `t_max` down to `t_min`.
    """
    _check_grid(num_steps, t_min, t_max)
    if not rho > 0:
        raise ValueError(f"`rho` must be > 0, got {rho!r}.")
    r_max, r_min = sde.noise_ratio(np.array([t_max, t_min], dtype=np.float64))
    top, bottom = r_max ** (1.0 / rho), r_min ** (1.0 / rho)
    ratios = (top + _fractions(num_steps) * (bottom - top)) ** rho
    return _finish(np.asarray(sde.time_of_noise_ratio(ratios)), t_min, t_max)


def log_snr_grid(sde: SDE, num_steps: int, t_min: float = T_MIN, t_max: float = 1.0) -> np.ndarray:
    """Uniform in the log signal-to-noise ratio lambda = log(alpha^2 / sigma^2) = -2 log r,
    mapped back to times with `sde.time_of_noise_ratio`.

    **Arguments:**

    - `sde`: the forward SDE, a `VPSDE` or a `VESDE`.
    - `num_steps`: N, a positive int.
    - `t_min`, `t_max`: the end points, 0 < t_min < t_max.

    **Returns:**

    The N + 1 times, float64, from `t_max` down to `t_min`.
    """
    _check_grid(num_steps, t_min, t_max)
    log_max, log_min = np.log(sde.noise_ratio(np.array([t_max, t_min], dtype=np.float64)))
    ratios = np.exp(log_max + _fractions(num_steps) * (log_min - log_max))
    return _finish(np.asarray(sde.time_of_noise_ratio(ratios)), t_min, t_max)


def time_grid(
    name: str, sde: SDE, num_steps: int, t_min: float = T_MIN, t_max: float = 1.0
) -> np.ndarray:
    """The grid of family `name`: `uniform_grid`, `edm_grid` (rho = 7) or `log_snr_grid`.

    **Arguments:**

    - `name`: one of `GRIDS`, `"uniform"`, `"edm"` or `"logsnr"`.
    - `sde`: the forward SDE (unused by `"uniform"`).
    - `num_steps`: N, a positive int.
    - `t_min`, `t_max`: the end points, 0 < t_min < t_max.

    **Returns:**

    The N + 1 times, float64, from `t_max` down to `t_min`.
    """
    if name == "uniform":
        return uniform_grid(num_steps, t_min, t_max)
    if name == "edm":
        return edm_grid(sde, num_steps, t_min, t_max)
    if name == "logsnr":
        return log_snr_grid(sde, num_steps, t_min, t_max)
    raise ValueError(f"`name` must be one of {GRIDS}, got {name!r}.")
