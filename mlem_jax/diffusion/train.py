"""Denoising score matching with optax: several UNets trained side by side, EMA, resume;
or distillation of several UNets from a teacher UNet, with the same loop."""

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray

from .cascade import CascadeUNet
from .checkpoint import load_tree, save_tree
from .sde import VPSDE
from .unet import UNet


T_EPS = 1e-3  # smallest training time, the samplers' t_min


class TrainConfig(NamedTuple):
    """Hyper-parameters of a training run (all recorded in the manifests)."""

    steps: int = 2500
    batch_size: int = 64
    learning_rate: float = 2e-3
    warmup: int = 100
    ema_decay: float = 0.998
    seed: int = 0


class TrainState(NamedTuple):
    """Everything a resumed run needs: weights, EMA weights, optimiser state, counters.

    `params` and `ema` hold the networks trained (`UNet`s, or `ResidualMLP`s from
    `train_on_mixture`). `loss` is an exponential moving average (0.98) of each model's
    training loss.
    """

    params: tuple[Any, ...]
    ema: tuple[Any, ...]
    opt_state: tuple
    step: Array
    loss: Array
    seconds: Array


def _noised(sde: VPSDE, x0: Array, key: PRNGKeyArray) -> tuple[Array, Array, Array]:
    """(t, x_t, z): t ~ U(T_EPS, 1) per image and x_t = alpha(t) x0 + sigma(t) z."""
    t_key, z_key = jax.random.split(key)
    t = jax.random.uniform(t_key, (x0.shape[0],), minval=T_EPS, maxval=1.0)
    z = jax.random.normal(z_key, x0.shape, x0.dtype)
    return t, _per_image(sde.alpha(t)) * x0 + _per_image(sde.sigma(t)) * z, z


def _per_image(a: Array) -> Array:
    return a[:, None, None, None]


def dsm_loss(model: UNet, sde: VPSDE, x0: Float[Array, "b c h w"], key: PRNGKeyArray) -> Array:
    """Denoising score matching in noise form: E ||eps(x_t, t) - z||^2 per pixel, with
    x_t = alpha(t) x0 + sigma(t) z and t ~ U(T_EPS, 1)."""
    t, xt, z = _noised(sde, x0, key)
    return jnp.mean(jnp.square(jax.vmap(model)(t, xt) - z))


def distillation_loss(
    model: UNet, teacher: UNet, sde: VPSDE, x0: Float[Array, "b c h w"], key: PRNGKeyArray
) -> Array:
    """The squared difference of the reverse-SDE drifts of `model` and `teacher`, per
    pixel: E (beta(t) / sigma(t))^2 ||eps(x_t, t) - eps_teacher(x_t, t)||^2 on the same
    noised images as `dsm_loss`.

    Times the number of pixels this is E||f^model - f^teacher||^2, the quantity ML-EM's
    randomisation variance is made of (v_l); the teacher is not differentiated."""
    t, xt, _ = _noised(sde, x0, key)
    gap = jax.vmap(model)(t, xt) - jax.lax.stop_gradient(jax.vmap(teacher)(t, xt))
    return jnp.mean(_per_image(jnp.square(sde.beta(t) / sde.sigma(t))) * jnp.square(gap))


def optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay to a tenth of the peak rate."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        config.learning_rate,
        config.warmup,
        max(config.steps, config.warmup + 1),
        config.learning_rate / 10,
    )
    return optax.adam(schedule)


def ema_decay(decay: float, step: Array) -> Array:
    """The EMA decay at `step`, warmed up as min(decay, (1 + step) / (10 + step)): a
    constant decay would keep decay^step of the random initial weights (a third of them
    after 500 steps at 0.998)."""
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def init_state(models: Sequence[Any], config: TrainConfig) -> TrainState:
    """A fresh `TrainState` for `models` (EMA weights start at the initial weights)."""
    params = tuple(models)
    opt_state = tuple(optimizer(config).init(eqx.filter(m, eqx.is_array)) for m in params)
    zero = jnp.zeros(len(params))
    return TrainState(params, params, opt_state, jnp.asarray(0), zero, jnp.asarray(0.0))


