"""Tiny models shared by the diffusion tests (built once: eager initialisation is slow)."""

import functools

import jax

from mlem_jax.diffusion.cascade import CascadeUNet
from mlem_jax.diffusion.unet import UNet


IMAGE_SHAPE = (1, 8, 8)


@functools.cache
def tiny_unets() -> tuple[UNet, UNet]:
    """UNets of widths 1 and 2 with one downsampling, for 8x8 images."""
    k1, k2 = jax.random.split(jax.random.key(0))
    return UNet(1, (1, 2), key=k1), UNet(2, (1, 2), key=k2)


@functools.cache
def tiny_cascade() -> CascadeUNet:
    """A CascadeUNet of stages of widths 1 and 2 with one downsampling, for 8x8 images."""
    return CascadeUNet((1, 2), (1, 2), key=jax.random.key(1))
