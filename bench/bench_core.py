"""Core benchmarks, ratios measured side by side in one run (CPU or GPU).

1. `solve` with one level vs a hand-written `lax.scan` EM (goal: <= 1.1x the time).
2. `solve` vs `diffrax.diffeqsolve(..., Euler())` on the same SDE and Brownian path
   (goal: >= 10x faster on small SDEs, never slower on large ones).
3. Skipping pays: ML-EM with MLP levels of growing width vs evaluating every level at
   every step; wall-clock speedup / FLOP speedup (goal: >= 0.8).

Run: python bench/bench_core.py [--repeats 7]
"""

import argparse

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

import mlem_jax


T, SIGMA = 1.0, 0.5


class BatchMLP(eqx.Module):
    """A drift on a batch of states (B, d): an MLP of one hidden width, time as input."""

    mlp: eqx.nn.MLP

    def __init__(self, dim, width, key):
        self.mlp = eqx.nn.MLP(dim + 1, dim, width, depth=2, activation=jnp.tanh, key=key)

    def __call__(self, t, y, args):
        inputs = jnp.concatenate([y, jnp.full((y.shape[0], 1), t, y.dtype)], axis=1)
        return jax.vmap(self.mlp)(inputs) - y


def sine_drift(t, y, args):
    return jnp.sin(y) - y


def diffusion(t, y, args):
    return SIGMA


def hand_written_em(drift, y0, num_steps, key):
    """EM as one would write it by hand: increments from fold_in(key, n)."""
    dt = T / num_steps

    def body(y, n):
        dw = jnp.sqrt(dt) * jax.random.normal(
            jax.random.split(jax.random.fold_in(key, n), 1)[0], y.shape, y.dtype
        )
        return y + dt * drift(n * dt, y, None) + SIGMA * dw, None

    return jax.lax.scan(body, y0, jnp.arange(num_steps))[0]


def ours(drift, y0, num_steps, brownian):
    return mlem_jax.solve([drift], y0, 0.0, T, num_steps, diffusion=diffusion,
                          brownian=brownian).ys


def with_diffrax(drift, y0, num_steps, path):
    """Diagonal noise in diffrax >= 0.7 is a lineax operator, not a plain array."""
    noise = diffrax.ControlTerm(
        lambda t, y, a: lineax.DiagonalLinearOperator(jnp.full_like(y, SIGMA)), path
    )
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), noise)
    return diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, T, T / num_steps, y0,
                               saveat=diffrax.SaveAt(t1=True), adjoint=diffrax.ForwardMode()).ys[0]


def ratio_row(name, baseline_name, ours_seconds, baseline_seconds):
    print(f"  {name:<44} {ours_seconds * 1e3:9.2f} ms   {baseline_name:<22} "
          f"{baseline_seconds * 1e3:9.2f} ms   ratio {ours_seconds / baseline_seconds:6.2f}x")


def bench_loop_overhead(problems, repeats):
    print("1. solve (one level) vs hand-written lax.scan EM (goal <= 1.1x):")
    for name, drift, y0, num_steps in problems:
        key = jax.random.key(1)
        mine = jax.jit(lambda y: ours(drift, y, num_steps, key))
        hand = jax.jit(lambda y: hand_written_em(drift, y, num_steps, key))
        ratio_row(f"{name}: solve", "hand-written scan",
                  mlem_jax.median_seconds(mine, y0, repeats=repeats),
                  mlem_jax.median_seconds(hand, y0, repeats=repeats))


