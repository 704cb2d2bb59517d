"""Levels in bfloat16 inside a float32 solve: dtypes, real bf16 compute, and an error
within a bound derived from bfloat16's unit roundoff; bfloat16 states."""

import itertools
import json
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
import pytest

import mlem_jax
from mlem_jax.diffusion.sample import initial_noise, sample, score_levels

from diffusion_helpers import IMAGE_SHAPE, tiny_unets
from experiment_helpers import run_experiment


U16 = float(jnp.finfo(jnp.bfloat16).eps) / 2  # unit roundoff of bfloat16: 2^-8
U32 = float(jnp.finfo(jnp.float32).eps) / 2  # 2^-24
DIM = 16


class Linear(eqx.Module):
    """f(t, y) = B y: its bfloat16 error has a classical bound."""

    matrix: jax.Array

    def __call__(self, t, y, args):
        return self.matrix @ y


def _levels():
    k1, k2 = jax.random.split(jax.random.key(0))
    b1 = -jnp.eye(DIM) + jax.random.normal(k1, (DIM, DIM)) / DIM
    b2 = b1 + 0.1 * jax.random.normal(k2, (DIM, DIM)) / DIM
    return [Linear(b1), Linear(b2)]


def _norm(matrix) -> float:
    return float(jnp.abs(matrix).sum(axis=1).max())  # the infinity norm


def _evaluation_bound() -> float:
    """|fl(B y) - B y| <= c |B| |y| componentwise, y and B rounded to bf16 (u each), a
    dot product of DIM terms in any order (gamma_DIM) and the bf16 result rounded (u)."""
    gamma = DIM * U16 / (1 - DIM * U16)
    return (1 + U16) ** 3 * (1 + gamma) - 1


def test_level_dtypes_and_single_evaluation_bound():
    level = _levels()[1]
    low = mlem_jax.in_precision(level)
    assert low.level.matrix.dtype == jnp.bfloat16  # pyright: ignore[reportFunctionMemberAccess] and level.matrix.dtype == jnp.float32
    y = jax.random.normal(jax.random.key(1), (DIM,))
    exact, rounded = level(0.0, y, None), low(0.0, y, None)
    assert rounded.dtype == jnp.float32
    bound = _evaluation_bound() * (jnp.abs(level.matrix) @ jnp.abs(y))
    assert bool((jnp.abs(rounded - exact) <= bound).all())
    # Really bfloat16: float32 would be ~2^-24 off, bfloat16 is ~2^-8 off.
    assert float(jnp.abs(rounded - exact).max()) > 2.0**-16 * float(jnp.abs(exact).max())
    jaxpr = str(jax.make_jaxpr(low)(0.0, y, None))
    assert "dot_general" in jaxpr and all(
        "bf16" in line for line in jaxpr.splitlines() if "dot_general" in line
    )


@pytest.mark.parametrize("method", ["em", "mlem"])
def test_solve_in_bfloat16_stays_within_the_derived_bound(method):
    levels = _levels() if method == "mlem" else _levels()[1:]
    p = 0.3
    kw: dict[str, Any] = dict(
        probabilities=[1.0, p] if method == "mlem" else None,
        key=jax.random.key(2),
        diffusion=lambda t, y, args: 0.3,
        brownian=jax.random.key(3),
        saveat="steps",
    )
    y0, steps = jnp.ones(DIM), 20
    exact = mlem_jax.solve(levels, y0, 0.0, 1.0, steps, **kw)
    low = mlem_jax.solve([mlem_jax.in_precision(f) for f in levels], y0, 0.0, 1.0, steps, **kw)
    assert low.ys.dtype == jnp.float32
    assert low.evaluations.tolist() == exact.evaluations.tolist()
    # e_{n+1} <= (1 + h L) e_n + h D_n + rounding of the float32 update, where D_n bounds
    # the bf16 error of the drift estimate at the bf16 run's state and L its Lipschitz
    # constant: F = f1 + (B / p)(f2 - f1), so D = c (|B1| + (|B1| + |B2|) / p) |y| at most.
    h, c = 1.0 / steps, _evaluation_bound()
    norms = [_norm(f.matrix) for f in levels]
    if method == "mlem":
        lipschitz = norms[0] + _norm(levels[1].matrix - levels[0].matrix) / p
        scale = norms[0] + (norms[0] + norms[1]) / p
    else:
        lipschitz = scale = norms[0]
    bound = 0.0
    for y in np.abs(np.asarray(low.ys[:-1])).max(axis=1):
        drift = scale * y
        bound = (1 + h * lipschitz) * bound + h * c * drift + 4 * U32 * (y + h * drift + 1)
    error = float(jnp.abs(low.ys[-1] - exact.ys[-1]).max())
    assert error <= bound, (error, bound)
    assert error > 2.0**-16 * float(jnp.abs(exact.ys[-1]).max())  # really bfloat16


