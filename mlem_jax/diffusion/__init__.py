"""Diffusion models for ML-EM: UNet levels and a UNet with early exits, the VP and VE
SDEs, training, sampling, metrics.

Needs the `diffusion` extra: `pip install 'mlem-jax[diffusion]'`.
"""

import importlib.util


_EXTRA = ("optax", "mlxtend", "sklearn", "tqdm", "matplotlib")
_missing = [name for name in _EXTRA if importlib.util.find_spec(name) is None]
if _missing:
    raise ModuleNotFoundError(
        f"`mlem_jax.diffusion` needs the `diffusion` extra, which provides "
        f"{', '.join(_missing)}: pip install 'mlem-jax[diffusion]'",
        name=_missing[0],
    )
del _missing

from .brownian import brownian_path_on, family_brownian_path, grid_brownian_path
from .calibrate import calibrate, probabilities_for, read_calibration, write_calibration
from .cascade import CascadeFamily, CascadeUNet
from .checkpoint import CheckpointError, load_model, save_model
from .classifier import Classifier, train_classifier
from .data import ImageSplit, load_dataset, load_digits, load_mnist
from .gaussian import (
    GaussianDrift,
    GaussianStatistics,
    fit_gaussian,
    gaussian_statistics,
    load_gaussian,
    save_gaussian,
)
from .grids import DEFAULT_GRID, GRIDS, edm_grid, log_snr_grid, time_grid, uniform_grid
from .levels import (
    CASCADE_CHECKPOINTS,
    CHECKPOINTS,
    WIDTHS,
    build_family,
    level_widths,
    load_cascade,
    load_levels,
    load_sampling_levels,
    train_cascade,
    train_levels,
)
from .metrics import classifier_features, frechet_distance, quality_score, strong_error
from .sample import (
    T_MIN,
    initial_noise,
    method_cost,
    sample,
    score_levels,
    stitch_evaluations,
    stitch_switch,
)
from .sde import (
    SDE,
    VESDE,
    VPSDE,
    Drift,
    NoisePredictor,
    ScoreDrift,
    StitchedDrift,
    reverse_drift,
)
from .train import ExitsObjective, TrainConfig, TrainState, dsm_loss, train
from .unet import UNet, parameter_count


__all__ = [
    "CASCADE_CHECKPOINTS",
    "CHECKPOINTS",
    "CascadeFamily",
    "CascadeUNet",
    "CheckpointError",
    "Classifier",
    "DEFAULT_GRID",
    "Drift",
    "ExitsObjective",
    "GRIDS",
    "GaussianDrift",
    "GaussianStatistics",
    "ImageSplit",
    "NoisePredictor",
    "SDE",
    "ScoreDrift",
    "StitchedDrift",
    "T_MIN",
    "TrainConfig",
    "TrainState",
    "UNet",
    "VESDE",
    "VPSDE",
    "WIDTHS",
    "brownian_path_on",
    "build_family",
    "calibrate",
    "classifier_features",
    "dsm_loss",
    "edm_grid",
    "family_brownian_path",
    "fit_gaussian",
    "frechet_distance",
    "gaussian_statistics",
    "grid_brownian_path",
    "initial_noise",
    "level_widths",
    "load_dataset",
    "load_gaussian",
    "load_digits",
    "load_cascade",
    "load_levels",
    "load_sampling_levels",
    "load_mnist",
    "load_model",
    "log_snr_grid",
    "method_cost",
    "parameter_count",
    "probabilities_for",
    "quality_score",
    "read_calibration",
    "reverse_drift",
    "sample",
    "save_gaussian",
    "save_model",
    "score_levels",
    "stitch_evaluations",
    "stitch_switch",
    "strong_error",
    "time_grid",
    "train",
    "train_cascade",
    "train_classifier",
    "train_levels",
    "uniform_grid",
    "write_calibration",
]
