"""Time grids in the diffusion samplers: `sample(ts=)`, settings on a grid family, paths
for a family, calibration and schedules on a grid, the CLI's `--grid`, and levels from
networks of the user's own kind."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem_jax.cli import GRIDS as CLI_GRIDS, _parser
from mlem_jax.diffusion import DEFAULT_GRID, GRIDS, time_grid
from mlem_jax.diffusion.brownian import family_brownian_path
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for, schedule_for
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import (
    initial_noise,
    method_cost,
    sample,
    score_levels,
    stitch_evaluations,
    stitch_switch,
)
from mlem_jax.diffusion.sde import VESDE, VPSDE

from conftest import assert_close
from diffusion_helpers import IMAGE_SHAPE, tiny_unets


def test_sample_on_the_uniform_grid_as_ts_equals_num_steps():
    levels = score_levels(tiny_unets(), "ode")
    x1 = initial_noise(jax.random.key(1), 3, IMAGE_SHAPE)
    by_steps = sample("em", levels, x1, 6)
    by_grid = sample("em", levels, x1, ts=time_grid("uniform", VPSDE(), 6))
    assert_close(by_grid.ys, by_steps.ys, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="`num_steps`.*or as `ts=`, exactly one"):
        sample("em", levels, x1, 6, ts=time_grid("uniform", VPSDE(), 6))


def test_settings_on_a_grid_family_read_one_path(grid="logsnr"):
    """Every step count dividing the path's reads it exactly: EM with N steps on the
    grid equals sample(ts=time_grid(grid, N)) on the same path, and the runner accounts
    N evaluations."""
    levels = score_levels(tiny_unets(), "sde")
    x1 = initial_noise(jax.random.key(1), 2, IMAGE_SHAPE)
    path = family_brownian_path(jax.random.key(2), x1.shape, grid, VPSDE(), 16)
    for steps in (4, 8, 16):
        outcome = run_setting(Setting("em", steps, grid=grid), levels, x1, path, None, [1.0, 4.0])
        direct = sample("em", levels, x1, ts=time_grid(grid, VPSDE(), steps), brownian=path)
        assert_close(outcome.samples, np.asarray(direct.ys), rtol=1e-5, atol=1e-5)
        assert outcome.flops == 4.0 * steps
    # A grid of another family lies off the path's nodes: refused, naming `ts`.
    with pytest.raises(ValueError, match="`ts` must lie on the nodes"):
        sample("em", levels, x1, ts=time_grid("uniform", VPSDE(), 4), brownian=path)


def test_t_stitch_counts_its_steps_on_the_grid():
    ts = time_grid("logsnr", VPSDE(), 10)
    switch = stitch_switch(0.5)
    counts = stitch_evaluations(10, switch, ts=ts)
    assert counts.tolist() == [int((ts[:-1] > switch).sum()), int((ts[:-1] <= switch).sum())]
    # The log-SNR grid's steps crowd near t = 0: fewer of them start before the switch.
    assert counts[0] < stitch_evaluations(10, switch)[0]
    assert method_cost("tstitch", None, [1.0, 10.0], 10, switch, ts=ts) == counts @ [1.0, 10.0]


def test_calibration_and_schedules_on_a_grid():
    levels = score_levels(tiny_unets(), "sde")
    result = calibrate(
        levels, jax.random.key(0), IMAGE_SHAPE, count=2, num_steps=8, repeats=1, bins=4, grid="edm"
    )
    ts = time_grid("edm", VPSDE(), 8)
    assert result["grid"] == "edm"
    assert_close(np.asarray(result["sensitivity"]["times"]), ts[1:], rtol=1e-6)
    assert len(result["sensitivity"]["gains"]) == 8
    schedule = schedule_for(result, 8, 2.0, ts=ts)
    assert schedule.shape == (8, 2)
    # The p_2 of a step grows with its squared size at equal v_2(t) (one bin's steps).
    profile = np.asarray(result["profile"]["edges"])
    same_bin = np.searchsorted(profile, ts[:-1], side="right")
    steps = np.abs(np.diff(ts))
    for a in range(8):
        for b in range(8):
            if same_bin[a] == same_bin[b] and steps[a] > steps[b] and schedule[b, 1] < 1:
                assert schedule[a, 1] > schedule[b, 1]
    with pytest.raises(ValueError, match="num_steps \\+ 1 = 9 times"):
        schedule_for(result, 8, 2.0, ts=ts[:-1])


def test_cli_grid_choices_are_the_library_grids():
    assert CLI_GRIDS == GRIDS and DEFAULT_GRID in GRIDS
    args = _parser().parse_args(["sample", "--grid", "edm"])
    assert args.grid == "edm"
    with pytest.raises(SystemExit):
        _parser().parse_args(["sample", "--grid", "cosine"])


class Network(eqx.Module):
    """A user's network of one sample: an MLP on the pixels and t."""

    mlp: eqx.nn.MLP

    def __init__(self, width: int, *, key):
        self.mlp = eqx.nn.MLP(16 + 1, 16, width, depth=1, key=key)

    def __call__(self, t, x):
        return self.mlp(jnp.append(x.reshape(-1), t)).reshape(x.shape)


@pytest.mark.parametrize(
    "prediction, sde", [("noise", VPSDE()), ("score", VESDE()), ("x0", VPSDE())]
)
def test_own_networks_calibrate_and_sample_on_a_grid(prediction, sde):
    keys = jax.random.split(jax.random.key(0), 2)
    levels = score_levels(
        [Network(w, key=k) for w, k in zip((4, 16), keys)], "sde", sde, prediction
    )
    result = calibrate(
        levels, jax.random.key(1), (1, 4, 4), count=2, num_steps=8, repeats=1, bins=2, grid="edm"
    )
    assert len(result["variances"]) == 1 and result["variances"][0] > 0
    assert result["flops"][1] > result["flops"][0]
    p = probabilities_for(result, 16, 4.0)
    x1 = initial_noise(jax.random.key(2), 4, (1, 4, 4), sde)
    assert float(jnp.std(x1)) > 0.5 * sde.prior_std
    run = sample(
        "mlem",
        levels,
        x1,
        ts=time_grid("edm", sde, 16),
        key=jax.random.key(3),
        brownian=jax.random.key(4),
        probabilities=p,
    )
    assert run.ys.shape == (4, 1, 4, 4) and bool(jnp.isfinite(run.ys).all())
    assert int(run.evaluations[0]) == 16 and int(run.evaluations[1]) < 16
