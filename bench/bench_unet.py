"""UNet benchmarks: what the diffusion levels cost on this device, side by side in one run.

1. Layout: one 3x3 convolution of the largest UNet, inside a 16-step `lax.scan` as in
   the samplers, channel-first (equinox's `Conv2d`, vmapped) vs channel-last
   (`conv_channels_last`, what the UNet runs). XLA:CPU runs the first much slower
   inside a loop (jax-ml/jax#12868).
2. Levels: seconds per image of one evaluation of each shipped UNet at several batch
   sizes, next to its FLOPs; c_K / c_1 in seconds bounds ML-EM's wall-clock speedup
   (level 1 runs at every step), c_K / c_1 in FLOPs its FLOP speedup.

Run: python bench/bench_unet.py [--batches 16 128] [--json bench/results/unet.json]
"""

import argparse
import json
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp

from mlem_jax import interleaved_median_seconds, level_costs
from mlem_jax.diffusion.levels import load_levels
from mlem_jax.diffusion.sample import initial_noise, score_levels
from mlem_jax.diffusion.unet import conv_channels_last


STEPS = 16


def in_scan(layer, x):
    """`layer` applied STEPS times to the batch x, as a sampler's loop body would."""

    def body(y, _):
        return y + 1e-3 * jax.vmap(layer)(y), None

    return jax.lax.scan(body, x, None, length=STEPS)[0]


def layout(batch: int, channels: int, size: int, repeats: int) -> dict:
    """Seconds per image and step of one channels->channels 3x3 convolution."""
    conv = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=jax.random.key(0))
    first = jax.random.normal(jax.random.key(1), (batch, channels, size, size))
    last = jnp.moveaxis(first, 1, -1)
    run_first = jax.jit(lambda m, x: in_scan(m, x))
    run_last = jax.jit(lambda m, x: in_scan(partial(conv_channels_last, m), x))
    seconds = interleaved_median_seconds(
        [lambda: run_first(conv, first), lambda: run_last(conv, last)], repeats=repeats
    )
    per = [s / (batch * STEPS) for s in seconds]
    return {
        "batch": batch,
        "channels": channels,
        "size": size,
        "channel_first_seconds": per[0],
        "channel_last_seconds": per[1],
        "ratio": per[0] / per[1],
    }


def levels(models, image_shape, batch: int, repeats: int) -> dict:
    """FLOPs and seconds per image of one evaluation of each level (UNets)."""
    x = initial_noise(jax.random.key(2), batch, image_shape)
    costs = level_costs(score_levels(models), 0.5, x, repeats=repeats)
    seconds = (costs.seconds / batch).tolist()
    flops = (costs.flops / batch).tolist()
    return {
        "batch": batch,
        "widths": [m.width for m in models],
        "flops": flops,
        "seconds": seconds,
        "seconds_bound": seconds[-1] / seconds[0],
        "flops_bound": flops[-1] / flops[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[16, 128])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind}")
    results = {"device": jax.devices()[0].device_kind, "layout": [], "levels": []}
    for batch in args.batches:
        row = layout(batch, channels=16, size=32, repeats=args.repeats)
        results["layout"].append(row)
        print(
            f"3x3 conv 16->16 ch at 32x32 in a {STEPS}-step scan, batch {batch}: "
            f"channel-first {row['channel_first_seconds'] * 1e6:.1f} us/image, "
            f"channel-last {row['channel_last_seconds'] * 1e6:.1f} us/image, "
            f"ratio {row['ratio']:.1f}x"
        )
    models, manifests = load_levels()
    for batch in args.batches:
        row = levels(models, manifests[-1]["image_shape"], batch, args.repeats)
        results["levels"].append(row)
        print(
            f"levels at batch {batch}: widths {row['widths']}, "
            f"ms/image {[round(s * 1e3, 3) for s in row['seconds']]}, "
            f"MFLOP/image {[round(f / 1e6, 1) for f in row['flops']]}; "
            f"c_K/c_1 {row['seconds_bound']:.1f}x in seconds, "
            f"{row['flops_bound']:.0f}x in FLOPs"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
