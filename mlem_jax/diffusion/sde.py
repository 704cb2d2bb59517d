"""The VP-SDE and its reverse-time drifts as ML-EM levels acting on a batch of images."""

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


NoisePredictor = Callable[[Any, Array], Array]
"""A network `eps = model(t, x)` that predicts the noise in one noised sample `x`."""
Drift = Callable[[Any, Array, Any], Array]
"""A reverse-time drift `f(t, y, args)`: a `ScoreDrift`, an `ExactDrift`, a level of a
`LevelFamily`, or any callable of that signature."""


KINDS = ("sde", "ode")


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

    def diffusion(self, t: Any, y: Any, args: Any) -> Array:
        """g(t) = sqrt(beta(t)): the noise of the forward and of the reverse SDE."""
        return jnp.sqrt(self.beta(t))


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}, got {kind!r}.")
    return kind


def reverse_drift(sde: VPSDE, kind: str, t: Any, y: Array, score: Array) -> Array:
    """-1/2 beta y - beta s (reverse SDE) or -1/2 beta y - 1/2 beta s (probability flow).

    Integrated from t = 1 down to t_min with negative steps, so the reverse SDE's noise
    is sqrt(beta) times a Brownian increment of variance |dt|.
    """
    weight = 1.0 if _check_kind(kind) == "sde" else 0.5
    beta = sde.beta(t)
    return -0.5 * beta * y - weight * beta * score


class ScoreDrift(eqx.Module):
    """A level f(t, y, args) for `mlem_jax.solve`: the reverse drift of one noise
    predictor.

    `y` is a batch (B, ...) of samples (images (B, C, H, W) for a UNet); the model is
    `vmap`ped inside, so the level draws of ML-EM are shared by the batch and skipped
    levels cost nothing. The score is s(x, t) = -eps(x, t) / sigma(t).

    **Arguments:**

    - `model`: the noise predictor `eps = model(t, x)` of one sample `x`: a `UNet`, a
        `ResidualMLP`, or any callable (an equinox module, so that it is a pytree) that
        returns an array of `x`'s shape.
    - `sde`: the forward `VPSDE`.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    """

    model: NoisePredictor
    sde: VPSDE
    kind: str = eqx.field(static=True)

    def __init__(self, model: NoisePredictor, sde: VPSDE, kind: str = "sde"):
        self.model, self.sde, self.kind = model, sde, _check_kind(kind)

    def __call__(self, t: float | Float[Array, ""], y: Float[Array, "b ..."], args: Any) -> Array:
        eps = jax.vmap(self.model, in_axes=(None, 0))(t, y)
        return reverse_drift(self.sde, self.kind, t, y, -eps / self.sde.sigma(t))


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
