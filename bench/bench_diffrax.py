"""`MLEM` inside `diffrax.diffeqsolve`: ratios measured side by side in one run.

(a) `MLEM` with only the top level (K = 1, plain Euler-Maruyama through the ML-EM step)
    vs `diffrax.Euler()` on the same SDE and Brownian path. Goal: <= 1.1x the time.
(b) `MLEM` in `diffeqsolve` vs `mlem_jax.solve` on the same multilevel problem, same key
    and same Brownian path (the two compute the same steps). Reported, no goal. Once for
    the SDE (both read a VirtualBrownianTree, which costs the same on both sides) and
    once for the ODE (the drift alone), where nothing hides diffrax's loop.
(c) To tell the loop from the step: `diffrax.Euler()` on an `ODETerm` whose vector field
    is the same multilevel estimate (same draws) vs `mlem_jax.solve`. If (c) ~ (b, ODE),
    the gap to `solve` is diffrax's loop, paid by any diffrax solver, not by `MLEM`.

Each timing is the median of several calls after compilation, with
`block_until_ready`; the two sides of a ratio are called alternately so that load from
other processes hits both alike. Run: python bench/bench_diffrax.py [--repeats 9]
"""

import argparse
from typing import Any

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import lineax
import numpy as np

import mlem_jax
from mlem_jax._timing import interleaved_median_seconds


T, SIGMA, NUM_STEPS = 1.0, 0.5, 500
PROBABILITIES = (1.0, 0.3, 0.1)
KEY = jax.random.key(3)

LOOP_OVERHEAD = """\
Where diffrax's loop overhead comes from (per step, paid by Euler and MLEM alike; read
off diffrax/_integrate.py, not timed one by one):
  - `diffeqsolve` runs a `while_loop` (checkpointed under the default
    RecursiveCheckpointAdjoint) whose trip count is unknown at compile time; `solve`
    is a `lax.scan` of fixed length;
  - every step goes through the step-size controller (`ConstantStepSize` computes
    t_{n+1}, clips it to t1, returns keep/reject flags that select the new state),
    result/`made_jump`/event bookkeeping and runtime checks (`eqx.error_if`);
  - `SaveAt` buffers and `stats` counters are updated inside the loop;
  - term wrappers (WrapTerm for the direction of time, MultiTerm) cost nothing at run
    time: they are resolved when tracing.
  On the SDE both sides evaluate the same VirtualBrownianTree twice per step, which
  dominates small states and hides the loop; with the levels dominating, ratios tend
  to 1."""


class FlatBatchedLevel(eqx.Module):
    """A level on one state (d,) applied to a batch (B, d), stored flat as (B * d,):
    diffrax's diagonal-noise operator (`lineax.DiagonalLinearOperator`) acts on
    vectors."""

    level: mlem_jax.RandomFeatureDrift
    shape: tuple[int, int] = eqx.field(static=True)

    def __call__(self, t, y, args):
        batch = y.reshape(self.shape)
        return jax.vmap(lambda x: self.level(t, x, args))(batch).reshape(-1)


def problem(batch, dim, feature_counts):
    features = mlem_jax.random_feature_levels(jax.random.key(0), dim, feature_counts, 1.5)
    levels = [FlatBatchedLevel(level, (batch, dim)) for level in features]
    y0 = jax.random.normal(jax.random.key(1), (batch * dim,))
    path = diffrax.VirtualBrownianTree(
        0.0, T, tol=T / NUM_STEPS / 4, shape=(batch * dim,), key=jax.random.key(2)
    )
    return levels, y0, path


def noise_term(path):
    return diffrax.ControlTerm(
        lambda t, y, a: lineax.DiagonalLinearOperator(jnp.full(y.shape, SIGMA)), path
    )


def diffusion(t, y, args):
    return SIGMA


SAVE = diffrax.SaveAt(t1=True, solver_state=True)


@eqx.filter_jit
def euler(levels, y0, path):
    terms = diffrax.MultiTerm(diffrax.ODETerm(levels[-1]), noise_term(path))
    return diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, T, T / NUM_STEPS, y0).ys[-1]


@eqx.filter_jit
def mlem_top_only(levels, y0, path):
    terms = diffrax.MultiTerm(mlem_jax.MultilevelTerm(levels[-1:]), noise_term(path))
    return diffrax.diffeqsolve(terms, mlem_jax.MLEM(), 0.0, T, T / NUM_STEPS, y0).ys[-1]


