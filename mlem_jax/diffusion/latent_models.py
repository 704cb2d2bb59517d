"""Noise predictors on latent vectors, and their early exits as a `LevelFamily`."""

from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .._family import LevelFamily
from .sde import VPSDE, _check_kind, exit_drifts


FREQUENCIES = 8


def noise_features(sde: VPSDE, t: Any) -> Float[Array, " 17"]:
    """Fourier features of the noise level c = log sigma(t) (in [-4.6, 0] on
    [1e-3, 1]): c and sin, cos of pi k c / 5 for k = 1..8."""
    c = jnp.log(sde.sigma(t))
    angles = jnp.pi * jnp.arange(1, FREQUENCIES + 1) * c / 5.0
    return jnp.concatenate([c[None], jnp.sin(angles), jnp.cos(angles)])


class ResidualMLP(eqx.Module):
    """A residual MLP noise predictor eps(t, x) on ONE latent vector x (d,), with a
    readout ("exit") after every block.

    h_0 = W_in [x, e(t)] (width `stream[0]`); block j first widens h to `stream[j]`
    with zeros, then h_j = h_(j-1) + B_j([silu(h_(j-1)), e(t)]), B_j a two-layer MLP
    of hidden width `hidden[j]` (with `inject_input`, B_j also sees x); exit j:
    eps_j = sigma(t) x + R_j(silu(h_j)). A stream that widens block by block keeps the
    first exits cheap, as the narrower network's stream is the first coordinates of the
    wider one's; without `inject_input`, x then reaches the later blocks only through
    the first, narrow stream. The skip sigma(t) x is the
    exact noise prediction for data N(0, I) (whitened latents), so the exits learn only
    what differs from it; the readouts start at zero. `__call__` is the last exit,
    `exits` the first few.

    **Arguments:**

    - `dim`: d, the latent dimension.
    - `stream`: the width of the residual stream h, one for every block or one per
        block (non-decreasing).
    - `hidden`: the hidden width of each block, in order.
    - `inject_input`: give every block the input x too, not only the first layer.
    - `key`: PRNG key of the initial weights.
    - `sde`: the forward `VPSDE` (for sigma(t)).
    """

    embed: eqx.nn.Linear
    blocks: tuple[tuple[eqx.nn.Linear, eqx.nn.Linear], ...]
    readouts: tuple[eqx.nn.Linear, ...]
    sde: VPSDE
    dim: int = eqx.field(static=True)
    stream: tuple[int, ...] = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)
    inject_input: bool = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        stream: int | Sequence[int],
        hidden: Sequence[int],
        *,
        inject_input: bool = False,
        key: PRNGKeyArray,
        sde: VPSDE = VPSDE(),
    ):
        hidden = tuple(int(w) for w in hidden)
        streams = (
            (int(stream),) * len(hidden)
            if isinstance(stream, (int, np.integer))
            else tuple(int(w) for w in stream)
        )
        if (
            dim < 1
            or not hidden
            or min(hidden) < 1
            or len(streams) != len(hidden)
            or min(streams) < 1
            or list(streams) != sorted(streams)
        ):
            raise ValueError(
                "`dim`, every `stream` and every `hidden` width must be >= 1, with at least "
                "one block, `stream` one width or one non-decreasing width per block; got "
                f"dim={dim}, stream={stream}, hidden={hidden}."
            )
        features = 2 * FREQUENCIES + 1
        keys = jax.random.split(key, 2 * len(hidden) + 1)
        self.embed = eqx.nn.Linear(dim + features, streams[0], key=keys[0])
        self.blocks = tuple(
            (
                eqx.nn.Linear(width + dim * inject_input + features, inner, key=keys[2 * j + 1]),
                eqx.nn.Linear(inner, width, key=keys[2 * j + 2]),
            )
            for j, (width, inner) in enumerate(zip(streams, hidden))
        )
        self.readouts = tuple(
            eqx.tree_at(
                lambda r: (r.weight, r.bias),
                eqx.nn.Linear(width, dim, key=key),
                (jnp.zeros((dim, width)), jnp.zeros(dim)),
            )
            for width in streams
        )
        self.sde, self.dim, self.stream, self.hidden = sde, dim, streams, hidden
        self.inject_input = bool(inject_input)

    @property
    def num_exits(self) -> int:
        return len(self.hidden)

    def exits(self, t: Any, x: Float[Array, " d"], depth: int) -> tuple[Array, ...]:
        """eps_1(t, x), ..., eps_depth(t, x) from one pass through `depth` blocks."""
        if x.shape != (self.dim,):
            raise ValueError(
                f"ResidualMLP takes ONE latent vector of shape ({self.dim},), got {x.shape}; "
                "vmap it over a batch."
            )
        e = noise_features(self.sde, t)
        skip = self.sde.sigma(t) * x
        h = self.embed(jnp.concatenate([x, e]))
        context = jnp.concatenate([x, e]) if self.inject_input else e
        outputs = []
        for (first, second), readout, width in zip(self.blocks[:depth], self.readouts, self.stream):
            h = jnp.pad(h, (0, width - h.shape[0]))
            h = h + second(jax.nn.silu(first(jnp.concatenate([jax.nn.silu(h), context]))))
            outputs.append(skip + readout(jax.nn.silu(h)))
        return tuple(outputs)

    def __call__(self, t: Any, x: Float[Array, " d"]) -> Float[Array, " d"]:
        """The last exit's noise prediction."""
        return self.exits(t, x, self.num_exits)[-1]


class ExitFamily(LevelFamily):
    """The early exits of a `ResidualMLP` as ML-EM levels: level l is the reverse drift
    (`reverse_drift`) of exit l on a batch y (B, d), and one pass to exit L gives the
    levels 1..L (see `mlem_jax.LevelFamily`).

    **Arguments:**

    - `model`: the network.
    - `sde`: the forward `VPSDE`.
    - `kind`: `"sde"` (reverse-time SDE) or `"ode"` (probability-flow ODE).
    """

    model: ResidualMLP
    sde: VPSDE
    kind: str = eqx.field(static=True)

    def __init__(self, model: ResidualMLP, sde: VPSDE = VPSDE(), kind: str = "sde"):
        self.model, self.sde, self.kind = model, sde, _check_kind(kind)

    @property
    def num_levels(self) -> int:
        return self.model.num_exits

    def evaluate(self, t: Any, y: Float[Array, "b d"], args: Any, depth: int) -> tuple[Array, ...]:
        return exit_drifts(self.model, self.sde, self.kind, t, y, depth)
