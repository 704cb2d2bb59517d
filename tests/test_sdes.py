"""The VP- and VE-SDEs, `reverse_drift` and `ScoreDrift`'s three predictions, checked on
Gaussian data N(0, s^2 I), whose noised score -x / (alpha^2 s^2 + sigma^2) is exact."""

from math import log

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax.diffusion.sde import SDE, VESDE, VPSDE, ScoreDrift, reverse_drift


SCALE, DIM, COUNT = 0.7, 4, 4000
SDES = [VPSDE(), VESDE()]


class ExactNetwork(eqx.Module):
    """The exact noise, score or x0 of one sample x at t for data N(0, SCALE^2 I)."""

    sde: SDE
    prediction: str = eqx.field(static=True)

    def __call__(self, t, x):
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        variance = alpha**2 * SCALE**2 + sigma**2
        if self.prediction == "noise":
            return sigma * x / variance
        if self.prediction == "score":
            return -x / variance
        return alpha * SCALE**2 * x / variance  # E[X_0 | X_t = x]


def variance_at(sde: VPSDE | VESDE, t):
    """alpha(t)^2 s^2 + sigma(t)^2 in float64, from the SDEs' formulas written out."""
    if isinstance(sde, VPSDE):
        alpha2 = np.exp(-(sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)))
        return alpha2 * SCALE**2 + 1.0 - alpha2
    noise = sde.sigma_min**2 * ((sde.sigma_max / sde.sigma_min) ** (2 * t) - 1.0)
    return SCALE**2 + noise


def diffusion_squared_at(sde: VPSDE | VESDE, t):
    """g(t)^2 in float64: beta(t), or 2 log(sigma_max / sigma_min) s(t)^2."""
    if isinstance(sde, VPSDE):
        return sde.beta_min + t * (sde.beta_max - sde.beta_min)
    ratio = sde.sigma_max / sde.sigma_min
    return 2.0 * log(ratio) * (sde.sigma_min * ratio**t) ** 2


def ode_rate(sde: VPSDE | VESDE, t):
    """a(t) with the probability-flow drift a(t) y of the exact score -y / v(t)."""
    forward = -0.5 * diffusion_squared_at(sde, t) if isinstance(sde, VPSDE) else 0.0
    return forward + 0.5 * diffusion_squared_at(sde, t) / variance_at(sde, t)


def test_marginals_and_noise_ratios():
    t = np.linspace(0.01, 1.0, 50)
    vp, ve = VPSDE(), VESDE()
    np.testing.assert_allclose(vp.sigma(t) / vp.alpha(t), vp.noise_ratio(t), rtol=1e-5)
    np.testing.assert_allclose(vp.diffusion_squared(t), vp.beta(t), rtol=0)
    assert vp.prior_std == 1.0
    # VE: alpha = 1, sigma(t)^2 = s(t)^2 - sigma_min^2, d sigma^2 / dt = g^2, g = sqrt(g^2).
    np.testing.assert_array_equal(ve.alpha(jnp.asarray(t)), 1.0)
    s = ve.sigma_min * (ve.sigma_max / ve.sigma_min) ** t
    np.testing.assert_allclose(ve.noise_ratio(t) ** 2, s**2 - ve.sigma_min**2, rtol=1e-12)
    np.testing.assert_allclose(ve.sigma(t), ve.noise_ratio(t), rtol=1e-5)
    h = 1e-6
    slope = (ve.noise_ratio(t + h) ** 2 - ve.noise_ratio(t - h) ** 2) / (2 * h)
    np.testing.assert_allclose(slope, ve.diffusion_squared(t), rtol=1e-7)
    np.testing.assert_allclose(ve.diffusion(t, None, None) ** 2, ve.diffusion_squared(t), rtol=1e-5)
    assert ve.prior_std == pytest.approx(float(ve.noise_ratio(np.array(1.0))), rel=1e-14)
    np.testing.assert_array_equal(ve.drift(0.3, np.ones(3)), 0.0)
    with pytest.raises(ValueError, match="`sigma_min` and `sigma_max`"):
        VESDE(1.0, 0.5)