def test_unet_levels_compute_in_bfloat16_and_sample_in_float32():
    levels = score_levels(tiny_unets(), "sde")
    low = [mlem_jax.in_precision(f) for f in levels]
    floating = [x.dtype for x in jtu.tree_leaves(low) if eqx.is_inexact_array(x)]
    assert floating and all(d == jnp.bfloat16 for d in floating)
    x1 = initial_noise(jax.random.key(1), 2, IMAGE_SHAPE)
    jaxpr = str(jax.make_jaxpr(low[1])(jnp.asarray(0.5), x1, None))
    convolutions = [line for line in jaxpr.splitlines() if "conv_general_dilated" in line]
    assert convolutions and all("bf16[" in line.split("=")[0] for line in convolutions)
    assert low[1](0.5, x1, None).dtype == jnp.float32
    kw: dict[str, Any] = dict(
        key=jax.random.key(3), brownian=jax.random.key(2), probabilities=(1.0, 0.5)
    )
    ys = sample("mlem", low, x1, 4, **kw).ys  # pyright: ignore[reportArgumentType]
    assert ys.dtype == jnp.float32 and bool(jnp.isfinite(ys).all())


@pytest.mark.parametrize("coupling", ["nested", "independent"])
def test_drift_estimate_of_a_bfloat16_state_is_unbiased(coupling):
    """E[F] over the draws, enumerated exactly (no sampling error), is the top level to
    float32 accuracy for a bfloat16 state: dividing by p_l rounded to bfloat16
    (0.3 -> 0.30078) biased every correction by about 0.26%."""
    values = [
        jax.random.normal(k, (DIM,)).astype(jnp.bfloat16)
        for k in jax.random.split(jax.random.key(4), 3)
    ]
    levels = [lambda t, y, args, v=v: v for v in values]
    p = np.array([1.0, 0.3, 0.07])
    y = jnp.zeros(DIM, jnp.bfloat16)
    mean, scale = np.zeros(DIM), np.zeros(DIM)
    for drawn in itertools.product([True], [False, True], [False, True]):
        if coupling == "nested":
            if drawn != tuple(sorted(drawn, reverse=True)):
                continue  # the nested coupling draws levels 1..L only
            top = sum(drawn) - 1
            weight = p[top] - (p[top + 1] if top + 1 < len(p) else 0.0)
        else:
            weight = np.prod([q if b else 1 - q for q, b in zip(p[1:], drawn[1:])])
        estimate, _ = mlem_jax.multilevel_drift(
            levels, jnp.asarray(p), jnp.array(drawn), 0.0, y, None, coupling
        )
        estimate = np.asarray(estimate, np.float64)
        mean, scale = mean + weight * estimate, np.maximum(scale, np.abs(estimate))
    # A few float32 roundings of the largest value the estimate takes.
    np.testing.assert_array_less(np.abs(mean - np.asarray(values[-1], np.float64)), 8 * U32 * scale)


def test_pytree_states_and_refusals():
    level = lambda t, y, args: {"a": 2.0 * y["a"], "n": y["n"]}
    y = {"a": jnp.ones(3), "n": jnp.arange(3)}
    out = mlem_jax.in_precision(level)(0.0, y, None)
    assert out["a"].dtype == jnp.float32 and out["n"].dtype == y["n"].dtype
    with pytest.raises(ValueError, match="`dtype` must be a floating dtype"):
        mlem_jax.in_precision(level, jnp.int32)
    with pytest.raises(ValueError, match="`dtype` must be a floating dtype"):
        mlem_jax.in_precision(level, "bfloat17")
    with pytest.raises(TypeError, match="`level` must be a callable"):
        mlem_jax.in_precision(jnp.ones(3))  # pyright: ignore[reportArgumentType]


@pytest.mark.slow
def test_bfloat16_experiment_quick(tmp_path):
    run_experiment("bfloat16", tmp_path, "--quick", timeout=600)
    report = json.loads((tmp_path / "bfloat16_quick.json").read_text())
    assert (tmp_path / "bfloat16_quick_table.md").read_text().startswith("| method |")
    for run in report["runs"]:
        assert run["same_draws"] and 0 < run["bfloat16_vs_float32"] < run["error_float32"]
    # One bf16 evaluation is off by a few unit roundoffs (2^-8) of the drift at t >= 0.1.
    assert all(
        0 < e < 8 * U16 for p in report["level_errors"] if p["t"] >= 0.1 for e in p["levels"]
    )
