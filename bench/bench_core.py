"""Core benchmarks: ratios measured side by side in one run (CPU or GPU).

1. `solve` with one level vs a hand-written `lax.scan` EM (goal: <= 1.1x the time).
2. `solve` vs `diffrax.diffeqsolve(..., Euler())` on the same SDE (goal: >= 10x faster
   on small SDEs, never slower on large ones), jitted and eager, with the same
   Brownian path and with each library's fastest noise.
3. Skipping pays: ML-EM with MLP levels of growing width vs evaluating every level at
   every step; wall-clock speedup / FLOP speedup (goal: >= 0.8).

Run: python bench/bench_core.py [--repeats 7] [--json bench/results/core.json]
"""

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

import mlem_jax
from mlem_jax._brownian import NOISE_STREAM


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


def diagonal_operator(t, y, args):
    """Diagonal noise in diffrax >= 0.7 is a lineax operator, not a plain array."""
    return lineax.DiagonalLinearOperator(jnp.full_like(y, SIGMA))


def hand_written_em(drift, y0, num_steps, key):
    """EM as one would write it by hand: increments from fold_in(stream, n), with the
    noise stream of `key` that `solve` uses."""
    dt = T / num_steps
    stream = jax.random.fold_in(key, NOISE_STREAM)

    def body(carry, _):
        n, y = carry
        dw = jnp.sqrt(dt) * jax.random.normal(jax.random.fold_in(stream, n), y.shape, y.dtype)
        return (n + 1, y + dt * drift(n * dt, y, None) + SIGMA * dw), None

    return jax.lax.scan(body, (0, y0), None, length=num_steps)[0][1]


def ours(drift, y0, num_steps, brownian):
    return mlem_jax.solve([drift], y0, 0.0, T, num_steps, diffusion=diffusion, brownian=brownian).ys


def with_diffrax(drift, y0, num_steps, path):
    terms = diffrax.MultiTerm(diffrax.ODETerm(drift), diffrax.ControlTerm(diagonal_operator, path))
    adjoint = (
        diffrax.ForwardMode()
        if isinstance(path, diffrax.UnsafeBrownianPath)
        else diffrax.RecursiveCheckpointAdjoint()
    )
    return diffrax.diffeqsolve(
        terms, diffrax.Euler(), 0.0, T, T / num_steps, y0, adjoint=adjoint
    ).ys[0]


def compare(label, mine, baseline, y0, repeats):
    """Time two functions of y0 side by side; print and return the ratio."""
    t_mine, t_base = mlem_jax.interleaved_median_seconds([mine, baseline], y0, repeats=repeats)
    print(
        f"  {label:<62} {t_mine * 1e3:8.2f} ms vs {t_base * 1e3:8.2f} ms   "
        f"ratio {t_mine / t_base:5.2f}x"
    )
    return dict(ours_ms=t_mine * 1e3, baseline_ms=t_base * 1e3, ratio=t_mine / t_base)


def bench_loop_overhead(problems, repeats):
    print("1. solve (one level) / hand-written lax.scan EM, jitted (goal <= 1.1x):")
    results: dict[str, Any] = {}
    for name, drift, y0, num_steps in problems:
        key = jax.random.key(1)
        mine = jax.jit(lambda y: ours(drift, y, num_steps, key))
        hand = jax.jit(lambda y: hand_written_em(drift, y, num_steps, key))
        assert jnp.allclose(mine(y0), hand(y0), rtol=1e-4, atol=1e-5)
        results[name] = compare(name, mine, hand, y0, repeats)
    return results


def bench_diffrax(problems, repeats):
    print("2. solve / diffrax.diffeqsolve(Euler()) (goal: <= 0.1x on small, <= 1x on large):")
    results: dict[str, Any] = {}
    for name, drift, y0, num_steps in problems:
        unsafe = diffrax.UnsafeBrownianPath(shape=y0.shape, key=jax.random.key(2))
        tree = diffrax.VirtualBrownianTree(
            0.0, T, tol=T / num_steps / 8, shape=y0.shape, key=jax.random.key(2)
        )
        cases = {
            "same UnsafeBrownianPath, jitted": (unsafe, unsafe, jax.jit),
            "same UnsafeBrownianPath, eager calls": (unsafe, unsafe, lambda f: f),
            "same VirtualBrownianTree, jitted": (tree, tree, jax.jit),
            "ours key-drawn noise vs diffrax UnsafeBrownianPath, jitted": (
                jax.random.key(2),
                unsafe,
                jax.jit,
            ),
        }
        for case, (our_noise, their_noise, wrap) in cases.items():
            mine = wrap(lambda y, b=our_noise: ours(drift, y, num_steps, b))
            theirs = wrap(lambda y, b=their_noise: with_diffrax(drift, y, num_steps, b))
            if our_noise is their_noise:
                assert jnp.allclose(mine(y0), theirs(y0), rtol=1e-4, atol=1e-5)
            results[f"{name}; {case}"] = compare(f"{name}; {case}", mine, theirs, y0, repeats)
    return results


