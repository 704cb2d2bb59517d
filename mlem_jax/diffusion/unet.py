"""A small time-conditioned UNet family whose FLOPs grow ~4x each time the width doubles."""

import math
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray


EMBEDDING_DIM = 32  # sinusoidal features of t, fixed across widths


def _groups(channels: int) -> int:
    return math.gcd(channels, 4)


def time_features(t: Float[Array, ""], dim: int = EMBEDDING_DIM) -> Float[Array, " dim"]:
    """Sinusoidal features of t in [0, 1] (frequencies 1..1000), shape (dim,)."""
    frequencies = jnp.exp(jnp.linspace(0.0, math.log(1000.0), dim // 2))
    angles = t * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


def conv_channels_last(conv: eqx.nn.Conv2d, x: Float[Array, "h w c"]) -> Array:
    """`conv` on a channel-last image (H, W, C), with its own (out, in, kh, kw) weights.

    XLA:CPU runs a convolution ~20x slower inside a loop body (the samplers' `lax.scan`)
    unless both the image and the kernel are channel-last, NHWC and HWIO
    (jax-ml/jax#12868; `bench/bench_unet.py` measures it). The weights are stored in
    equinox's layout, so checkpoints do not change, and transposed here (a few kB).
    """
    y = jax.lax.conv_general_dilated(
        x[None],
        jnp.transpose(conv.weight, (2, 3, 1, 0)),
        conv.stride,
        conv.padding,
        rhs_dilation=conv.dilation,
        feature_group_count=conv.groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )[0]
    return y if conv.bias is None else y + conv.bias.reshape(-1)


def group_norm_channels_last(norm: eqx.nn.GroupNorm, x: Float[Array, "h w c"]) -> Array:
    """equinox's `GroupNorm` (contiguous channel groups, statistics in at least float32,
    channelwise affine) on a channel-last image."""
    dtype = jnp.result_type(x.dtype, jnp.float32)
    y = x.astype(dtype).reshape(*x.shape[:-1], norm.groups, -1)
    mean = jnp.mean(y, axis=(0, 1, 3), keepdims=True)
    variance = jnp.maximum(0.0, jnp.var(y, axis=(0, 1, 3), keepdims=True))
    out = ((y - mean) * jax.lax.rsqrt(variance + norm.eps)).reshape(x.shape)
    assert norm.weight is not None and norm.bias is not None  # channelwise_affine
    return (norm.weight.astype(dtype) * out + norm.bias.astype(dtype)).astype(x.dtype)


class ResBlock(eqx.Module):
    """GroupNorm-SiLU-Conv twice, the time embedding added in between, a residual path."""

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    time: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None

    def __init__(self, c_in: int, c_out: int, embedding: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(_groups(c_in), c_in)
        self.conv1 = eqx.nn.Conv2d(c_in, c_out, 3, padding=1, key=k1)
        self.time = eqx.nn.Linear(embedding, c_out, key=k2)
        self.norm2 = eqx.nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = eqx.nn.Conv2d(c_out, c_out, 3, padding=1, key=k3)
        self.skip = None if c_in == c_out else eqx.nn.Conv2d(c_in, c_out, 1, key=k4)

    def __call__(self, x: Float[Array, "h w c"], embedding: Array) -> Float[Array, "h w c2"]:
        """The block on a channel-last feature map (see `conv_channels_last`)."""
        h = conv_channels_last(self.conv1, jax.nn.silu(group_norm_channels_last(self.norm1, x)))
        h = h + self.time(embedding)
        h = conv_channels_last(self.conv2, jax.nn.silu(group_norm_channels_last(self.norm2, h)))
        return h + (x if self.skip is None else conv_channels_last(self.skip, x))


class UNet(eqx.Module):
    """Noise predictor eps(x, t) for one image x of shape (channels, H, W).

    One residual block per resolution on the way down and up, a stride-2 convolution to
    halve the resolution, nearest upsampling and skip connections. The channel counts
    are `width * multipliers[i]`, so every convolution's FLOPs, and hence the whole
    network's, grow ~4x when `width` doubles.

    **Arguments:**

    - `width`: channels at full resolution.
    - `multipliers`: channel multiplier per resolution; len - 1 downsamplings, so H and
        W must be divisible by 2^(len - 1).
    - `channels`: image channels.
    - `key`: PRNG key of the initial weights.
    - `extra_channels`: channels of a feature map given beside the image (see
        `features`; `mlem_jax.diffusion.CascadeUNet` feeds each stage the previous
        one's), 0 for a plain noise predictor.
    """

    width: int = eqx.field(static=True)
    multipliers: tuple[int, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    extra_channels: int = eqx.field(static=True)
    embed: eqx.nn.MLP
    conv_in: eqx.nn.Conv2d
    down: list[ResBlock]
    downsample: list[eqx.nn.Conv2d]
    middle: ResBlock
    up: list[ResBlock]
    upsample: list[eqx.nn.Conv2d]
    norm_out: eqx.nn.GroupNorm
    conv_out: eqx.nn.Conv2d

    def __init__(
        self,
        width: int,
        multipliers: Sequence[int] = (1, 2, 2),
        channels: int = 1,
        *,
        key: PRNGKeyArray,
        extra_channels: int = 0,
    ):
        if width < 1 or not multipliers or min(multipliers) < 1 or extra_channels < 0:
            raise ValueError(
                f"`width` and `multipliers` must be positive and `extra_channels` >= 0, got "
                f"width={width}, multipliers={tuple(multipliers)}, "
                f"extra_channels={extra_channels}."
            )
        self.width, self.multipliers, self.channels = width, tuple(multipliers), channels
        self.extra_channels = extra_channels
        sizes = [width * m for m in self.multipliers]
        embedding = 2 * width
        keys = iter(jax.random.split(key, 4 * len(sizes) + 4))
        self.embed = eqx.nn.MLP(
            EMBEDDING_DIM, embedding, embedding, 1, activation=jax.nn.silu, key=next(keys)
        )
        self.conv_in = eqx.nn.Conv2d(channels + extra_channels, width, 3, padding=1, key=next(keys))
        self.down = [ResBlock(c, c, embedding, key=next(keys)) for c in sizes]
        self.downsample = [
            eqx.nn.Conv2d(a, b, 3, stride=2, padding=1, key=next(keys))
            for a, b in zip(sizes, sizes[1:])
        ]
        self.middle = ResBlock(sizes[-1], sizes[-1], embedding, key=next(keys))
        self.up = [ResBlock(2 * c, c, embedding, key=next(keys)) for c in sizes]
        self.upsample = [
            eqx.nn.Conv2d(b, a, 3, padding=1, key=next(keys)) for a, b in zip(sizes, sizes[1:])
        ]
        self.norm_out = eqx.nn.GroupNorm(_groups(width), width)
        self.conv_out = eqx.nn.Conv2d(width, channels, 3, padding=1, key=next(keys))

    def __call__(
        self, t: float | Float[Array, ""], x: Float[Array, "c h w"]
    ) -> Float[Array, "c h w"]:
        """The predicted noise at time t for ONE image x (callers `vmap` over a batch)."""
        return self.readout(self.features(t, x))

    def features(
        self,
        t: float | Float[Array, ""],
        x: Float[Array, "c h w"],
        extra: Float[Array, "h w e"] | None = None,
    ) -> Float[Array, "h w width"]:
        """The last feature map, channel-last (H, W, width), before `readout`; `extra`
        is the channel-last feature map of `extra_channels` channels given beside x."""
        if x.ndim != 3 or x.shape[0] != self.channels:
            raise ValueError(
                f"UNet takes ONE image of shape ({self.channels}, H, W) (vmap over a "
                f"batch), got shape {x.shape}."
            )
        given = 0 if extra is None else extra.shape[-1]
        if given != self.extra_channels or (extra is not None and extra.shape[:2] != x.shape[1:]):
            raise ValueError(
                f"`extra` must be a ({x.shape[1]}, {x.shape[2]}, {self.extra_channels}) "
                f"feature map, got {None if extra is None else extra.shape}."
            )
        # The features are computed in float32 (their frequencies are float32) and cast to
        # the dtype of x, so a bfloat16 UNet (`mlem_jax.in_precision`) stays in bfloat16.
        embedding = self.embed(time_features(jnp.asarray(t, x.dtype)).astype(x.dtype))
        h = jnp.transpose(x, (1, 2, 0))
        if extra is not None:
            h = jnp.concatenate([h, extra.astype(h.dtype)], axis=-1)
        h = conv_channels_last(self.conv_in, h)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, embedding)
            skips.append(h)
            if i < len(self.downsample):
                h = conv_channels_last(self.downsample[i], h)
        h = self.middle(h, embedding)
        for i in reversed(range(len(self.up))):
            if i < len(self.upsample):
                h = jnp.repeat(jnp.repeat(h, 2, axis=0), 2, axis=1)
                h = conv_channels_last(self.upsample[i], h)
            h = self.up[i](jnp.concatenate([h, skips[i]], axis=-1), embedding)
        return h

    def readout(self, h: Float[Array, "h w width"]) -> Float[Array, "c h w"]:
        """The noise prediction (C, H, W) from a feature map of `features`."""
        h = jax.nn.silu(group_norm_channels_last(self.norm_out, h))
        return jnp.transpose(conv_channels_last(self.conv_out, h), (2, 0, 1))


def parameter_count(model: eqx.Module) -> int:
    """Number of scalar parameters of `model`: the sizes of its floating leaves (arrays
    or the `jax.ShapeDtypeStruct`s of `eqx.filter_eval_shape(UNet, ...)`)."""
    leaves = jax.tree_util.tree_leaves(model)
    return int(
        sum(
            math.prod(leaf.shape)
            for leaf in leaves
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)
        )
    )
