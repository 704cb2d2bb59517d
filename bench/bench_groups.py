"""Grouped level draws: what G groups cost against shared draws, and what they buy.

With the draws shared by a batch, every path carries the same randomisation error, so
the spread of a batch mean over draw keys does not shrink with the batch. `groups=G`
gives G groups draws of their own (a `lax.map` over the groups inside each step, so a
level a group does not draw is skipped for that group).

1. MLP levels (6 widths, 1.1 to 555 MFLOPs on the whole batch), a batch of 256 16-dim
   paths, 100 steps, SDE: seconds per solve for G = 1, 4, 16, 64 timed in turns, and
   the spread (standard deviation over 64 draw keys, the Brownian key fixed) of the
   batch mean of X_1.
2. The shipped diffusion UNets, ML-EM with the shipped calibration's p_l (top level
   drawn about 4 times), 32 steps, batches of 16 and 64 images: seconds per sample for
   G = 1, 4, 16 (and 64), timed in turns.

Run: python bench/bench_groups.py [--repeats 5] [--json bench/results/groups.json]
"""

import jax
import jax.numpy as jnp
import numpy as np
from bench_core import BatchMLP, command_line, diffusion

import mlem_jax
from mlem_jax.diffusion.calibrate import probabilities_for, read_calibration
from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
from mlem_jax.diffusion.sample import initial_noise, sample, score_levels


def mlp(repeats: int) -> dict:
    dim, batch, num_steps, widths = 16, 256, 100, [32, 64, 128, 256, 512, 1024]
    levels = [
        BatchMLP(dim, w, k)
        for w, k in zip(widths, jax.random.split(jax.random.key(3), len(widths)))
    ]
    p = jnp.array([1.0, 0.6, 0.35, 0.2, 0.1, 0.04])
    y0 = jax.random.normal(jax.random.key(4), (batch, dim))

    def solver(groups):
        return jax.jit(
            lambda y, key: (
                mlem_jax.solve(
                    levels,
                    y,
                    0.0,
                    1.0,
                    num_steps,
                    probabilities=p,
                    key=key,
                    groups=groups,
                    diffusion=diffusion,
                    brownian=jax.random.key(7),
                ).ys
            )
        )

    groups = [1, 4, 16, 64]
    runs = [solver(g) for g in groups]
    seconds = mlem_jax.interleaved_median_seconds(runs, y0, jax.random.key(6), repeats=repeats)
    keys = jax.random.split(jax.random.key(8), 64)
    spreads = [float(np.std([float(run(y0, k).mean()) for k in keys], ddof=1)) for run in runs]
    print(f"1. 6 MLP levels, batch {batch}x{dim}, {num_steps} steps, p = {p.tolist()}")
    for g, s, spread in zip(groups, seconds, spreads):
        print(
            f"   G={g:<3} {s * 1e3:8.1f} ms  ({s / seconds[0]:.2f}x G=1)   spread of the "
            f"batch mean over 64 draw keys {spread:.4f} ({spreads[0] / spread:.2f}x "
            "smaller)"
        )
    return {
        "batch": batch,
        "num_steps": num_steps,
        "probabilities": p.tolist(),
        "groups": groups,
        "seconds": seconds,
        "ratio": [s / seconds[0] for s in seconds],
        "spread": spreads,
    }


def unets(repeats: int) -> list[dict]:
    models, manifests = load_levels(CHECKPOINTS)
    levels, shape = score_levels(models), tuple(manifests[-1]["image_shape"])
    num_steps = 32
    calibration = read_calibration(CHECKPOINTS / "calibration.json", "sde")
    assert calibration is not None, "the shipped UNets' calibration.json is missing"
    p = probabilities_for(calibration, num_steps, 4.0)
    print(
        f"2. shipped UNets (widths {[m.width for m in models]}), ML-EM, {num_steps} "
        f"steps, p = {np.round(p, 3).tolist()}"
    )
    results = []
    for batch, groups in ((16, [1, 4, 16]), (64, [1, 4, 16, 64])):
        x1 = initial_noise(jax.random.key(1), batch, shape)
        runs = [
            jax.jit(
                lambda x, g=g: (
                    sample(
                        "mlem",
                        levels,
                        x,
                        num_steps,
                        key=jax.random.key(3),
                        brownian=jax.random.key(2),
                        probabilities=p,
                        groups=g,
                    ).ys
                )
            )
            for g in groups
        ]
        seconds = mlem_jax.interleaved_median_seconds(runs, x1, repeats=repeats)
        for g, s in zip(groups, seconds):
            print(
                f"   batch {batch:<3} G={g:<3} {s / batch * 1e3:8.1f} ms per sample "
                f"({s / seconds[0]:.2f}x G=1)"
            )
        results.append(
            {
                "batch": batch,
                "groups": groups,
                "seconds": seconds,
                "ratio": [s / seconds[0] for s in seconds],
            }
        )
    return results


if __name__ == "__main__":
    command_line(__doc__, lambda repeats: {"mlp": mlp(repeats), "unets": unets(repeats)}, repeats=5)
