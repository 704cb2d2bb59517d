"""A UNet with early exits: a cascade of UNets of growing width, each refining the noise
prediction of the ones before it, and its exits as a `LevelFamily`."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from .._family import LevelFamily
from .sde import SDE, VPSDE, _check_kind, exit_drifts
from .unet import UNet


class CascadeUNet(eqx.Module):
    """Noise predictor eps(t, x) on ONE image x (C, H, W) with an exit after each stage.

    Stage j is a `UNet` of width `widths[j]` that sees the image and, from the second
    stage on, the last feature map of stage j - 1 (`UNet.features`); exit j adds its
    readout to the exit before it:

        eps_1 = R_1(h_1),    eps_j = eps_(j-1) + R_j(h_j),    h_j = U_j(t, x, h_(j-1)).

    So running the cascade to exit L yields exits 1..L on the way, at the cost of the
    stages 1..L; each later stage learns only a correction, and its readout starts at
    zero, so at initialisation every exit equals the first. `__call__` is the last exit.

    **Arguments:**

    - `widths`: the stages' widths, cheapest first (non-decreasing).
    - `multipliers`: the channel multipliers of every stage (see `UNet`).
    - `channels`: image channels.
    - `key`: PRNG key of the initial weights.
    """

    stages: tuple[UNet, ...]
    widths: tuple[int, ...] = eqx.field(static=True)
    multipliers: tuple[int, ...] = eqx.field(static=True)
    channels: int = eqx.field(static=True)

    def __init__(
        self,
        widths: Sequence[int],
        multipliers: Sequence[int] = (1, 2, 2),
        channels: int = 1,
        *,
        key: PRNGKeyArray,
    ):
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or list(widths) != sorted(widths):
            raise ValueError(
                f"`widths` must be one or more positive, non-decreasing widths, got {widths}."
            )
        keys = jax.random.split(key, len(widths))
        stages = [
            UNet(w, multipliers, channels, key=k, extra_channels=previous)
            for w, k, previous in zip(widths, keys, (0,) + widths[:-1])
        ]
        self.stages = (stages[0],) + tuple(_silent(stage) for stage in stages[1:])
        self.widths, self.multipliers, self.channels = widths, tuple(multipliers), channels

    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def exits(self, t: Any, x: Float[Array, "c h w"], depth: int) -> tuple[Array, ...]:
        """eps_1(t, x), ..., eps_depth(t, x) from one pass through `depth` stages."""
        if not 1 <= depth <= self.num_exits:
            raise ValueError(f"`depth` must be in 1..{self.num_exits}, got {depth}.")
        outputs, h = [], None
        for stage in self.stages[:depth]:
            h = stage.features(t, x, h)
            correction = stage.readout(h)
            outputs.append(correction if not outputs else outputs[-1] + correction)
        return tuple(outputs)

    def __call__(self, t: Any, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        """The last exit's noise prediction."""
        return self.exits(t, x, self.num_exits)[-1]


def _silent(stage: UNet) -> UNet:
    """`stage` with a zero readout convolution."""
    conv = stage.conv_out
    assert conv.bias is not None
    return eqx.tree_at(
        lambda s: (s.conv_out.weight, s.conv_out.bias),
        stage,
        (jnp.zeros_like(conv.weight), jnp.zeros_like(conv.bias)),
    )


class CascadeFamily(LevelFamily):
    """The exits of a `CascadeUNet` as ML-EM levels: level l is the reverse drift
    (`reverse_drift`) of exit l on a batch of images y (B, C, H, W), and one pass to
    exit L gives the levels 1..L (see `mlem_jax.LevelFamily`).

    **Arguments:**

    - `model`: the network.
    - `sde`: the forward SDE it was trained for.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    """

    model: CascadeUNet
    sde: SDE
    kind: str = eqx.field(static=True)

    def __init__(self, model: CascadeUNet, sde: SDE = VPSDE(), kind: str = "sde"):
        self.model, self.sde, self.kind = model, sde, _check_kind(kind)

    @property
    def num_levels(self) -> int:
        return self.model.num_exits

    def evaluate(
        self, t: Any, y: Float[Array, "b c h w"], args: Any, depth: int
    ) -> tuple[Array, ...]:
        return exit_drifts(self.model, self.sde, self.kind, t, y, depth)
