"""An exact-score testbed: a Gaussian mixture, its VP-noised score, sampling, density."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .sde import VPSDE, reverse_drift


class GaussianMixture(eqx.Module):
    """sum_k w_k N(mu_k, Sigma_k) in R^d, each covariance stored by its eigenvectors.

    Under the VP-SDE, X_t = alpha(t) X_0 + sigma(t) Z is again a Gaussian mixture, with
    means alpha mu_k and covariances alpha^2 Sigma_k + sigma^2 I (`noised`): its score,
    density and samples are exact at every t. Methods act on ONE point x of shape (d,);
    `vmap` them over a batch.

    **Arguments:**

    - `weights`: (M,) positive mixture weights (normalised here).
    - `means`: (M, d).
    - `covariances`: (M, d, d) symmetric positive definite.
    """

    log_weights: Float[Array, " M"]
    means: Float[Array, "M d"]
    variances: Float[Array, "M d"]
    axes: Float[Array, "M d d"]

    def __init__(self, weights: Any, means: Any, covariances: Any):
        weights, means = np.asarray(weights, np.float64), np.asarray(means, np.float64)
        covariances = np.asarray(covariances, np.float64)
        if means.ndim != 2 or weights.shape != means.shape[:1]:
            raise ValueError(
                "`weights` must have shape (M,) and `means` (M, d), got "
                f"{weights.shape} and {means.shape}."
            )
        if covariances.shape != means.shape + means.shape[1:]:
            raise ValueError(
                f"`covariances` must have shape {means.shape + means.shape[1:]} (M, d, d), "
                f"got {covariances.shape}."
            )
        if not (weights > 0).all():
            raise ValueError(f"`weights` must be > 0, got {weights.tolist()}.")
        variances, axes = np.linalg.eigh(0.5 * (covariances + covariances.swapaxes(1, 2)))
        if not (variances > 0).all():
            raise ValueError(
                f"`covariances` must be positive definite, got an eigenvalue {variances.min():.3g}."
            )
        self.log_weights = jnp.asarray(np.log(weights / weights.sum()), jnp.float32)
        self.means = jnp.asarray(means, jnp.float32)
        self.variances = jnp.asarray(variances, jnp.float32)
        self.axes = jnp.asarray(axes, jnp.float32)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def noised(self, sde: VPSDE, t: Any) -> "GaussianMixture":
        """The law of X_t = alpha(t) X_0 + sigma(t) Z, X_0 from this mixture."""
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        return eqx.tree_at(
            lambda m: (m.means, m.variances),
            self,
            (alpha * self.means, alpha**2 * self.variances + sigma**2),
        )

    def _component_terms(self, x: Float[Array, " d"]) -> tuple[Array, Array]:
        """Per component: log(w_k N(x; mu_k, Sigma_k)) and Sigma_k^-1 (x - mu_k)."""
        rotated = jnp.einsum("kij,ki->kj", self.axes, x - self.means)  # U_k^T (x - mu_k)
        scaled = rotated / self.variances
        log_normal = -0.5 * (
            jnp.sum(rotated * scaled, axis=1)
            + jnp.sum(jnp.log(self.variances), axis=1)
            + self.dim * jnp.log(2 * jnp.pi)
        )
        return self.log_weights + log_normal, jnp.einsum("kij,kj->ki", self.axes, scaled)

    def log_density(self, x: Float[Array, " d"]) -> Float[Array, ""]:
        """log p(x)."""
        log_terms, _ = self._component_terms(x)
        return jax.nn.logsumexp(log_terms)

    def score(self, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """grad log p(x) = -sum_k r_k(x) Sigma_k^-1 (x - mu_k), r_k the responsibilities."""
        log_terms, precision_times = self._component_terms(x)
        return -jax.nn.softmax(log_terms) @ precision_times

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The mixture's mean (d,) and covariance (d, d), in float64: the Gaussian that
        `mlem_jax.diffusion.gaussian_statistics` takes as the mixture's Gaussian fit."""
        weights = np.exp(np.asarray(self.log_weights, np.float64))
        weights /= weights.sum()
        means, axes = np.asarray(self.means, np.float64), np.asarray(self.axes, np.float64)
        covariances = (axes * np.asarray(self.variances, np.float64)[:, None, :]) @ axes.swapaxes(
            1, 2
        )
        mean = weights @ means
        centred = means - mean
        covariance = np.einsum("m,mij->ij", weights, covariances) + np.einsum(
            "m,mi,mj->ij", weights, centred, centred
        )
        return mean, covariance

    def sample(self, key: PRNGKeyArray, count: int) -> Float[Array, "count d"]:
        """`count` independent draws."""
        component_key, normal_key = jax.random.split(key)
        k = jax.random.categorical(component_key, self.log_weights, shape=(count,))
        z = jax.random.normal(normal_key, (count, self.dim))
        rotated = jnp.einsum("nij,nj->ni", self.axes[k], z * jnp.sqrt(self.variances[k]))
        return self.means[k] + rotated


class ExactDrift(eqx.Module):
    """The reverse drift of the VP-SDE with the exact score of a `GaussianMixture`, as a
    level f(t, y, args) on a batch y of shape (B, d): the truth the testbed measures
    learned levels against.

    **Arguments:**

    - `mixture`: the data distribution at t = 0.
    - `sde`: the forward `VPSDE`.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    """

    mixture: GaussianMixture
    sde: VPSDE
    kind: str = eqx.field(static=True)

    def __init__(self, mixture: GaussianMixture, sde: VPSDE = VPSDE(), kind: str = "sde"):
        self.mixture, self.sde, self.kind = mixture, sde, kind
        zero = jnp.zeros(())
        reverse_drift(sde, kind, zero, zero, zero)  # checks `kind`

    def __call__(self, t: float | Float[Array, ""], y: Float[Array, "b d"], args: Any) -> Array:
        score = jax.vmap(self.mixture.noised(self.sde, t).score)(y)
        return reverse_drift(self.sde, self.kind, t, y, score)