class ImageObjective(NamedTuple):
    """The loss on a batch of images: `dsm_loss` (no teacher) or `distillation_loss`."""

    sde: VPSDE

    def __call__(self, model: UNet, teacher: UNet | None, batch: Array, key: PRNGKeyArray) -> Array:
        if teacher is None:
            return dsm_loss(model, self.sde, batch, key)
        return distillation_loss(model, teacher, self.sde, batch, key)


class ExitsObjective(NamedTuple):
    """The joint loss of a network with early exits (a `CascadeUNet`) on a batch of
    images: the mean over exits of each exit's denoising score matching loss
    (`dsm_loss`'s E ||eps_j(x_t, t) - z||^2 per pixel), or with a teacher of each exit's
    squared distance to the teacher's prediction, on the same noised images.

    - `consistency`: weight of sum_j E ||eps_j - eps_(j+1)||^2 per pixel over
        neighbouring exits (the next exit not differentiated): the level differences
        v_l of ML-EM, in noise units. 0 leaves them to the fit of each exit.
    """

    sde: VPSDE
    consistency: float = 0.0

    def __call__(self, model: Any, teacher: Any, batch: Array, key: PRNGKeyArray) -> Array:
        t, xt, z = _noised(self.sde, batch, key)
        exits = jax.vmap(lambda s, x: model.exits(s, x, model.num_exits))(t, xt)
        target = z if teacher is None else jax.lax.stop_gradient(jax.vmap(teacher)(t, xt))
        loss = sum(jnp.mean(jnp.square(eps - target)) for eps in exits) / len(exits)
        if self.consistency:
            loss = loss + self.consistency * exit_gaps(exits)
        return jnp.asarray(loss)


def exit_gaps(exits: Sequence[Array]) -> Array:
    """sum_j mean ||eps_j - eps_(j+1)||^2 over neighbouring exits, the next exit not
    differentiated: the consistency penalty of the early-exit objectives."""
    return sum(
        (
            jnp.mean(jnp.square(lower - jax.lax.stop_gradient(upper)))
            for lower, upper in zip(exits, exits[1:])
        ),
        jnp.asarray(0.0),
    )


@functools.cache
def build_train_step(config: TrainConfig, objective: Callable) -> Callable:
    """`step(state, data, key, teacher) -> state`: one Adam step per model, on the same
    data, of `objective(model, teacher, data, key)` (e.g. an `ImageObjective`).

    Cached on (config, objective), so a resumed run in the same process reuses the
    compiled step: pass a hashable objective."""
    transform = optimizer(config)

    @eqx.filter_jit
    def step(state: TrainState, data: Any, key: PRNGKeyArray, teacher: Any) -> TrainState:
        params, ema, opt_states, losses = [], [], [], []
        for i, (model, average, opt_state) in enumerate(
            zip(state.params, state.ema, state.opt_state)
        ):
            loss, grads = eqx.filter_value_and_grad(objective)(
                model, teacher, data, jax.random.fold_in(key, i)
            )
            updates, opt_state = transform.update(grads, opt_state)
            model = eqx.apply_updates(model, updates)
            decay = ema_decay(config.ema_decay, state.step)
            average = jax.tree_util.tree_map(
                lambda e, p: decay * e + (1 - decay) * p,
                eqx.filter(average, eqx.is_array),
                eqx.filter(model, eqx.is_array),
            )
            params.append(model)
            ema.append(eqx.combine(average, model))
            opt_states.append(opt_state)
            losses.append(loss)
        losses = jnp.stack(losses)
        smoothed = jnp.where(state.step == 0, losses, 0.98 * state.loss + 0.02 * losses)
        return TrainState(
            tuple(params), tuple(ema), tuple(opt_states), state.step + 1, smoothed, state.seconds
        )

    return step


