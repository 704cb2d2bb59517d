"""A level that needs no training: the exact noised score of a Gaussian fit to the data.

If the data were N(mu, S), the forward SDE's marginal at t would be
N(alpha(t) mu, alpha(t)^2 S + sigma(t)^2 I) and its score the affine map
s_G(x, t) = -(alpha(t)^2 S + sigma(t)^2 I)^-1 (x - alpha(t) mu). Fitted to the training
images it is accurate where the true score is nearly Gaussian, at high noise, and costs
one or two matrix products per sample: a free first level under any trained network.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .sde import SDE, VPSDE, _check_kind, reverse_drift


class GaussianStatistics(eqx.Module):
    """Mean and covariance of data samples, in the eigenbasis of the covariance, kept to
    `rank` principal directions plus an isotropic rest:

        S = U diag(lambda) U^T + rest (I - U U^T),

    U (d, k) orthonormal, lambda (k,) the top k eigenvalues, and `rest` the mean of the
    d - k eigenvalues left out (so the trace of S is kept). With k = d (full rank) S is
    the covariance itself. Build it with `fit_gaussian` (from samples) or
    `gaussian_statistics` (from a mean and a covariance).

    - `mean`: mu, flattened, (d,).
    - `directions`: U, (d, k).
    - `variances`: lambda, (k,), decreasing.
    - `rest`: the variance of every direction orthogonal to U, a scalar.
    - `shape`: the shape of one sample (e.g. (C, H, W)); d is its size.
    """

    mean: Float[Array, " d"]
    directions: Float[Array, "d k"]
    variances: Float[Array, " k"]
    rest: Float[Array, ""]
    shape: tuple[int, ...] = eqx.field(static=True)

    @property
    def rank(self) -> int:
        """k, the number of principal directions kept."""
        return int(self.variances.shape[0])

    @property
    def size(self) -> int:
        """d, the number of entries of one sample."""
        return int(self.mean.shape[0])

    def covariance(self) -> Float[Array, "d d"]:
        """S as a dense (d, d) matrix (for checks; the score never forms it)."""
        u, lam = self.directions, self.variances
        projector = u @ u.T
        return (u * lam) @ u.T + self.rest * (jnp.eye(self.size) - projector)

    def truncated(self, rank: int) -> "GaussianStatistics":
        """The same statistics kept to `rank` <= `self.rank` directions; the dropped
        eigenvalues join the isotropic rest (their mean with the rest's, weighted by
        how many directions each stands for)."""
        _check_rank(rank, self.rank)
        dropped = self.variances[rank:]
        outside = self.size - self.rank
        rest = (jnp.sum(dropped) + outside * self.rest) / max(self.size - rank, 1)
        return GaussianStatistics(
            self.mean, self.directions[:, :rank], self.variances[:rank], rest, self.shape
        )


def _check_rank(rank: Any, size: int) -> int:
    if not isinstance(rank, (int, np.integer)) or not 1 <= rank <= size:
        raise ValueError(f"`rank` must be an int in 1..{size}, got {rank!r}.")
    return int(rank)


def gaussian_statistics(
    mean: Any, covariance: Any, shape: Sequence[int] | None = None, *, rank: int | None = None
) -> GaussianStatistics:
    """`GaussianStatistics` from a mean and a covariance.

    **Arguments:**

    - `mean`: the data's mean, of the shape of one sample or flattened (d,).
    - `covariance`: (d, d), symmetric and positive semi-definite (eigenvalues below
        -1e-5 times the largest are refused; smaller negative ones, rounding, are set to 0).
    - `shape`: the shape of one sample; default `mean`'s shape.
    - `rank`: the principal directions to keep (default d: full rank). Each sample then
        costs about 4 d k FLOPs instead of 4 d^2.

    **Returns:**

    A `GaussianStatistics`.
    """
    mean = np.asarray(mean, dtype=np.float64)
    shape = tuple(mean.shape) if shape is None else tuple(int(s) for s in shape)
    d = int(np.prod(shape))
    if mean.size != d or mean.ndim not in (1, len(shape)):
        raise ValueError(
            f"`mean` must have the sample shape {shape} or ({d},), got shape {mean.shape}."
        )
    covariance = np.asarray(covariance, dtype=np.float64)
    if covariance.shape != (d, d):
        raise ValueError(
            f"`covariance` must have shape ({d}, {d}) for samples of shape {shape}, got "
            f"shape {covariance.shape}."
        )
    if not np.isfinite(covariance).all() or not np.allclose(
        covariance, covariance.T, rtol=1e-5, atol=1e-8 * max(np.abs(covariance).max(), 1e-30)
    ):
        raise ValueError("`covariance` must be finite and symmetric.")
    eigenvalues, eigenvectors = np.linalg.eigh(0.5 * (covariance + covariance.T))
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    tolerance = 1e-5 * max(float(eigenvalues[0]), 0.0)
    if eigenvalues[-1] < -tolerance:
        raise ValueError(
            "`covariance` must be positive semi-definite, got an eigenvalue of "
            f"{eigenvalues[-1]:.3g} (the largest is {eigenvalues[0]:.3g})."
        )
    eigenvalues = np.maximum(eigenvalues, 0.0)
    k = d if rank is None else _check_rank(rank, d)
    rest = float(eigenvalues[k:].mean()) if k < d else 0.0
    return GaussianStatistics(
        jnp.asarray(mean.reshape(-1), jnp.float32),
        jnp.asarray(eigenvectors[:, :k], jnp.float32),
        jnp.asarray(eigenvalues[:k], jnp.float32),
        jnp.asarray(rest, jnp.float32),
        shape,
    )


def fit_gaussian(samples: Any, *, rank: int | None = None) -> GaussianStatistics:
    """`GaussianStatistics` of data samples (n, *shape): their mean and their covariance
    (normalised by n - 1), kept to `rank` principal directions (default: full rank)."""
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim < 2 or samples.shape[0] < 2:
        raise ValueError(
            f"`samples` must be an array (n, *shape) of n >= 2 samples, got shape {samples.shape}."
        )
    flat = samples.reshape(samples.shape[0], -1)
    return gaussian_statistics(
        flat.mean(axis=0), np.cov(flat, rowvar=False), samples.shape[1:], rank=rank
    )


class GaussianDrift(eqx.Module):
    """The reverse drift of the exact score of `N(mean, S)` data (`GaussianStatistics`)
    under the forward SDE `sde`: a level f(t, y, args) like `ScoreDrift`, for a batch
    y (B, *shape). It is exact for Gaussian data and, for real data, accurate at high
    noise; as level 1 under a network (`[GaussianDrift, ScoreDrift]`) or under a
    `LevelFamily` (`mlem_jax.FamilyWithBase`), it makes ML-EM's cheapest level nearly
    free.

    With C_t = alpha(t)^2 S + sigma(t)^2 I and S = U diag(lambda) U^T + rest (I - U U^T),
    the score is -C_t^-1 (x - alpha(t) mu) with C_t^-1 = U diag(1 / (alpha^2 lambda +
    sigma^2)) U^T + (I - U U^T) / (alpha^2 rest + sigma^2): two products with U, about
    4 d k FLOPs per sample.

    **Arguments:**

    - `statistics`: the data's `GaussianStatistics`.
    - `sde`: the forward SDE (a `VPSDE` or a `VESDE`).
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    """

    statistics: GaussianStatistics
    sde: SDE
    kind: str = eqx.field(static=True)

    def __init__(self, statistics: GaussianStatistics, sde: SDE = VPSDE(), kind: str = "sde"):
        self.statistics, self.sde, self.kind = statistics, sde, _check_kind(kind)

    def score(self, t: float | Float[Array, ""], y: Float[Array, "b ..."]) -> Array:
        """The Gaussian score of the batch `y` at t."""
        stats = self.statistics
        if tuple(y.shape[1:]) != stats.shape:
            raise ValueError(
                f"`y` must be a batch (B, *{stats.shape}) of samples of the statistics' shape "
                f"{stats.shape}, got shape {tuple(y.shape)}."
            )
        alpha, sigma2 = self.sde.alpha(t), jnp.square(self.sde.sigma(t))
        centred = y.reshape(y.shape[0], -1) - alpha * stats.mean
        inverse_kept = 1.0 / (jnp.square(alpha) * stats.variances + sigma2)
        coordinates = centred @ stats.directions
        if stats.rank == stats.size:  # no rest: adding and removing it would only round
            score = -(coordinates * inverse_kept) @ stats.directions.T
        else:
            inverse_rest = 1.0 / (jnp.square(alpha) * stats.rest + sigma2)
            kept = (coordinates * (inverse_kept - inverse_rest)) @ stats.directions.T
            score = -(kept + inverse_rest * centred)
        return score.reshape(y.shape).astype(y.dtype)

    def __call__(self, t: float | Float[Array, ""], y: Float[Array, "b ..."], args: Any) -> Array:
        return reverse_drift(self.sde, self.kind, t, y, self.score(t, y))


def save_gaussian(path: str | os.PathLike, statistics: GaussianStatistics) -> Path:
    """Write `statistics` to `path` (an `.npz`; float32 arrays and the sample shape)."""
    path = Path(path).with_suffix(".npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(
        path,
        mean=np.asarray(statistics.mean),
        directions=np.asarray(statistics.directions),
        variances=np.asarray(statistics.variances),
        rest=np.asarray(statistics.rest),
        shape=np.asarray(statistics.shape, dtype=np.int64),
    )
    return path


def load_gaussian(path: str | os.PathLike, *, rank: int | None = None) -> GaussianStatistics:
    """Read statistics written by `save_gaussian`, kept to `rank` directions (default:
    all that were stored)."""
    with np.load(Path(path).with_suffix(".npz")) as stored:
        statistics = GaussianStatistics(
            jnp.asarray(stored["mean"]),
            jnp.asarray(stored["directions"]),
            jnp.asarray(stored["variances"]),
            jnp.asarray(stored["rest"]),
            tuple(int(s) for s in stored["shape"]),
        )
    return statistics if rank is None else statistics.truncated(rank)
