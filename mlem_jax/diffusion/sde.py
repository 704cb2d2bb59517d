"""The VP- and VE-SDEs and their reverse-time drifts as ML-EM levels acting on a batch of
images."""

from collections.abc import Callable
from math import log, sqrt
from typing import Any, Protocol

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


NoisePredictor = Callable[[Any, Array], Array]
"""A network `out = model(t, x)` of one noised sample `x` at time t that returns an array
of `x`'s shape: the noise, the score or the denoised sample (see `ScoreDrift`'s
`prediction`)."""
Drift = Callable[[Any, Array, Any], Array]
"""A reverse-time drift `f(t, y, args)`: a `ScoreDrift`, an `ExactDrift`, a level of a
`LevelFamily`, or any callable of that signature."""


T_MIN = 1e-3
"""The time sampling stops at: the reverse process runs from t = 1 down to T_MIN."""
KINDS = ("sde", "ode")
PREDICTIONS = ("noise", "score", "x0")


def _namespace(x: Any) -> Any:
    """NumPy for NumPy arrays and scalars (kept in float64), JAX for anything else."""
    return np if isinstance(x, np.ndarray | np.generic) else jnp


class SDE(Protocol):
    """A forward SDE dX = f(t, X) dt + g(t) dW on t in [0, 1] with the Gaussian marginal
    X_t | X_0 ~ N(alpha(t) X_0, sigma(t)^2 I): `VPSDE` and `VESDE` implement it.

    `alpha` and `sigma` return JAX arrays; `drift`, `diffusion_squared`, `noise_ratio`
    and `time_of_noise_ratio` keep NumPy inputs in NumPy (float64, for time grids).
    """

    def drift(self, t: Any, y: Any) -> Any:
        """The forward drift f(t, y)."""
        ...

    def diffusion(self, t: Any, y: Any, args: Any) -> Array:
        """g(t): the noise of the forward and of the reverse SDE."""
        ...

    def diffusion_squared(self, t: Any) -> Any:
        """g(t)^2."""
        ...

    def alpha(self, t: Any) -> Array:
        """The mean scale alpha(t)."""
        ...

    def sigma(self, t: Any) -> Array:
        """The marginal standard deviation sigma(t)."""
        ...

    def noise_ratio(self, t: Any) -> Any:
        """sigma(t) / alpha(t), increasing in t."""
        ...

    def time_of_noise_ratio(self, r: Any) -> Any:
        """The inverse of `noise_ratio`: the t with sigma(t) / alpha(t) = r."""
        ...

    @property
    def prior_std(self) -> float:
        """The standard deviation of X_1 that sampling starts from."""
        ...