def bench_skipping(repeats):
    print(
        "3. ML-EM vs every level at every step, MLP levels of growing width "
        "(goal: wall-clock speedup >= 0.8 x FLOP speedup):"
    )
    dim, batch, num_steps = 16, 256, 100
    widths = [32, 64, 128, 256, 512, 1024]  # FLOPs ~ width^2: about 4x per level
    keys = jax.random.split(jax.random.key(3), len(widths))
    levels = [BatchMLP(dim, w, k) for w, k in zip(widths, keys)]
    y0 = jax.random.normal(jax.random.key(4), (batch, dim))
    costs = mlem_jax.level_costs(levels, 0.0, y0, repeats=3)
    points = mlem_jax.solve(
        levels[-1:], y0, 0.0, T, 20, saveat="steps", diffusion=diffusion, brownian=jax.random.key(5)
    )
    stats = mlem_jax.level_statistics(levels, points.ts, points.ys)
    p = mlem_jax.optimal_probabilities(
        costs.flops, stats.variances, top_level_evaluations=4, num_steps=num_steps
    )
    print(f"  widths {widths}, batch {batch}, {num_steps} steps, p = {np.round(p, 3).tolist()}")
    print(
        f"  one evaluation: MFLOPs {np.round(costs.flops / 1e6, 2).tolist()}, "
        f"ms {np.round(costs.seconds * 1e3, 3).tolist()}"
    )
    results: dict[str, Any] = dict(
        widths=widths,
        batch=batch,
        num_steps=num_steps,
        probabilities=p.tolist(),
        flops_per_evaluation=costs.flops.tolist(),
        seconds_per_evaluation=costs.seconds.tolist(),
    )
    noises = {"ODE": {}, "SDE": dict(diffusion=diffusion, brownian=jax.random.key(7))}
    for kind, noise in noises.items():

        def run(probabilities, noise=noise):
            return jax.jit(
                lambda y: mlem_jax.solve(
                    levels,
                    y,
                    0.0,
                    T,
                    num_steps,
                    probabilities=probabilities,
                    key=jax.random.key(6),
                    costs=costs.flops,
                    **noise,
                )
            )

        every, mlem = run(jnp.ones(len(levels))), run(jnp.asarray(p))
        flop_speedup = float(every(y0).cost / mlem(y0).cost)
        t_every, t_mlem = mlem_jax.interleaved_median_seconds([every, mlem], y0, repeats=repeats)
        evaluations = np.asarray(mlem(y0).evaluations)
        # The evaluations ML-EM made, timed level by level: the rest is loop and noise.
        level_seconds = float(evaluations @ costs.seconds)
        results[kind] = dict(
            evaluations=evaluations.tolist(),
            flop_speedup=flop_speedup,
            wallclock_speedup=t_every / t_mlem,
            ratio=t_every / t_mlem / flop_speedup,
            mlem_ms=t_mlem * 1e3,
            every_level_ms=t_every * 1e3,
            evaluations_timed_alone_ms=level_seconds * 1e3,
        )
        print(
            f"  {kind}: evaluations per level {evaluations.tolist()}; FLOP speedup "
            f"{flop_speedup:.2f}x, wall-clock speedup {t_every / t_mlem:.2f}x, ratio "
            f"{t_every / t_mlem / flop_speedup:.2f}"
        )
        print(
            f"       ML-EM {t_mlem * 1e3:.1f} ms (its evaluations timed one by one: "
            f"{level_seconds * 1e3:.1f} ms); every level {t_every * 1e3:.1f} ms"
        )
    return results


def command_line(doc: str | None, measure: Callable[[int], dict], repeats: int = 7) -> None:
    """A benchmark's command line: `--repeats` and `--json`; prints the device, runs
    `measure(repeats)` and writes what it returns, with the device and the repeats."""
    parser = argparse.ArgumentParser(description=(doc or "").partition("\n")[0])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--json", type=Path, help="also write the results here")
    arguments = parser.parse_args()
    device = jax.devices()[0]
    name = f"{device.platform} ({device.device_kind})"
    print(f"device: {name}")
    results = {"device": name, "repeats": arguments.repeats, **measure(arguments.repeats)}
    if arguments.json:
        arguments.json.parent.mkdir(parents=True, exist_ok=True)
        arguments.json.write_text(json.dumps(results, indent=2) + "\n")


def measure_all(repeats: int) -> dict:
    small = ("8-dim sine SDE, 1000 steps", sine_drift, jnp.ones(8), 1000)
    large = (
        "MLP drift (width 256), batch 256x16, 200 steps",
        BatchMLP(16, 256, jax.random.key(0)),
        jax.random.normal(jax.random.key(8), (256, 16)),
        200,
    )
    return dict(
        loop_overhead=bench_loop_overhead([small, large], repeats),
        versus_diffrax=bench_diffrax([small, large], repeats),
        skipping=bench_skipping(repeats),
    )


if __name__ == "__main__":
    command_line(__doc__, measure_all)
