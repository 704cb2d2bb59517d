"""Time grids of the reverse process (uniform, EDM, log-SNR) and the noise-ratio maps."""

import numpy as np
import pytest

from mlem_jax.diffusion.grids import (
    GRIDS,
    edm_grid,
    log_snr_grid,
    time_grid,
    uniform_grid,
)
from mlem_jax.diffusion.sample import T_MIN
from mlem_jax.diffusion.sde import SDE, VESDE, VPSDE


SDES = [VPSDE(), VPSDE(0.5, 10.0), VESDE(), VESDE(0.002, 80.0)]
SPANS = [(T_MIN, 1.0), (0.02, 0.8)]


def log_snr(sde: SDE, t: np.ndarray) -> np.ndarray:
    return -2.0 * np.log(sde.noise_ratio(t))


@pytest.mark.parametrize("sde", SDES)
def test_time_of_noise_ratio_inverts_noise_ratio(sde):
    t = np.geomspace(1e-4, 1.0, 400)
    r = sde.noise_ratio(t)
    assert isinstance(r, np.ndarray) and r.dtype == np.float64
    assert (np.diff(r) > 0).all()
    back = sde.time_of_noise_ratio(r)
    assert isinstance(back, np.ndarray) and back.dtype == np.float64
    np.testing.assert_allclose(back, t, rtol=1e-10, atol=0)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("name", GRIDS)
@pytest.mark.parametrize("span", SPANS)
@pytest.mark.parametrize("num_steps", [1, 2, 7, 64])
def test_grids_run_from_t_max_down_to_t_min(sde, name, span, num_steps):
    t_min, t_max = span
    times = time_grid(name, sde, num_steps, t_min, t_max)
    assert isinstance(times, np.ndarray) and times.dtype == np.float64
    assert times.shape == (num_steps + 1,)
    assert times[0] == t_max and times[-1] == t_min  # exactly
    assert (np.diff(times) < 0).all()


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("name", GRIDS)
def test_coarse_grids_are_every_kth_point_of_fine_ones(sde, name):
    for num_steps in (1, 5, 16):
        coarse = time_grid(name, sde, num_steps, 0.01, 0.9)
        fine = time_grid(name, sde, 4 * num_steps, 0.01, 0.9)
        np.testing.assert_allclose(coarse, fine[::4], rtol=0, atol=1e-12)


def test_uniform_grid_has_equal_steps():
    times = uniform_grid(10, 0.1, 0.6)
    np.testing.assert_allclose(times, 0.6 - 0.05 * np.arange(11), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(uniform_grid(10), time_grid("uniform", VESDE(), 10))


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_edm_grid_follows_the_rho_schedule_in_the_noise_ratio(sde, rho):
    num_steps, t_min, t_max = 12, 0.005, 0.95
    times = edm_grid(sde, num_steps, t_min, t_max, rho)
    r_max, r_min = sde.noise_ratio(np.array([t_max, t_min]))
    i = np.arange(num_steps + 1)
    expected = (
        r_max ** (1 / rho) + i / num_steps * (r_min ** (1 / rho) - r_max ** (1 / rho))
    ) ** rho
    np.testing.assert_allclose(sde.noise_ratio(times), expected, rtol=1e-12, atol=0)
    if rho == 7.0:
        np.testing.assert_array_equal(times, time_grid("edm", sde, num_steps, t_min, t_max))


@pytest.mark.parametrize("sde", SDES)
def test_log_snr_grid_is_uniform_in_log_snr(sde):
    num_steps = 20
    times = log_snr_grid(sde, num_steps)
    lam = log_snr(sde, times)
    step = (log_snr(sde, np.array(T_MIN)) - log_snr(sde, np.array(1.0))) / num_steps
    assert step > 0  # lambda rises as t falls
    np.testing.assert_allclose(np.diff(lam), step, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(times, time_grid("logsnr", sde, num_steps))


def test_grids_reject_bad_arguments():
    sde = VPSDE()
    for bad in (0, -3, 2.5, True, "4"):
        for make in (
            lambda n: uniform_grid(n),
            lambda n: edm_grid(sde, n),
            lambda n: log_snr_grid(sde, n),
        ):
            with pytest.raises(ValueError, match="`num_steps` must be a positive int"):
                make(bad)
    for t_min, t_max in ((0.0, 1.0), (-0.1, 1.0), (0.5, 0.5), (0.6, 0.5), (np.nan, 1.0)):
        for name in GRIDS:
            with pytest.raises(ValueError, match="`t_min` and `t_max`"):
                time_grid(name, sde, 4, t_min, t_max)
    for rho in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="`rho` must be > 0"):
            edm_grid(sde, 4, rho=rho)
    with pytest.raises(ValueError, match=r"`name` must be one of .*'cosine'"):
        time_grid("cosine", sde, 4)
