"""What `throw=True` costs: each solve timed with the check off and on, in turns.

Off, `solve` compiles no check at all (`tests/test_throw.py` looks for the callback in
the jaxpr); on, each step records whether the state is finite and one `lax.cond` after
the loop raises. `MLEM(key, throw=True)` checks inside diffrax's loop, one `lax.cond`
per step. Goal: at most 1.1x.

1. EM, 8-dim sine SDE, 1000 steps (the cheapest step there is: the check's worst case).
2. EM, MLP drift (width 256) on a 256x16 batch, 200 steps.
3. ML-EM, 6 MLP levels on a 256x16 batch, 100 steps, SDE.
4. ML-EM, the shipped diffusion UNets, 16 images, 32 steps (the samplers' default).
5. `diffeqsolve` with `MLEM`, 3 random-feature levels, 8-dim ODE, 1000 steps.

Run: python bench/bench_throw.py [--repeats 7] [--json bench/results/throw.json]
"""

import diffrax
import jax
import jax.numpy as jnp
from bench_core import BatchMLP, command_line, diffusion, sine_drift

import mlem_jax
from mlem_jax.diffusion.calibrate import probabilities_for, read_calibration
from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
from mlem_jax.diffusion.sample import initial_noise, sample, score_levels


def solves(levels, num_steps, probabilities=None):
    """The SDE solve of `levels`, jitted, with the check off and on."""

    def make(throw):
        return jax.jit(
            lambda y: (
                mlem_jax.solve(
                    levels,
                    y,
                    0.0,
                    1.0,
                    num_steps,
                    probabilities=probabilities,
                    key=jax.random.key(6),
                    diffusion=diffusion,
                    brownian=jax.random.key(7),
                    throw=throw,
                ).ys
            )
        )

    return make(False), make(True)


def cases():
    widths = [32, 64, 128, 256, 512, 1024]
    mlps = [
        BatchMLP(16, w, k) for w, k in zip(widths, jax.random.split(jax.random.key(3), len(widths)))
    ]
    batch = jax.random.normal(jax.random.key(4), (256, 16))
    yield ("EM, 8-dim sine SDE, 1000 steps", *solves([sine_drift], 1000), jnp.ones(8))
    yield (
        "EM, MLP (width 256), batch 256x16, 200 steps",
        *solves([BatchMLP(16, 256, jax.random.key(0))], 200),
        batch,
    )
    yield (
        "ML-EM, 6 MLP levels, batch 256x16, 100 steps",
        *solves(mlps, 100, jnp.array([1.0, 0.6, 0.35, 0.2, 0.1, 0.04])),
        batch,
    )

    models, manifests = load_levels(CHECKPOINTS)
    levels, shape = score_levels(models), tuple(manifests[-1]["image_shape"])
    calibration = read_calibration(CHECKPOINTS / "calibration.json", "sde")
    assert calibration is not None, "the shipped UNets' calibration.json is missing"
    p = probabilities_for(calibration, 32, 4.0)
    unet = [
        jax.jit(
            lambda x, throw=throw: (
                sample(
                    "mlem",
                    levels,
                    x,
                    32,
                    key=jax.random.key(3),
                    brownian=jax.random.key(2),
                    probabilities=p,
                    throw=throw,
                ).ys
            )
        )
        for throw in (False, True)
    ]
    yield (
        "ML-EM, shipped UNets, 16 images, 32 steps",
        *unet,
        initial_noise(jax.random.key(1), 16, shape),
    )

    features = mlem_jax.random_feature_levels(jax.random.key(0), 8, [16, 64, 256], alpha=1.0)
    term = mlem_jax.MultilevelTerm(features, [1.0, 0.3, 0.05])
    diffeq = [
        jax.jit(
            lambda y, throw=throw: (
                diffrax.diffeqsolve(
                    term,
                    mlem_jax.MLEM(jax.random.key(2), throw=throw),
                    0.0,
                    1.0,
                    1e-3,
                    y,
                    max_steps=1000,
                ).ys
            )
        )
        for throw in (False, True)
    ]
    yield ("diffeqsolve with MLEM, 3 levels, 8-dim ODE, 1000 steps", *diffeq, jnp.ones(8))


def measure(repeats: int) -> dict:
    results = {}
    for label, off, on, y in cases():
        t_off, t_on = mlem_jax.interleaved_median_seconds([off, on], y, repeats=repeats)
        print(
            f"  {label:<58} off {t_off * 1e3:9.2f} ms, on {t_on * 1e3:9.2f} ms, "
            f"ratio {t_on / t_off:.3f}x"
        )
        results[label] = {"off_ms": t_off * 1e3, "on_ms": t_on * 1e3, "ratio": t_on / t_off}
    return {"cases": results}


if __name__ == "__main__":
    command_line(__doc__, measure, repeats=7)
