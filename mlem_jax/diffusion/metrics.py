"""Errors and sample quality: RMS strong error, FID-style Frechet distance on features."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from .classifier import Classifier


def strong_error(samples: Array | np.ndarray, reference: Array | np.ndarray) -> float:
    """RMS over the batch of the per-image Euclidean distance to the reference samples
    (same initial noise, same Brownian path)."""
    if samples.shape != reference.shape:
        raise ValueError(
            f"`samples` and `reference` must have the same shape, got {samples.shape} and "
            f"{reference.shape}."
        )
    squared = jnp.sum(jnp.square(samples - reference).reshape(samples.shape[0], -1), axis=1)
    return float(jnp.sqrt(jnp.mean(squared)))


@eqx.filter_jit
def _features(model: Classifier, images: Array) -> Array:
    """Compiled once per model structure and batch shape, not once per call."""
    return jax.vmap(model.features)(images)


def classifier_features(
    model: Classifier, images: Array | np.ndarray, batch_size: int = 500
) -> np.ndarray:
    """`model.features` of every image, (n, f), in batches of `batch_size`."""
    parts = [
        np.asarray(_features(model, jnp.asarray(images[i : i + batch_size])))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts).astype(np.float64)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets a (n, f) and b (m, f):
    ||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a^1/2 S_b S_a^1/2)^1/2)."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(
            f"feature sets must be (n, f) and (m, f) with n, m >= 2, got {a.shape}, {b.shape}."
        )
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = _psd_sqrt(cov_a)
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root @ cov_b @ root), 0.0, None)))
    mean = np.sum(np.square(a.mean(0) - b.mean(0)))
    return float(mean + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def quality_score(model: Classifier, samples: Array | np.ndarray, held_out: np.ndarray) -> float:
    """FID-style score of `samples` against the held-out images (lower is better)."""
    return frechet_distance(
        classifier_features(model, samples), classifier_features(model, held_out)
    )