class VPSDE(eqx.Module):
    """dX = -1/2 beta(t) X dt + sqrt(beta(t)) dW on t in [0, 1], beta linear.

    X_t | X_0 ~ N(alpha(t) X_0, sigma(t)^2 I) with alpha(t) = exp(-1/2 int_0^t beta) and
    sigma(t)^2 = 1 - alpha(t)^2.
    """

    beta_min: float = eqx.field(static=True, default=0.1)
    beta_max: float = eqx.field(static=True, default=20.0)

    def beta(self, t: Any) -> Array:
        """beta(t) = beta_min + t (beta_max - beta_min)."""
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integral(self, t: Any) -> Array:
        """int_0^t beta(s) ds."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def alpha(self, t: Any) -> Array:
        """The mean scale exp(-1/2 int_0^t beta(s) ds)."""
        return jnp.exp(-0.5 * self.integral(t))

    def sigma(self, t: Any) -> Array:
        """The marginal standard deviation sqrt(1 - alpha(t)^2), accurate near t = 0."""
        return jnp.sqrt(-jnp.expm1(-self.integral(t)))

    def drift(self, t: Any, y: Any) -> Any:
        """The forward drift -1/2 beta(t) y."""
        return -0.5 * self.beta(t) * y

    def diffusion(self, t: Any, y: Any, args: Any) -> Array:
        """g(t) = sqrt(beta(t)): the noise of the forward and of the reverse SDE."""
        return jnp.sqrt(self.beta(t))

    def diffusion_squared(self, t: Any) -> Any:
        """g(t)^2 = beta(t)."""
        return self.beta(t)

    def noise_ratio(self, t: Any) -> Any:
        """sigma(t) / alpha(t) = sqrt(exp(int_0^t beta) - 1), accurate near t = 0."""
        xp = _namespace(t)
        return xp.sqrt(xp.expm1(self.integral(t)))

    def time_of_noise_ratio(self, r: Any) -> Any:
        """The t with `noise_ratio(t) = r`: the positive root of
        beta_min t + 1/2 (beta_max - beta_min) t^2 = log(1 + r^2), without cancellation."""
        xp = _namespace(r)
        target = xp.log1p(xp.square(r))
        spread = self.beta_max - self.beta_min
        return 2.0 * target / (self.beta_min + xp.sqrt(self.beta_min**2 + 2.0 * spread * target))

    @property
    def prior_std(self) -> float:
        """1: X_1 is close to N(0, I)."""
        return 1.0


class VESDE(eqx.Module):
    """Song et al.'s variance-exploding SDE: dX = sqrt(d s(t)^2 / dt) dW on t in [0, 1],
    no drift, with the noise level s(t) = sigma_min (sigma_max / sigma_min)^t.

    g(t)^2 = 2 log(sigma_max / sigma_min) s(t)^2 and, started at X_0 at t = 0,
    X_t | X_0 ~ N(X_0, sigma(t)^2 I) with sigma(t)^2 = s(t)^2 - sigma_min^2 (alpha = 1).
    """

    sigma_min: float = eqx.field(static=True, default=0.01)
    sigma_max: float = eqx.field(static=True, default=50.0)

    def __check_init__(self):
        if not 0.0 < self.sigma_min < self.sigma_max:
            raise ValueError(
                "`sigma_min` and `sigma_max` must satisfy 0 < sigma_min < sigma_max, got "
                f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}."
            )

    @property
    def _log_ratio(self) -> float:
        return log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Any) -> Array:
        """The mean scale: 1."""
        return jnp.ones_like(t)

    def sigma(self, t: Any) -> Array:
        """The marginal standard deviation sqrt(s(t)^2 - sigma_min^2), accurate near 0."""
        return self.noise_ratio(jnp.asarray(t))

    def drift(self, t: Any, y: Any) -> Any:
        """The forward drift: 0."""
        return _namespace(y).zeros_like(y)

    def diffusion(self, t: Any, y: Any, args: Any) -> Array:
        """g(t) = sqrt(2 log(sigma_max / sigma_min)) s(t)."""
        return jnp.sqrt(2.0 * self._log_ratio) * self.sigma_min * jnp.exp(self._log_ratio * t)

    def diffusion_squared(self, t: Any) -> Any:
        """g(t)^2 = 2 log(sigma_max / sigma_min) s(t)^2."""
        xp = _namespace(t)
        return 2.0 * self._log_ratio * self.sigma_min**2 * xp.exp(2.0 * self._log_ratio * t)

    def noise_ratio(self, t: Any) -> Any:
        """sigma(t) / alpha(t) = sigma(t) = sigma_min sqrt((sigma_max / sigma_min)^(2t) - 1)."""
        xp = _namespace(t)
        return self.sigma_min * xp.sqrt(xp.expm1(2.0 * self._log_ratio * t))

    def time_of_noise_ratio(self, r: Any) -> Any:
        """The t with `noise_ratio(t) = r`: log(1 + (r / sigma_min)^2) / (2 log(sigma_max /
        sigma_min))."""
        xp = _namespace(r)
        return xp.log1p(xp.square(r / self.sigma_min)) / (2.0 * self._log_ratio)

    @property
    def prior_std(self) -> float:
        """sigma(1) = sqrt(sigma_max^2 - sigma_min^2)."""
        return sqrt(self.sigma_max**2 - self.sigma_min**2)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    return kind


def _check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(f"`prediction` must be one of {PREDICTIONS}, got {prediction!r}.")
    return prediction


def reverse_drift(sde: SDE, kind: str, t: Any, y: Array, score: Array) -> Array:
    """f(t, y) - g(t)^2 s (reverse SDE) or f(t, y) - 1/2 g(t)^2 s (probability flow), f
    and g the forward SDE's drift and diffusion; on the VP-SDE -1/2 beta y - beta s or
    -1/2 beta y - 1/2 beta s.

    Integrated from t = 1 down to t_min with negative steps, so the reverse SDE's noise
    is g(t) times a Brownian increment of variance |dt|.
    """
    weight = 1.0 if _check_kind(kind) == "sde" else 0.5
    return sde.drift(t, y) - weight * sde.diffusion_squared(t) * score


def exit_drifts(model: Any, sde: SDE, kind: str, t: Any, y: Array, depth: int) -> tuple:
    """The reverse drifts of exits 1..depth of a noise predictor with early exits
    (`model.exits(t, x, depth)` on ONE sample x, `vmap`ped over the batch y): what the
    `evaluate` of an early-exit `mlem_jax.LevelFamily` returns."""
    noises = jax.vmap(lambda x: model.exits(t, x, depth))(y)
    sigma = sde.sigma(t)
    return tuple(reverse_drift(sde, kind, t, y, -eps / sigma) for eps in noises)


class ScoreDrift(eqx.Module):
    """A level f(t, y, args) for `mlem_jax.solve`: the reverse drift of one network, for
    a given forward SDE. It turns your own score, noise or x0 network into an ML-EM
    level; a list of them, cheapest first, is what `sample` and `calibrate` take.

    `y` is a batch (B, ...) of samples (images (B, C, H, W) for a UNet); the model is
    `vmap`ped inside, so the level draws of ML-EM are shared by the batch and skipped
    levels cost nothing. The network's output becomes the score s(x, t) of the noised
    law p_t = law of alpha(t) X_0 + sigma(t) Z, Z ~ N(0, I), by `prediction`:

    - `"noise"`: eps(t, x) ~ E[Z | X_t = x] (DDPM's epsilon), s = -eps / sigma(t);
    - `"score"`: the score itself, s = out;
    - `"x0"`: the denoiser D(t, x) ~ E[X_0 | X_t = x] (EDM's D), by Tweedie's formula
        s = (alpha(t) D - x) / sigma(t)^2.

    All three are the same drift for exact networks; near t_min, where sigma(t) is
    small, `"x0"` divides by sigma(t)^2 and magnifies the network's error (and float32
    rounding of alpha D - x) the most.

    **Arguments:**

    - `model`: the network `out = model(t, x)` of one sample `x`: a `UNet`, a
        `ResidualMLP`, or any callable (an equinox module, so that it is a pytree) that
        returns an array of `x`'s shape. `t` is a scalar in [t_min, 1].
    - `sde`: the forward SDE the network was trained on, a `VPSDE` or a `VESDE`.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    - `prediction`: what `model` returns, `"noise"`, `"score"` or `"x0"`.
    """

    model: NoisePredictor
    sde: SDE
    kind: str = eqx.field(static=True)
    prediction: str = eqx.field(static=True)

    def __init__(
        self, model: NoisePredictor, sde: SDE, kind: str = "sde", prediction: str = "noise"
    ):
        self.model, self.sde, self.kind = model, sde, _check_kind(kind)
        self.prediction = _check_prediction(prediction)

    def score(self, t: float | Float[Array, ""], y: Float[Array, "b ..."]) -> Array:
        """The score of the batch `y` at t from the network's prediction."""
        out = jax.vmap(self.model, in_axes=(None, 0))(t, y)
        if self.prediction == "noise":
            return -out / self.sde.sigma(t)
        if self.prediction == "score":
            return out
        return (self.sde.alpha(t) * out - y) / jnp.square(self.sde.sigma(t))

    def __call__(self, t: float | Float[Array, ""], y: Float[Array, "b ..."], args: Any) -> Array:
        return reverse_drift(self.sde, self.kind, t, y, self.score(t, y))


class StitchedDrift(eqx.Module):
    """T-Stitch as one level: the small model while t > `switch` (the early steps of the
    reverse process, near t = 1), the large one after, chosen with `lax.cond` on t.

    **Arguments:**

    - `small`, `large`: drifts (e.g. `ScoreDrift`s) of the same kind.
    - `switch`: the time at which sampling hands over to `large`.
    """

    small: Drift
    large: Drift
    switch: float = eqx.field(static=True)

    def __call__(self, t: float | Float[Array, ""], y: Array, args: Any) -> Array:
        return jax.lax.cond(
            t > self.switch,
            lambda y: self.small(t, y, args),
            lambda y: self.large(t, y, args),
            y,
        )