def bench_diffrax(problems, repeats):
    print("2. solve vs diffrax.diffeqsolve(Euler()), same UnsafeBrownianPath "
          "(goal: ours >= 10x faster on small, never slower on large):")
    for name, drift, y0, num_steps in problems:
        path = diffrax.UnsafeBrownianPath(shape=y0.shape, key=jax.random.key(2))
        mine = jax.jit(lambda y: ours(drift, y, num_steps, path))
        theirs = jax.jit(lambda y: with_diffrax(drift, y, num_steps, path))
        assert jnp.allclose(mine(y0), theirs(y0), rtol=1e-4, atol=1e-5)
        t_mine = mlem_jax.median_seconds(mine, y0, repeats=repeats)
        t_theirs = mlem_jax.median_seconds(theirs, y0, repeats=repeats)
        ratio_row(f"{name}: solve", "diffrax Euler", t_mine, t_theirs)
        print(f"  {'':<44} ours is {t_theirs / t_mine:.1f}x faster")


def bench_skipping(repeats):
    print("3. ML-EM vs every level at every step, MLP levels of growing width "
          "(goal: wall-clock speedup >= 0.8 x FLOP speedup):")
    dim, batch, num_steps = 16, 256, 100
    widths = [32, 64, 128, 256, 512, 1024]  # FLOPs ~ width^2: about 4x per level
    keys = jax.random.split(jax.random.key(3), len(widths))
    levels = [BatchMLP(dim, w, k) for w, k in zip(widths, keys)]
    y0 = jax.random.normal(jax.random.key(4), (batch, dim))
    costs = mlem_jax.level_costs(levels, 0.0, y0, repeats=3)
    points = mlem_jax.solve(levels[-1:], y0, 0.0, T, 20, saveat="steps",
                            diffusion=diffusion, brownian=jax.random.key(5))
    stats = mlem_jax.level_statistics(levels, points.ts, points.ys)
    p = mlem_jax.optimal_probabilities(costs.flops, stats.variances,
                                       top_level_evaluations=4, num_steps=num_steps)
    print(f"  widths {widths}, batch {batch}, {num_steps} steps, "
          f"p = {np.round(p, 3).tolist()}")
    print(f"  one evaluation: MFLOPs {np.round(costs.flops / 1e6, 2).tolist()}, "
          f"ms {np.round(costs.seconds * 1e3, 3).tolist()}")
    for kind, noise in (("ODE", {}), ("SDE", dict(diffusion=diffusion,
                                                  brownian=jax.random.key(7)))):
        def run(probabilities, noise=noise):
            return jax.jit(lambda y: mlem_jax.solve(
                levels, y, 0.0, T, num_steps, probabilities=probabilities,
                key=jax.random.key(6), costs=costs.flops, **noise))

        every, mlem = run(jnp.ones(len(levels))), run(jnp.asarray(p))
        flop_speedup = float(every(y0).cost / mlem(y0).cost)
        t_every = mlem_jax.median_seconds(every, y0, repeats=repeats)
        t_mlem = mlem_jax.median_seconds(mlem, y0, repeats=repeats)
        # What the evaluations cost, timed level by level: the rest is loop and noise.
        evaluations = np.asarray(mlem(y0).evaluations)
        level_time = float(evaluations @ costs.seconds)
        print(f"  {kind}: evaluations per level {evaluations.tolist()}; "
              f"FLOP speedup {flop_speedup:.2f}x, wall-clock speedup "
              f"{t_every / t_mlem:.2f}x, ratio {t_every / t_mlem / flop_speedup:.2f}")
        print(f"       ML-EM {t_mlem * 1e3:.1f} ms, of which the evaluations it made, "
              f"timed one by one, take {level_time * 1e3:.1f} ms; every level "
              f"{t_every * 1e3:.1f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    repeats = parser.parse_args().repeats
    print(f"device: {jax.devices()[0].platform}")
    small = ("8-dim sine SDE, 1000 steps", sine_drift, jnp.ones(8), 1000)
    mlp = BatchMLP(16, 256, jax.random.key(0))
    large = ("MLP drift (width 256) on batch 256x16, 200 steps", mlp,
             jax.random.normal(jax.random.key(8), (256, 16)), 200)
    bench_loop_overhead([small, large], repeats)
    bench_diffrax([small, large], repeats)
    bench_skipping(repeats)


if __name__ == "__main__":
    main()
