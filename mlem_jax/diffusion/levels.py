"""The shipped levels: the four UNets and the CascadeUNet, where their checkpoints live,
how they are trained and loaded."""

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import equinox as eqx
import jax
import numpy as np

from .._family import FamilyLevel, FamilyWithBase
from .cascade import CascadeFamily, CascadeUNet
from .checkpoint import CheckpointError, load_model, save_model
from .data import load_dataset
from .gaussian import GaussianDrift, fit_gaussian, load_gaussian, save_gaussian
from .sample import score_levels
from .sde import VPSDE, ScoreDrift
from .train import ExitsObjective, TrainConfig, TrainState, train
from .unet import UNet


WIDTHS = (2, 4, 8, 16)
CASCADE = "cascade"  # file stem of the shipped CascadeUNet's checkpoint
CASCADE_CONFIG = TrainConfig(steps=4000, batch_size=64, learning_rate=2e-3, ema_decay=0.999)
MULTIPLIERS = (1, 2, 2)
CHECKPOINTS = Path(__file__).parent / "checkpoints"  # shipped: read, never written
CASCADE_CHECKPOINTS = CHECKPOINTS / "cascade"  # the shipped CascadeUNet, the default levels
GAUSSIAN_STATISTICS = CHECKPOINTS / "gaussian_mnist.npz"
"""The shipped statistics of the Gaussian base (`save_gaussian`): the mean and covariance
of MNIST's training split, the data of the shipped networks, kept to its 628 directions
of positive variance (`fit_shipped_gaussian`)."""
BASES = ("none", "gaussian")
PACKAGE = Path(__file__).parents[1]
_TRAINING_KEYS = ("objective", "steps", "final_loss", "train_seconds", "config", "notes")


def user_directory() -> Path:
    """Where mlem-jax writes what it makes unless told where: `$XDG_CACHE_HOME/mlem-jax`,
    or `~/.cache/mlem-jax`. Never the installed package."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mlem-jax"


def in_package(path: str | os.PathLike) -> bool:
    """Whether `path` lies inside the installed `mlem_jax` package."""
    return Path(path).resolve().is_relative_to(PACKAGE.resolve())


def output_directory(directory: str | os.PathLike) -> Path:
    """`directory`, or `user_directory() / "checkpoints"` when it is inside the installed
    package (the shipped checkpoints are read-only defaults)."""
    return user_directory() / "checkpoints" if in_package(directory) else Path(directory)


def level_name(width: int) -> str:
    """File stem of the checkpoint of the UNet of this width."""
    return f"unet_w{width}"


def build_family(
    widths: Sequence[int] = WIDTHS,
    *,
    multipliers: Sequence[int] = MULTIPLIERS,
    channels: int = 1,
    seed: int = 0,
    shapes_only: bool = False,
) -> list[UNet]:
    """Freshly initialised UNets, one per width, cheapest first; with `shapes_only`,
    their structure with `jax.ShapeDtypeStruct` leaves (fast: no eager initialisation)."""
    if list(widths) != sorted(set(widths)):
        raise ValueError(f"`widths` must be strictly increasing, got {tuple(widths)}.")
    keys = jax.random.split(jax.random.key(seed), len(widths))
    build = eqx.filter_eval_shape if shapes_only else (lambda f, *a, **k: f(*a, **k))
    return [build(UNet, w, multipliers, channels, key=k) for w, k in zip(widths, keys)]


def _save_trained(
    path: Path,
    model: UNet | CascadeUNet,
    dataset: str,
    images,
    state: TrainState,
    loss: float,
    config: TrainConfig,
    **extra,
) -> None:
    """Write a trained network's checkpoint at `path` with the manifest entries of its
    training run."""
    save_model(
        path,
        model,
        dataset=dataset,
        image_shape=list(images.shape[1:]),
        train_images=len(images),
        steps=int(state.step),
        final_loss=loss,
        train_seconds=float(state.seconds),
        config=config._asdict(),
        **extra,
    )


def train_levels(
    directory: str | os.PathLike | None = None,
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

    - `directory`: where the checkpoints `unet_w<width>.eqx/.json` go (default
        `user_directory() / "checkpoints"`).
    - `dataset`: `"mnist"` or `"digits"` (see `load_dataset`).
    - `widths`: the level widths, cheapest first.
    - `config`: a `TrainConfig`.
    - `state_path`: the resumable training state (default `<directory>/train_state.eqx`).
    - `progress`: show a progress bar.

    **Returns:**

    The final `TrainState`.
    """
    directory = user_directory() / "checkpoints" if directory is None else Path(directory)
    data = load_dataset(dataset, "train")
    state_path = directory / "train_state.eqx" if state_path is None else state_path
    models = build_family(
        widths,
        channels=data.images.shape[1],
        seed=config.seed,
        shapes_only=Path(state_path).exists(),
    )

    def write_checkpoints(state: TrainState) -> None:
        for model, loss in zip(state.ema, state.loss.tolist()):
            _save_trained(
                directory / level_name(model.width),
                model,
                dataset,
                data.images,
                state,
                loss,
                config,
                objective="denoising score matching",
            )

    return train(
        models,
        data.images,
        config,
        state_path=state_path,
        on_save=write_checkpoints,
        progress=progress,
    )


