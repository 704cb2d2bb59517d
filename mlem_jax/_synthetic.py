"""A drift family with tunable gamma: truncated random-feature expansions."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


class RandomFeatureDrift(eqx.Module):
    """f(t, x) = -x + sum_j a_j u_j sin(w_j . x + b_j), on one state x of shape (d,).

    With a_j = j^-alpha, keeping the first M features leaves a truncation error of order
    M^-(alpha - 1/2) at a cost of order M d, so a family with M growing geometrically
    has gamma = 1 / (alpha - 1/2).
    """

    amplitudes: Float[Array, " M"]
    directions: Float[Array, "M d"]
    frequencies: Float[Array, "M d"]
    phases: Float[Array, " M"]

    def __call__(self, t: Any, x: Float[Array, " d"], args: Any) -> Float[Array, " d"]:
        features = jnp.sin(self.frequencies @ x + self.phases)
        return -x + (self.amplitudes * features) @ self.directions

    def truncate(self, num_features: int) -> "RandomFeatureDrift":
        """The same expansion keeping only its first `num_features` terms."""
        return RandomFeatureDrift(
            self.amplitudes[:num_features],
            self.directions[:num_features],
            self.frequencies[:num_features],
            self.phases[:num_features],
        )


def random_feature_drift(
    key: PRNGKeyArray, dim: int, num_features: int, alpha: float
) -> RandomFeatureDrift:
    """A random expansion with a_j = j^-alpha, unit u_j, w_j ~ N(0, I / d), b_j ~ U[0, 2 pi)."""
    if dim < 1 or num_features < 1:
        raise ValueError(f"`dim` and `num_features` must be >= 1, got {dim} and {num_features}.")
    if not alpha > 0.5:
        raise ValueError(f"`alpha` must be > 1/2 for the expansion to converge, got {alpha}.")
    k_dir, k_freq, k_phase = jax.random.split(key, 3)
    directions = jax.random.normal(k_dir, (num_features, dim))
    directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
    frequencies = jax.random.normal(k_freq, (num_features, dim)) / jnp.sqrt(dim)
    phases = jax.random.uniform(k_phase, (num_features,), maxval=2 * jnp.pi)
    amplitudes = jnp.arange(1, num_features + 1, dtype=jnp.float32) ** -alpha
    return RandomFeatureDrift(amplitudes, directions, frequencies, phases)


def random_feature_levels(
    key: PRNGKeyArray, dim: int, feature_counts: Sequence[int], alpha: float
) -> list[RandomFeatureDrift]:
    """Levels f^l keeping the first `feature_counts[l]` terms of one random expansion."""
    counts = list(feature_counts)
    if not counts or any(b <= a for a, b in zip(counts, counts[1:])):
        raise ValueError(f"`feature_counts` must be non-empty and increasing, got {counts}.")
    full = random_feature_drift(key, dim, counts[-1], alpha)
    return [full.truncate(m) for m in counts]
