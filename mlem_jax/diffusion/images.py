"""Image grids and PNG/NPZ output without extra dependencies."""

import struct
import zlib
from pathlib import Path

import numpy as np


def to_pixels(images: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] (B, C, H, W) -> uint8 (B, H, W, C), clipped."""
    scaled = (np.asarray(images, dtype=np.float32).transpose(0, 2, 3, 1) + 1.0) * 127.5
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """Tile a batch of one-channel images into one uint8 image with 1-pixel gaps."""
    pixels = to_pixels(images)[..., 0]
    count, height, width = pixels.shape
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    grid = np.full((rows * (height + 1) + 1, columns * (width + 1) + 1), 255, np.uint8)
    for i, image in enumerate(pixels):
        top, left = 1 + (i // columns) * (height + 1), 1 + (i % columns) * (width + 1)
        grid[top : top + height, left : left + width] = image
    return grid


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def png_bytes(gray: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a (H, W) uint8 array."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a (H, W) uint8 array, got {gray.shape} {gray.dtype}.")
    height, width = gray.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in gray)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def save_samples(path: str | Path, samples: np.ndarray, columns: int = 8) -> Path:
    """Write samples (B, C, H, W) in [-1, 1] as a PNG grid (`.png`) or raw arrays
    (`.npz`, key `samples`), by the suffix of `path`."""
    path = Path(path)
    if path.suffix in (".png", ".npz"):
        path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".png":
        path.write_bytes(png_bytes(image_grid(samples, columns)))
    elif path.suffix == ".npz":
        np.savez_compressed(path, samples=np.asarray(samples))
    else:
        raise ValueError(f"output must end in .png or .npz, got {str(path)!r}.")
    return path