def distill_levels(
    directory: str | os.PathLike = CHECKPOINTS,
    *,
    out_dir: str | os.PathLike | None = None,
    config: TrainConfig = TrainConfig(steps=1500, learning_rate=1e-3, warmup=50),
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainState:
    """Distil every level but the largest from the largest (`distillation_loss`),
    starting from their checkpoints in `directory`, and write the EMA weights to
    `out_dir` whenever the training state is saved, with a copy of the teacher's
    checkpoint, so that `out_dir` holds the whole distilled family.

    Independently trained levels differ by their training noise as well as by their
    capacity; ML-EM pays for every bit of f^l - f^(l-1) (v_l), so levels that imitate
    the top one are cheaper to correct. The top level, and so EM and the reference, is
    unchanged. Each manifest keeps the level's earlier training under `pretrained` and
    names the teacher by its content hash.

    **Arguments:**

    - `directory`: the trained levels (`unet_w<width>`, at least two).
    - `out_dir`: where the distilled checkpoints go; default `directory` itself, or
        `user_directory() / "checkpoints"` when `directory` is inside the installed
        package (the shipped levels are never overwritten).
    - `config`: a `TrainConfig` (data order, steps, learning rate).
    - `state_path`: the resumable state (default `<out_dir>/distill_state.eqx`).
    - `progress`: show a progress bar.

    **Returns:**

    The final `TrainState` (its models are the students, cheapest first).
    """
    directory = Path(directory)
    models, manifests = load_levels(directory)
    if len(models) < 2:
        raise ValueError(
            f"distillation needs at least two levels in {directory}, found {len(models)}."
        )
    (*students, teacher), teacher_manifest = models, manifests[-1]
    dataset = teacher_manifest["dataset"]
    data = load_dataset(dataset, "train")
    pretrained = [
        m.get("pretrained", {k: m[k] for k in m if k in _TRAINING_KEYS}) for m in manifests[:-1]
    ]
    teacher_record = {"width": teacher.width, "sha256": teacher_manifest["sha256"]}

    out_dir = output_directory(directory) if out_dir is None else Path(out_dir)
    if out_dir.resolve() != directory.resolve():
        out_dir.mkdir(parents=True, exist_ok=True)
        for suffix in (".eqx", ".json"):
            name = level_name(teacher.width) + suffix
            shutil.copyfile(directory / name, out_dir / name)

    def write_checkpoints(state: TrainState) -> None:
        for model, loss, before in zip(state.ema, state.loss.tolist(), pretrained):
            _save_trained(
                out_dir / level_name(model.width),
                model,
                dataset,
                data.images,
                state,
                loss,
                config,
                objective="distillation",
                teacher=teacher_record,
                pretrained=before,
            )

    state_path = out_dir / "distill_state.eqx" if state_path is None else state_path
    return train(
        students,
        data.images,
        config,
        teacher=teacher,
        state_path=state_path,
        on_save=write_checkpoints,
        progress=progress,
    )


def load_levels(
    directory: str | os.PathLike = CHECKPOINTS, widths: Sequence[int] | None = None
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
    loaded = [load_model(directory / level_name(w), {"model": "UNet"}) for w in widths]
    models = [cast(UNet, model) for model, _ in loaded]
    for w, model in zip(widths, models):
        if model.width != w:
            raise CheckpointError(f"{level_name(w)} in {directory} holds width {model.width}.")
    return models, [manifest for _, manifest in loaded]


def train_cascade(
    directory: str | os.PathLike | None = None,
    *,
    dataset: str = "mnist",
    widths: Sequence[int] = WIDTHS,
    config: TrainConfig = CASCADE_CONFIG,
    consistency: float = 0.0,
    state_path: str | os.PathLike | None = None,
    progress: bool = True,
) -> TrainState:
    """Train a `CascadeUNet` with stages of `widths` on `dataset`'s training split, every
    exit at once (`ExitsObjective`); write its EMA weights as the checkpoint `cascade`
    in `directory` whenever the training state is saved.

    **Arguments:**

    - `directory`: where `cascade.eqx/.json` go (default
        `user_directory() / "checkpoints"`).
    - `dataset`: `"mnist"` or `"digits"` (see `load_dataset`).
    - `widths`: the stages' widths, cheapest first.
    - `config`: a `TrainConfig`.
    - `consistency`: the weight of the exits' differences in the loss (`ExitsObjective`).
    - `state_path`: the resumable training state (default
        `<directory>/cascade_state.eqx`).
    - `progress`: show a progress bar.

    **Returns:**

    The final `TrainState`.
    """
    directory = user_directory() / "checkpoints" if directory is None else Path(directory)
    data = load_dataset(dataset, "train")
    state_path = directory / "cascade_state.eqx" if state_path is None else state_path
    channels, key = data.images.shape[1], jax.random.key(config.seed)
    if Path(state_path).exists():
        model = eqx.filter_eval_shape(CascadeUNet, widths, MULTIPLIERS, channels, key=key)
    else:
        model = CascadeUNet(widths, MULTIPLIERS, channels, key=key)

    def write_checkpoint(state: TrainState) -> None:
        _save_trained(
            directory / CASCADE,
            state.ema[0],
            dataset,
            data.images,
            state,
            float(state.loss[0]),
            config,
            objective="denoising score matching on every exit",
            consistency=consistency,
        )

    return train(
        [model],
        data.images,
        config,
        objective=ExitsObjective(VPSDE(), consistency),
        state_path=state_path,
        on_save=write_checkpoint,
        progress=progress,
    )


def load_cascade(directory: str | os.PathLike = CHECKPOINTS) -> tuple[CascadeUNet, dict]:
    """Load the `CascadeUNet` checkpoint `cascade` in `directory`: `(model, manifest)`;
    `CheckpointError` if it is missing or of another architecture."""
    model, manifest = load_model(Path(directory) / CASCADE, {"model": "CascadeUNet"})
    return cast(CascadeUNet, model), manifest


def load_sampling_levels(
    directory: str | os.PathLike = CASCADE_CHECKPOINTS, kind: str = "sde"
) -> tuple[CascadeFamily | list[ScoreDrift], list[dict]]:
    """The levels stored in `directory` as `kind` drifts (`"sde"` or `"ode"`): the
    `CascadeFamily` of its `cascade` checkpoint if it has one, else one `ScoreDrift`
    per `unet_w*` checkpoint (`load_levels`).

    **Returns:**

    `(levels, manifests)`: the manifests of the checkpoints read, the last one of the
    top level. Raises `CheckpointError` if `directory` holds neither.
    """
    directory = Path(directory)
    if (directory / f"{CASCADE}.json").exists():
        model, manifest = load_cascade(directory)
        return CascadeFamily(model, VPSDE(), kind), [manifest]
    if not any(directory.glob("unet_w*.json")):
        raise CheckpointError(
            f"no checkpoints in {directory}: neither a CascadeUNet ({CASCADE}.json) nor "
            "UNets (unet_w*.json)."
        )
    models, manifests = load_levels(directory)
    return score_levels(models, kind), manifests


def level_widths(levels: CascadeFamily | Sequence[ScoreDrift]) -> list[int]:
    """The network width of each level: a cascade's stage widths, or each UNet's."""
    if isinstance(levels, CascadeFamily):
        return list(levels.model.widths[: len(levels)])
    return [cast(UNet, level.model).width for level in levels]


def level_names(levels: Any) -> list[str]:
    """A short name for each level, for tables: `"gaussian"` for the Gaussian base, the
    network's width otherwise (a cascade's stage, a UNet, an exit of a cascade)."""
    if isinstance(levels, FamilyWithBase):
        return ["gaussian", *level_names(levels.family)]
    if isinstance(levels, CascadeFamily):
        return [str(w) for w in level_widths(levels)]
    names = []
    for level in levels:
        if isinstance(level, GaussianDrift):
            names.append("gaussian")
        elif isinstance(level, FamilyLevel) and isinstance(level.family, CascadeFamily):
            names.append(str(level.family.model.widths[level.index]))
        else:
            names.append(str(cast(UNet, cast(ScoreDrift, level).model).width))
    return names


def ladder_key(kind: str, base: str = "none", top_only: bool = False) -> str:
    """The entry of a calibration file that holds the calibration of a ladder (see
    `with_base`): `kind` for the networks, `"<kind>+gaussian"` with the Gaussian base
    under them, `"<kind>+gaussian_top"` under the top network alone."""
    if base not in BASES:
        raise ValueError(f"`base` must be one of {BASES}, got {base!r}.")
    if base == "none":
        if top_only:
            raise ValueError("`top_only` needs a base level: with base='none' it is EM.")
        return kind
    return f"{kind}+{base}{'_top' if top_only else ''}"


def fit_shipped_gaussian(path: str | os.PathLike = GAUSSIAN_STATISTICS) -> Path:
    """Fit the Gaussian base's statistics to the training split of MNIST, the data the
    shipped networks were trained on, and write them to `path`: every direction of
    positive variance (the padding and the always-black pixels have none), so the form
    is the full-rank one with a zero rest."""
    images = load_dataset("mnist", "train").images
    full = fit_gaussian(images)
    positive = int(np.sum(np.asarray(full.variances) > 1e-6 * float(full.variances[0])))
    return save_gaussian(path, fit_gaussian(images, rank=positive))


def with_base(
    levels: CascadeFamily | Sequence[ScoreDrift],
    base: str = "gaussian",
    *,
    top_only: bool = False,
    statistics: str | os.PathLike = GAUSSIAN_STATISTICS,
    rank: int | None = None,
) -> Any:
    """`levels` with the data's Gaussian score (`GaussianDrift` of the `statistics` file,
    kept to `rank` directions) as a new level 1, of the same SDE and kind: a
    `FamilyWithBase` for a `LevelFamily`, else the list [base, *levels]. With
    `top_only`, the two-level ladder [base, top level]: ML-EM on one network and a
    level that costs next to nothing. `base="none"` returns `levels` unchanged (or the
    top level alone with `top_only`).

    **Returns:**

    A `FamilyWithBase`, a `CascadeFamily` (`base="none"`) or a list of levels.
    """
    if base not in BASES:
        raise ValueError(f"`base` must be one of {BASES}, got {base!r}.")
    chosen = [levels[-1]] if top_only else levels
    if base == "none":
        return chosen
    process = levels if isinstance(levels, CascadeFamily) else levels[-1]
    gaussian = GaussianDrift(load_gaussian(statistics, rank=rank), process.sde, process.kind)
    if isinstance(chosen, CascadeFamily):
        return FamilyWithBase(gaussian, chosen)
    return [gaussian, *chosen]