def _batch(images: np.ndarray, config: TrainConfig, step: int) -> np.ndarray:
    """The step's batch: indices from a generator seeded by (seed, step), so resuming
    replays the same data order."""
    rng = np.random.default_rng([config.seed, step])
    return images[rng.integers(0, len(images), config.batch_size)]


def train(
    models: Sequence[UNet | CascadeUNet],
    images: np.ndarray,
    config: TrainConfig,
    *,
    sde: VPSDE = VPSDE(),
    teacher: UNet | None = None,
    objective: Callable | None = None,
    state_path: str | os.PathLike | None = None,
    save_every: int = 250,
    on_save: Callable[[TrainState], None] | None = None,
    progress: bool = True,
) -> TrainState:
    """Train `models` side by side with denoising score matching, or distil them from
    `teacher`, resuming if possible.

    **Arguments:**

    - `models`: the initial UNets or `CascadeUNet`s (fresh, or trained ones to distil);
        when resuming only their structure is used (`eqx.filter_eval_shape(UNet, ...)`
        is enough).
    - `images`: training images (n, C, H, W) in [-1, 1].
    - `config`: a `TrainConfig`.
    - `sde`: the forward process.
    - `teacher`: None for denoising score matching (`dsm_loss`); a trained UNet to make
        every model imitate it (`distillation_loss`).
    - `objective`: another loss `objective(model, teacher, images, key)`, hashable
        (e.g. `ExitsObjective` for a `CascadeUNet`); default `ImageObjective(sde)`.
    - `state_path`: file of the full training state; if it exists the run resumes from
        it, and it is rewritten every `save_every` steps and at the end.
    - `on_save`: called with the state whenever it is saved (e.g. to write checkpoints).
    - `progress`: show a tqdm progress bar with the smoothed losses.

    **Returns:**

    The final `TrainState`.
    """
    if len(images) == 0 or np.ndim(images) != 4:
        raise ValueError(f"`images` must have shape (n, C, H, W), n > 0, got {np.shape(images)}.")
    return run_training(
        models,
        lambda n: jnp.asarray(_batch(images, config, n)),
        config,
        ImageObjective(sde) if objective is None else objective,
        teacher=teacher,
        state_path=state_path,
        save_every=save_every,
        on_save=on_save,
        progress=progress,
    )


def run_training(
    models: Sequence[Any],
    data_at: Callable[[int], Any],
    config: TrainConfig,
    objective: Callable,
    *,
    teacher: Any = None,
    state_path: str | os.PathLike | None = None,
    save_every: int = 250,
    on_save: Callable[[TrainState], None] | None = None,
    progress: bool = True,
) -> TrainState:
    """The training loop of `train`, for any models and objective: step n takes one Adam
    step per model on `objective(model, teacher, data_at(n), key_n)`, resuming from
    `state_path` if it exists (see `train` for the other arguments)."""
    from tqdm.auto import tqdm

    if state_path is not None and Path(state_path).exists():
        state = load_tree(state_path, eqx.filter_eval_shape(init_state, models, config))
    else:
        state = init_state(models, config)
    step_fn = build_train_step(config, objective)
    key = jax.random.key(config.seed)
    start, clock = int(state.step), time.perf_counter()

    def save(state: TrainState) -> TrainState:
        state = state._replace(seconds=state.seconds + time.perf_counter() - clock)
        if state_path is not None:
            save_tree(state_path, state)
        if on_save is not None:
            on_save(state)
        return state

    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        disable=not progress,
        desc="training",
    )
    for n in bar:
        state = step_fn(state, data_at(n), jax.random.fold_in(key, n), teacher)
        if (n + 1) % 25 == 0:
            bar.set_postfix(loss=" ".join(f"{x:.4f}" for x in np.asarray(state.loss)))
        if (n + 1) % save_every == 0 or n + 1 == config.steps:
            state, clock = save(state), time.perf_counter()
    return state
