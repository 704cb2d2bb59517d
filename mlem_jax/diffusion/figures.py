"""The demo's figures: sample grids side by side, and the cost-error frontier (matplotlib)."""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .images import image_grid


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, figure, path: str | os.PathLike, dpi: int) -> Path:
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def sample_panels(
    path: str | os.PathLike,
    grids: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    columns: int = 3,
    panel_inches: float = 4.2,
    dpi: int = 110,
) -> Path:
    """Write one PNG with a titled panel per batch of samples.

    **Arguments:**

    - `path`: the PNG to write.
    - `grids`: batches of samples (B, 1, H, W) in [-1, 1], one per panel, each tiled
        8 images to a row.
    - `titles`: one title per panel (e.g. method, FLOPs and seconds).
    - `columns`: panels per row.
    - `panel_inches`, `dpi`: the size of one panel: 4.2 inches at 110 dpi shows a grid
        of 8x8 images of 32x32 pixels at about 55 pixels each.

    **Returns:**

    The path written.
    """
    if len(grids) != len(titles) or not grids:
        raise ValueError(
            f"need one title per panel, got {len(grids)} panels and {len(titles)} titles."
        )
    plt = _pyplot()
    images = [image_grid(np.asarray(samples), columns=8) for samples in grids]
    aspect = max(image.shape[0] / image.shape[1] for image in images)
    rows = -(-len(grids) // columns)
    size = (columns * panel_inches, rows * (panel_inches * aspect + 0.6))
    figure, axes = plt.subplots(rows, columns, squeeze=False, figsize=size)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, title in zip(axes.flat, images, titles):
        axis.imshow(image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        axis.set_title(title, fontsize=10)
    return _save(plt, figure, path, dpi)


def frontier_figure(
    path: str | os.PathLike,
    curves: Mapping[str, Sequence[tuple[float, float, str]]],
    *,
    title: str,
    dpi: int = 110,
) -> Path:
    """Write a PNG of strong error against GFLOP per image, one line per method.

    **Arguments:**

    - `path`: the PNG to write.
    - `curves`: method name -> points `(gflops, error, label)`; each label (e.g. the step
        count) is written beside its point.
    - `title`: the figure's title.

    **Returns:**

    The path written.
    """
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7.5, 5.5))
    for (name, points), marker in zip(curves.items(), "osD^v<>"):
        points = sorted(points)
        x, y = [p[0] for p in points], [p[1] for p in points]
        (line,) = axis.plot(x, y, marker=marker, label=name)
        for gflops, error, label in points:
            axis.annotate(
                label,
                (gflops, error),
                textcoords="offset points",
                xytext=(5, 4),
                fontsize=8,
                color=line.get_color(),
            )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("GFLOP per image")
    axis.set_ylabel("strong error against the reference (RMS per image)")
    axis.set_title(title, fontsize=10)
    axis.grid(True, which="both", alpha=0.3)
    axis.legend()
    return _save(plt, figure, path, dpi)