@pytest.mark.parametrize("sde", SDES)
@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_noise_score_and_x0_predictions_give_the_same_drift(sde, kind):
    # float64: the x0 route (alpha x0 - x) / sigma^2 cancels near t_min, by about
    # s^2 / sigma(t_min)^2 (~ 5e3 on the VP-SDE, 3e5 on the VE-SDE): in float32 that alone
    # exceeds the 1e-5 tolerance.
    with jax.enable_x64(True):
        y = jax.random.normal(jax.random.key(0), (16, DIM), jnp.float64)
        drifts = {
            p: ScoreDrift(ExactNetwork(sde, p), sde, kind, prediction=p)
            for p in ("noise", "score", "x0")
        }
        weight = 1.0 if kind == "sde" else 0.5
        for t in (1e-3, 0.05, 0.3, 0.7, 1.0):
            forward = -0.5 * diffusion_squared_at(sde, t) if isinstance(sde, VPSDE) else 0.0
            score = -np.asarray(y) / variance_at(sde, t)
            expected = forward * np.asarray(y) - weight * diffusion_squared_at(sde, t) * score
            for prediction, drift in drifts.items():
                out = drift(jnp.asarray(t), y, None)
                assert out.dtype == jnp.float64
                np.testing.assert_allclose(out, expected, rtol=1e-5, atol=0, err_msg=prediction)


def test_forward_ve_sde_reaches_its_marginal_variance():
    sde, num_steps = VESDE(), 512
    x0 = jnp.zeros((COUNT, DIM))
    zero = lambda t, y, args: jnp.zeros_like(y)
    run = mlem_jax.solve(
        [zero], x0, 0.0, 1.0, num_steps, diffusion=sde.diffusion, brownian=jax.random.key(1)
    )
    observed = float(np.mean(np.asarray(run.ys, np.float64) ** 2))  # the mean is known: 0
    exact = float(sde.noise_ratio(np.array(1.0))) ** 2
    # EM's X_1 = sum_n g(t_n) dW_n has variance h sum_n g(t_n)^2 (left points): a Riemann
    # sum of the exponential g^2 that falls short of sigma(1)^2 by about
    # log(sigma_max / sigma_min) h ~ 1.7%.
    h = 1.0 / num_steps
    em = h * float(np.sum(diffusion_squared_at(sde, np.arange(num_steps) * h)))
    assert 0.0 < 1.0 - em / exact < 0.02
    # Mean square of n d iid N(0, v) entries: relative std sqrt(2 / (n d)) (chi-square).
    spread = 5 * np.sqrt(2 / (COUNT * DIM))
    assert abs(observed - em) <= spread * em
    assert abs(observed - exact) <= spread * exact + abs(exact - em)


@pytest.mark.parametrize("sde", SDES)
def test_probability_flow_with_the_exact_score_reaches_the_data_variance(sde):
    t_min, num_steps = 1e-3, 2000
    drift = ScoreDrift(ExactNetwork(sde, "score"), sde, "ode", prediction="score")
    x1 = sde.prior_std * jax.random.normal(jax.random.key(2), (COUNT, DIM))
    out = mlem_jax.solve([drift], x1, 1.0, t_min, num_steps).ys
    # A linear drift a(t) y: EM maps x1 to c x1 with c = prod_n (1 + a(t_n) h) exactly, so
    # its bias is known: the final variance is prior_std^2 c^2 instead of v(t_min) (the
    # gap also holds the prior's: X_1 has variance v(1), not prior_std^2).
    h = (t_min - 1.0) / num_steps
    c = float(np.prod(1.0 + ode_rate(sde, 1.0 + np.arange(num_steps) * h) * h))
    np.testing.assert_allclose(out, c * x1, rtol=1e-4, atol=1e-6)
    exact, em = variance_at(sde, t_min), sde.prior_std**2 * c**2
    bias = abs(em - exact)
    # Measured: VP 8e-5 relative; VE 2.0%, first order (4.0% at 1000 steps, 1.0% at 4000).
    assert bias < 0.03 * exact
    observed = float(np.mean(np.asarray(out, np.float64) ** 2))
    spread = 5 * np.sqrt(2 / (COUNT * DIM))
    assert abs(observed - exact) <= spread * em + bias


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_vp_reverse_drift_is_the_original_formula(kind):
    sde, weight = VPSDE(), 1.0 if kind == "sde" else 0.5
    y, score = jax.random.normal(jax.random.key(3), (2, 8, DIM))
    for t in (1e-3, 0.4, jnp.asarray(0.9)):
        beta = sde.beta(t)
        old = -0.5 * beta * y - weight * beta * score
        np.testing.assert_allclose(reverse_drift(sde, kind, t, y, score), old, rtol=1e-6)


def test_bad_prediction_is_rejected():
    with pytest.raises(ValueError, match="`prediction` must be one of .*'eps'"):
        ScoreDrift(ExactNetwork(VPSDE(), "noise"), VPSDE(), "sde", prediction="eps")
    with pytest.raises(ValueError, match="`kind`"):
        ScoreDrift(ExactNetwork(VPSDE(), "noise"), VPSDE(), "flow")
