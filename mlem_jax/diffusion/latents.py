"""Images to whitened PCA latents and back, and a Gaussian mixture fitted to the latents."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .mixture import GaussianMixture


class PCACodec(eqx.Module):
    """z = U^T (x - mean) / s and back: the first d principal axes U of flattened images,
    each coordinate scaled to unit variance over the training images.

    **Arguments:**

    - `mean`: (P,) mean image, flattened.
    - `components`: (d, P) orthonormal principal axes, largest variance first.
    - `scales`: (d,) standard deviation of the images along each axis.
    - `image_shape`: (C, H, W) of one image, with C H W = P.
    """

    mean: Float[Array, " P"]
    components: Float[Array, "d P"]
    scales: Float[Array, " d"]
    image_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, mean: Any, components: Any, scales: Any, image_shape: Sequence[int]):
        mean, components = np.asarray(mean), np.asarray(components)
        scales, image_shape = np.asarray(scales), tuple(int(n) for n in image_shape)
        if components.ndim != 2 or mean.shape != components.shape[1:]:
            raise ValueError(
                "`components` must have shape (d, P) and `mean` (P,), got "
                f"{components.shape} and {mean.shape}."
            )
        if scales.shape != components.shape[:1] or not (scales > 0).all():
            raise ValueError(
                f"`scales` must be {components.shape[:1]} positive values, got "
                f"shape {scales.shape}."
            )
        if int(np.prod(image_shape)) != mean.shape[0]:
            raise ValueError(f"`image_shape` {image_shape} must hold P = {mean.shape[0]} pixels.")
        self.mean = jnp.asarray(mean, jnp.float32)
        self.components = jnp.asarray(components, jnp.float32)
        self.scales = jnp.asarray(scales, jnp.float32)
        self.image_shape = image_shape

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def encode(self, images: Float[Array, "n c h w"]) -> Float[Array, "n d"]:
        """Latents of a batch of images."""
        flat = jnp.reshape(images, (images.shape[0], -1)) - self.mean
        return flat @ self.components.T / self.scales

    def decode(self, latents: Float[Array, "n d"], clip: bool = True) -> Float[Array, "n c h w"]:
        """Images of a batch of latents, clipped to the pixel range [-1, 1] unless `clip`
        is False (then `encode` inverts it exactly)."""
        flat = (latents * self.scales) @ self.components + self.mean
        flat = jnp.clip(flat, -1.0, 1.0) if clip else flat
        return flat.reshape((latents.shape[0], *self.image_shape))


def fit_latent_mixture(
    images: np.ndarray,
    latent_dim: int = 32,
    components: int = 64,
    *,
    width: float = 1.0,
    min_variance: float = 1e-2,
    seed: int = 0,
) -> tuple[GaussianMixture, PCACodec]:
    """Fit a `PCACodec` to `images`, then a full-covariance Gaussian mixture to their
    latents (scikit-learn's EM, k-means start).

    **Arguments:**

    - `images`: (n, C, H, W) training images.
    - `latent_dim`: d, the number of principal axes kept.
    - `components`: M, the number of mixture components.
    - `width`: every covariance is scaled by `width`^2 after the fit: below 1 the
        components are narrower and the score harder to learn (a difficulty knob).
    - `min_variance`: added to every covariance's diagonal in the fit (scikit-learn's
        `reg_covar`), so that no component collapses onto the few images it holds.
    - `seed`: seed of the mixture's initialisation.

    **Returns:**

    `(mixture, codec)`: the mixture lives in the codec's latent space.
    """
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture as SklearnMixture

    images = np.asarray(images, np.float64)
    if images.ndim != 4 or len(images) <= max(latent_dim, components):
        raise ValueError(
            f"`images` must have shape (n, C, H, W) with n > max(latent_dim, components) = "
            f"{max(latent_dim, components)}, got {images.shape}."
        )
    if not width > 0:
        raise ValueError(f"`width` must be > 0, got {width}.")
    flat = images.reshape(len(images), -1)
    pca = PCA(latent_dim, random_state=seed).fit(flat)
    codec = PCACodec(pca.mean_, pca.components_, np.sqrt(pca.explained_variance_), images.shape[1:])
    latents = np.asarray(codec.encode(jnp.asarray(images, jnp.float32)), np.float64)
    fit = SklearnMixture(
        components, covariance_type="full", reg_covar=min_variance, random_state=seed, max_iter=500
    ).fit(latents)
    mixture = GaussianMixture(fit.weights_, fit.means_, np.asarray(fit.covariances_) * width**2)
    return mixture, codec


def save_testbed(path: str | Path, mixture: GaussianMixture, codec: PCACodec) -> None:
    """Write a mixture and its codec to one `.npz` file (plain arrays, no pickles)."""
    covariances = np.einsum("kij,kj,klj->kil", mixture.axes, mixture.variances, mixture.axes)
    np.savez(
        path,
        weights=np.exp(np.asarray(mixture.log_weights)),
        means=mixture.means,
        covariances=covariances,
        mean=codec.mean,
        components=codec.components,
        scales=codec.scales,
        image_shape=np.asarray(codec.image_shape),
    )


def load_testbed(path: str | Path) -> tuple[GaussianMixture, PCACodec]:
    """Read what `save_testbed` wrote."""
    with np.load(path, allow_pickle=False) as stored:
        mixture = GaussianMixture(stored["weights"], stored["means"], stored["covariances"])
        codec = PCACodec(
            stored["mean"], stored["components"], stored["scales"], stored["image_shape"]
        )
    return mixture, codec
