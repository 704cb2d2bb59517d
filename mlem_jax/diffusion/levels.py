"""The shipped level family: which UNets, where their checkpoints live, train and load."""

import os
from collections.abc import Sequence
from pathlib import Path

import equinox as eqx
import jax

from .checkpoint import CheckpointError, load_model, save_model
from .data import load_dataset
from .train import TrainConfig, TrainState, train
from .unet import UNet

WIDTHS = (2, 4, 8, 16)
MULTIPLIERS = (1, 2, 2)
CHECKPOINTS = Path(__file__).parent / "checkpoints"


def level_name(width: int) -> str:
    """File stem of the checkpoint of the UNet of this width."""
    return f"unet_w{width}"


def build_family(widths: Sequence[int] = WIDTHS, *, multipliers: Sequence[int] = MULTIPLIERS,
                 channels: int = 1, seed: int = 0, shapes_only: bool = False) -> list[UNet]:
    """Freshly initialised UNets, one per width, cheapest first; with `shapes_only`,
    their structure with `jax.ShapeDtypeStruct` leaves (fast: no eager initialisation)."""
    if list(widths) != sorted(set(widths)):
        raise ValueError(f"`widths` must be strictly increasing, got {tuple(widths)}.")
    keys = jax.random.split(jax.random.key(seed), len(widths))
    build = eqx.filter_eval_shape if shapes_only else (lambda f, *a, **k: f(*a, **k))
    return [build(UNet, w, multipliers, channels, key=k) for w, k in zip(widths, keys)]


def train_levels(
    directory: str | os.PathLike = CHECKPOINTS,
    *,
    dataset: str = "mnist",
    widths: Sequence[int] = WIDTHS,
    config: TrainConfig = TrainConfig(),
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainState:
    """Train one UNet per width on `dataset`'s training split; write their EMA weights
    as checkpoints in `directory` whenever the training state is saved.

    **Arguments:**

    - `directory`: where the checkpoints `unet_w<width>.eqx/.json` go.
    - `dataset`: `"mnist"` or `"digits"` (see `load_dataset`).
    - `widths`: the level widths, cheapest first.
    - `config`: a `TrainConfig`.
    - `state_path`: the resumable training state (default `<directory>/train_state.eqx`).
    - `progress`: show a progress bar.

    **Returns:**

    The final `TrainState`.
    """
    directory = Path(directory)
    data = load_dataset(dataset, "train")
    state_path = directory / "train_state.eqx" if state_path is None else state_path
    models = build_family(widths, channels=data.images.shape[1], seed=config.seed,
                          shapes_only=Path(state_path).exists())

    def write_checkpoints(state: TrainState) -> None:
        for width, model, loss in zip(widths, state.ema, state.loss.tolist()):
            save_model(
                directory / level_name(width), model, dataset=dataset,
                image_shape=list(data.images.shape[1:]), train_images=len(data.images),
                steps=int(state.step), final_loss=loss, train_seconds=float(state.seconds),
                config=config._asdict(),
            )

    return train(models, data.images, config, state_path=state_path,
                 on_save=write_checkpoints, progress=progress)


def load_levels(directory: str | os.PathLike = CHECKPOINTS, widths: Sequence[int] | None = None
                ) -> tuple[list[UNet], list[dict]]:
    """Load the checkpoints of `widths` (default: every `unet_w*` in `directory`).

    **Returns:**

    `(models, manifests)`, cheapest first. Raises `CheckpointError` if none is found.
    """
    directory = Path(directory)
    if widths is None:
        found = sorted(directory.glob("unet_w*.json"), key=lambda p: int(p.stem[6:]))
        widths = [int(p.stem[6:]) for p in found]
    if not widths:
        raise CheckpointError(f"no UNet checkpoints (unet_w*.json) in {directory}.")
    loaded = [load_model(directory / level_name(w)) for w in widths]
    for w, (model, _) in zip(widths, loaded):
        if model.width != w:
            raise CheckpointError(f"{level_name(w)} in {directory} holds width {model.width}.")
    return [m for m, _ in loaded], [manifest for _, manifest in loaded]