@eqx.filter_jit
def mlem_diffrax(levels, y0, path):
    terms = mlem_jax.MultilevelTerm(levels, PROBABILITIES)
    if path is not None:
        terms = diffrax.MultiTerm(terms, noise_term(path))
    sol = diffrax.diffeqsolve(terms, mlem_jax.MLEM(KEY), 0.0, T, T / NUM_STEPS, y0, saveat=SAVE)
    return sol.ys[-1], mlem_jax.evaluations(sol)


@eqx.filter_jit
def mlem_solve(levels, y0, path):
    noise: dict[str, Any] = {} if path is None else dict(diffusion=diffusion, brownian=path)
    sol = mlem_jax.solve(
        levels, y0, 0.0, T, NUM_STEPS, probabilities=PROBABILITIES, key=KEY, **noise
    )
    return sol.ys, sol.evaluations


@eqx.filter_jit
def euler_same_estimate(levels, y0, path):
    """The ML-EM drift estimate written as an ODETerm vector field for diffrax.Euler:
    the draws of step n are `draw_levels(KEY, p, step=n)`, n read off the grid time t."""
    p = jnp.asarray(PROBABILITIES)

    def vector_field(t, y, args):
        n = jnp.round(t * NUM_STEPS / T).astype(jnp.int32)
        drawn = mlem_jax.draw_levels(KEY, p, step=n)
        return mlem_jax.multilevel_drift(levels, p, drawn, t, y, args)[0]

    terms = diffrax.ODETerm(vector_field)
    return diffrax.diffeqsolve(terms, diffrax.Euler(), 0.0, T, T / NUM_STEPS, y0).ys[-1]


def row(name, seconds, baseline_name, baseline_seconds, goal=None):
    ratio = seconds / baseline_seconds
    verdict = "" if goal is None else ("  ok" if ratio <= goal else f"  ABOVE GOAL {goal}x")
    print(
        f"  {name:<38} {seconds * 1e3:8.2f} ms  vs  {baseline_name:<16} "
        f"{baseline_seconds * 1e3:8.2f} ms   ratio {ratio:5.2f}x{verdict}"
    )


def check_same_steps(levels, y0, path):
    """Each ratio compares two computations of the same steps: check before timing."""
    close: dict[str, Any] = dict(rtol=1e-4, atol=1e-4)
    top_only, baseline = mlem_top_only(levels, y0, path), euler(levels, y0, path)
    np.testing.assert_allclose(top_only, baseline, **close)
    for noise in (path, None):
        y_diffrax, counts_diffrax = mlem_diffrax(levels, y0, noise)
        y_solve, counts = mlem_solve(levels, y0, noise)
        np.testing.assert_allclose(y_diffrax, y_solve, **close)
        assert (counts_diffrax == counts).all(), (counts_diffrax, counts)
    # After the loop: the ODE's solution from `solve`.
    np.testing.assert_allclose(euler_same_estimate(levels, y0, None), y_solve, **close)
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    repeats = parser.parse_args().repeats
    print(
        f"jax {jax.__version__}, diffrax {diffrax.__version__}, "
        f"device {jax.devices()[0].device_kind}, {NUM_STEPS} steps, p = {PROBABILITIES}, "
        f"median of {repeats} alternating calls\n"
    )
    sizes = [
        ("small: 1 x 4 state, levels of 8/32/128 features", 1, 4, [8, 32, 128]),
        ("medium: 32 x 16 state, levels of 16/128/1024 features", 32, 16, [16, 128, 1024]),
    ]
    for title, batch, dim, counts in sizes:
        print(title)
        levels, y0, path = problem(batch, dim, counts)
        evaluations = check_same_steps(levels, y0, path)

        def medians(first, second, noise):
            return interleaved_median_seconds([first, second], levels, y0, noise, repeats=repeats)

        mlem_s, euler_s = medians(mlem_top_only, euler, path)
        row("(a) SDE: MLEM, top level only", mlem_s, "diffrax.Euler()", euler_s, goal=1.1)
        for name, noise in (("SDE", path), ("ODE", None)):
            diffrax_s, solve_s = medians(mlem_diffrax, mlem_solve, noise)
            row(f"(b) {name}: MLEM in diffeqsolve", diffrax_s, "mlem_jax.solve", solve_s)
        euler_s, solve_s = medians(euler_same_estimate, mlem_solve, None)
        row("(c) ODE: Euler() on the same estimate", euler_s, "mlem_jax.solve", solve_s)
        print(f"      level evaluations (of {NUM_STEPS} steps): {evaluations.tolist()}\n")
    print(LOOP_OVERHEAD)


if __name__ == "__main__":
    main()
