"""Training latent noise predictors on fresh samples of a Gaussian mixture: denoising
score matching or the exact score, one exit or every exit, distillation from a teacher."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PRNGKeyArray

from .latent_models import ResidualMLP
from .mixture import GaussianMixture
from .sde import VPSDE
from .train import T_EPS, TrainConfig, TrainState, exit_gaps, run_training


TARGETS = ("dsm", "exact")


class MixtureObjective(NamedTuple):
    """The loss of a `ResidualMLP` on `batch_size` fresh samples of the mixture, noised
    at t ~ U(T_EPS, 1): x_t = alpha(t) x_0 + sigma(t) z.

    - `target`: what each exit's noise prediction eps_j is fitted to: `"dsm"`, the noise
        z (denoising score matching, as for real data), or `"exact"`, the exact
        -sigma(t) grad log p_t(x_t) (what denoising score matching converges to, without
        its sampling noise). With a teacher, the teacher's prediction instead.
    - `every_exit`: fit every exit (a jointly trained family of early exits), or only the
        last one (a single level).
    - `exit_weights`: with `every_exit`, the weight of each exit's term (normalised to
        sum to 1); None weighs them equally.
    - `consistency`: weight of sum_j mean ||eps_j - eps_(j+1)||^2 over neighbouring exits
        (the next exit not differentiated): the level differences v_l that ML-EM's
        randomisation error is made of, in noise units.

    Each term is a mean over the batch and the d coordinates.
    """

    sde: VPSDE
    batch_size: int
    target: str = "dsm"
    every_exit: bool = True
    consistency: float = 0.0
    exit_weights: tuple[float, ...] | None = None

    def __call__(
        self,
        model: ResidualMLP,
        teacher: ResidualMLP | None,
        mixture: GaussianMixture,
        key: PRNGKeyArray,
    ) -> Array:
        if self.target not in TARGETS:
            raise ValueError(f"`target` must be one of {TARGETS}, got {self.target!r}.")
        data_key, time_key, noise_key = jax.random.split(key, 3)
        x0 = mixture.sample(data_key, self.batch_size)
        t = jax.random.uniform(time_key, (self.batch_size,), minval=T_EPS, maxval=1.0)
        z = jax.random.normal(noise_key, x0.shape)
        sigma = self.sde.sigma(t)[:, None]
        xt = self.sde.alpha(t)[:, None] * x0 + sigma * z
        if teacher is not None:
            target = jax.lax.stop_gradient(jax.vmap(teacher)(t, xt))
        elif self.target == "exact":
            scores = jax.vmap(lambda s, x: mixture.noised(self.sde, s).score(x))(t, xt)
            target = -sigma * scores
        else:
            target = z
        outputs = jax.vmap(lambda s, x: model.exits(s, x, model.num_exits))(t, xt)
        fitted = outputs if self.every_exit else outputs[-1:]
        weights = (
            np.ones(len(fitted))
            if self.exit_weights is None
            else np.asarray(self.exit_weights, np.float64)
        )
        if weights.shape != (len(fitted),) or not (weights >= 0).all() or weights.sum() == 0:
            raise ValueError(
                f"`exit_weights` must be {len(fitted)} non-negative weights, not all 0; got "
                f"{self.exit_weights}."
            )
        weights = weights / weights.sum()
        loss = sum(w * jnp.mean(jnp.square(eps - target)) for w, eps in zip(weights, fitted))
        if self.consistency:
            loss = loss + self.consistency * exit_gaps(outputs)
        return jnp.asarray(loss)


def train_on_mixture(
    models: list[ResidualMLP],
    mixture: GaussianMixture,
    config: TrainConfig,
    objective: MixtureObjective,
    *,
    teacher: ResidualMLP | None = None,
    state_path: Any = None,
    progress: bool = True,
) -> TrainState:
    """Train `models` side by side on `objective` with fresh mixture samples at every
    step (`config.batch_size` is ignored: the objective draws its own batch); the loop,
    optimiser, EMA and resume of `mlem_jax.diffusion.train`.

    **Returns:**

    The final `TrainState` (`state.ema` holds the averaged weights).
    """
    return run_training(
        models,
        lambda n: mixture,
        config,
        objective,
        teacher=teacher,
        state_path=state_path,
        progress=progress,
    )
