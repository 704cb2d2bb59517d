"""Checkpoints: equinox-serialised weights plus a JSON manifest, written atomically."""

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax

from .cascade import CascadeUNet
from .classifier import Classifier
from .latent_models import ResidualMLP
from .sde import VPSDE
from .unet import UNet, parameter_count


FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupted, or of another architecture."""


Model = UNet | CascadeUNet | Classifier | ResidualMLP


def architecture(model: Model) -> dict:
    """The class name and hyper-parameters that rebuild `model`'s structure."""
    if isinstance(model, UNet):
        return {
            "model": "UNet",
            "width": model.width,
            "multipliers": list(model.multipliers),
            "channels": model.channels,
            **({"extra_channels": model.extra_channels} if model.extra_channels else {}),
        }
    if isinstance(model, CascadeUNet):
        return {
            "model": "CascadeUNet",
            "widths": list(model.widths),
            "multipliers": list(model.multipliers),
            "channels": model.channels,
        }
    if isinstance(model, Classifier):
        return {
            "model": "Classifier",
            "width": model.width,
            "channels": model.channels,
            "classes": model.classes,
            "image_size": model.image_size,
            "features": model.dense.out_features,
        }
    if isinstance(model, ResidualMLP):
        return {
            "model": "ResidualMLP",
            "dim": model.dim,
            "stream": list(model.stream),
            "hidden": list(model.hidden),
            "inject_input": model.inject_input,
            "beta": [model.sde.beta_min, model.sde.beta_max],
        }
    raise TypeError(
        "`model` must be a UNet, a CascadeUNet, a Classifier or a ResidualMLP, got "
        f"{type(model).__name__}."
    )


def _skeleton(stored: dict) -> Model:
    """The stored architecture with `jax.ShapeDtypeStruct` leaves: only shapes, so no
    (slow, eager) random initialisation."""
    key = jax.random.key(0)
    try:
        if stored.get("model") == "UNet":
            return eqx.filter_eval_shape(
                UNet,
                stored["width"],
                tuple(stored["multipliers"]),
                stored["channels"],
                key=key,
                extra_channels=stored.get("extra_channels", 0),
            )
        if stored.get("model") == "CascadeUNet":
            return eqx.filter_eval_shape(
                CascadeUNet,
                tuple(stored["widths"]),
                tuple(stored["multipliers"]),
                stored["channels"],
                key=key,
            )
        if stored.get("model") == "Classifier":
            return eqx.filter_eval_shape(
                Classifier,
                stored["width"],
                stored["channels"],
                stored["classes"],
                stored["image_size"],
                stored["features"],
                key=key,
            )
        if stored.get("model") == "ResidualMLP":
            return eqx.filter_eval_shape(
                ResidualMLP,
                stored["dim"],
                tuple(stored["stream"]),
                tuple(stored["hidden"]),
                inject_input=stored["inject_input"],
                key=key,
                sde=VPSDE(*stored["beta"]),
            )
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"incomplete architecture in manifest: {stored!r}") from error
    raise CheckpointError(f"unknown model class in checkpoint manifest: {stored!r}.")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then `os.replace` it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    umask = os.umask(0)
    os.umask(umask)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide shipped files
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _serialise(tree: Any) -> bytes:
    buffer = io.BytesIO()
    eqx.tree_serialise_leaves(buffer, tree)
    return buffer.getvalue()


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    base = Path(path)
    base = base.with_suffix("") if base.suffix in (".eqx", ".json") else base
    return base.with_suffix(".eqx"), base.with_suffix(".json")


def save_model(path: str | os.PathLike, model: Model, **manifest: Any) -> dict:
    """Save `model` to `<path>.eqx` and its manifest to `<path>.json`.

    **Arguments:**

    - `path`: the checkpoint's path without suffix (a `.eqx`/`.json` suffix is dropped).
    - `model`: a UNet, a Classifier or a ResidualMLP.
    - `**manifest`: extra JSON-serialisable entries (data, steps, final loss, time...).

    **Returns:**

    The manifest written: the extras plus `architecture`, `parameters` and `sha256`.
    """
    weights, manifest_path = _paths(path)
    data = _serialise(model)
    written = {
        "format": FORMAT,
        **manifest,
        "architecture": architecture(model),
        "parameters": parameter_count(model),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    _atomic_write(weights, data)
    _atomic_write(manifest_path, (json.dumps(written, indent=2) + "\n").encode())
    return written


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the checkpoint at `path`; `CheckpointError` if missing or bad."""
    _, manifest_path = _paths(path)
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint manifest at {manifest_path}.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"corrupted checkpoint manifest {manifest_path}: {error}.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(
            f"{manifest_path} is not a mlem-jax checkpoint manifest of format {FORMAT}."
        )
    return manifest


def load_model(path: str | os.PathLike, expected: dict | None = None) -> tuple[Model, dict]:
    """Load a model saved by `save_model`.

    **Arguments:**

    - `path`: the checkpoint's path (with or without `.eqx`/`.json`).
    - `expected`: the architecture the caller wants (keys of `architecture`); a
        checkpoint of another architecture is refused.

    **Returns:**

    `(model, manifest)`.

    **Raises:**

    `CheckpointError` when the files are missing, the content hash does not match (a
    corrupted or truncated file) or the architecture differs from `expected`.
    """
    weights, _ = _paths(path)
    manifest = read_manifest(path)
    stored = manifest["architecture"]
    if expected is not None:
        wanted = dict(expected)
        if "multipliers" in wanted:
            wanted["multipliers"] = list(wanted["multipliers"])
        different = {k: (stored.get(k), v) for k, v in wanted.items() if stored.get(k) != v}
        if different:
            detail = ", ".join(f"{k}: stored {a}, expected {b}" for k, (a, b) in different.items())
            raise CheckpointError(f"checkpoint {weights} has another architecture ({detail}).")
    try:
        data = weights.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"no checkpoint weights at {weights}.") from None
    if hashlib.sha256(data).hexdigest() != manifest["sha256"]:
        raise CheckpointError(
            f"checkpoint {weights} is corrupted: its SHA-256 does not match the manifest."
        )
    try:
        model = eqx.tree_deserialise_leaves(io.BytesIO(data), _skeleton(stored))
    except (ValueError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"cannot read {weights} as {stored}: {error}") from None
    return model, manifest


def save_tree(path: str | os.PathLike, tree: Any) -> None:
    """Atomically serialise any pytree of arrays (e.g. a training state) to `path`."""
    _atomic_write(Path(path), _serialise(tree))


def load_tree(path: str | os.PathLike, like: Any) -> Any:
    """Read a pytree saved by `save_tree` into the structure of `like`."""
    try:
        return eqx.tree_deserialise_leaves(Path(path), like)
    except (ValueError, RuntimeError, EOFError) as error:
        raise CheckpointError(f"cannot read {path} into the expected structure: {error}") from None
