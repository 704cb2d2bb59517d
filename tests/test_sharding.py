"""A batch sharded over 4 forced CPU devices flows through `solve` and the diffusion
samplers: same result as one device, output still sharded, cond-skipping intact.

The 4-device checks run in one subprocess (XLA_FLAGS must be set before JAX starts), so
this pytest process keeps its single device.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

import mlem_jax
from mlem_jax.diffusion.checkpoint import save_model

from diffusion_helpers import IMAGE_SHAPE, tiny_unets


DEVICES = 4
TIMEOUT = 240

SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    import mlem_jax
    from mlem_jax.diffusion.brownian import grid_brownian_path
    from mlem_jax.diffusion.levels import load_levels
    from mlem_jax.diffusion.sample import T_MIN, initial_noise, sample, score_levels
    from diffusion_helpers import IMAGE_SHAPE

    out = {"devices": jax.device_count(),
           "partitionable": bool(jax.config.jax_threefry_partitionable)}
    mesh = mlem_jax.batch_mesh()
    batch = mlem_jax.batch_sharding(mesh)

    def spec(x):
        return [None if a is None else str(a) for a in x.sharding.spec]

    def compare(name, sharded, single):
        out[name] = {"max_abs_diff": float(np.abs(np.asarray(sharded) - np.asarray(single)).max()),
                     "scale": float(np.abs(np.asarray(single)).max()),
                     "spec": spec(sharded), "mesh_devices": len(sharded.sharding.device_set)}

    # Diffusion ML-EM, Brownian increments drawn from a key; the compiled programs also
    # show that the partitioned one keeps its conditionals (the skipped levels).
    levels = score_levels(load_levels(sys.argv[1])[0], "sde")  # the tiny UNets
    x1 = initial_noise(jax.random.key(1), 8, IMAGE_SHAPE)
    xs = mlem_jax.shard_batch(x1, mesh)
    def mlem(x):
        run = sample("mlem", levels, x, 8, key=jax.random.key(3), brownian=jax.random.key(2),
                     probabilities=(1.0, 0.3))
        return run.ys, run.evaluations
    single, sharded = (jax.jit(mlem).lower(x).compile() for x in (x1, xs))
    (single_ys, single_ev), (sharded_ys, sharded_ev) = single(x1), sharded(xs)
    compare("mlem_key", sharded_ys, single_ys)
    out["evaluations"] = [single_ev.tolist(), sharded_ev.tolist()]
    # (Not counting the conditionals that guard `throw=True`'s host callbacks, which the
    # partitioner adds to run them on one device.)
    out["conditionals"] = [sum("conditional(" in line and "pure_callback" not in line
                               for line in c.as_text().splitlines()) for c in (single, sharded)]
    out["per_device_batch_in_hlo"] = "f32[2,1,8,8]" in sharded.as_text()

    # The same with a stored Brownian path sharded on its batch axis (axis 1), all states saved.
    path = grid_brownian_path(jax.random.key(2), x1.shape, 8, T_MIN)
    kw = dict(key=jax.random.key(3), brownian=path, probabilities=(1.0, 0.3), saveat="steps")
    single = sample("mlem", levels, x1, 8, **kw)
    sharded_path = mlem_jax.shard_batch(path, mesh, axis=1)
    sharded = sample("mlem", levels, xs, 8, **{**kw, "brownian": sharded_path})
    compare("mlem_path_steps", sharded.ys, single.ys)

    # Skipping survives sharding: each level runs (a host callback counts it) only at the
    # steps where it is drawn, not at every step.
    calls = [0, 0]
    def counted(i, level):
        def f(t, y, args):
            jax.debug.callback(lambda: calls.__setitem__(i, calls[i] + 1))
            return level(t, y, args)
        return f
    run = mlem_jax.solve([counted(i, lv) for i, lv in enumerate(levels)], xs, 1.0, T_MIN, 8,
                         probabilities=[1.0, 0.3], key=jax.random.key(3),
                         diffusion=levels[-1].sde.diffusion, brownian=jax.random.key(2))
    jax.block_until_ready(run.ys)
    out["callbacks"], out["callback_evaluations"] = calls, run.evaluations.tolist()

    # `solve` on random-feature levels, the batch inside the levels and `vmap`ped over.
    features = mlem_jax.random_feature_levels(jax.random.key(0), 8, [16, 64, 256], alpha=1.0)
    batched = [lambda t, y, a, f=f: jax.vmap(lambda y: f(t, y, a))(y) for f in features]
    y0 = jax.random.normal(jax.random.key(5), (16, 8))
    kw = dict(probabilities=[1.0, 0.3, 0.05], key=jax.random.key(2),
              diffusion=lambda t, y, a: 0.5, brownian=jax.random.key(1))
    compare("solve_batched_levels",
            mlem_jax.solve(batched, mlem_jax.shard_batch(y0, mesh), 0.0, 1.0, 50, **kw).ys,
            mlem_jax.solve(batched, y0, 0.0, 1.0, 50, **kw).ys)
    keys = jax.random.split(jax.random.key(3), 16)
    paths = jax.vmap(lambda y, k: mlem_jax.solve(
        features, y, 0.0, 1.0, 50, probabilities=[1.0, 0.3, 0.05], key=jax.random.key(2),
        diffusion=lambda t, y, a: 0.5, brownian=k).ys)
    compare("solve_vmap", paths(*mlem_jax.shard_batch((y0, keys), mesh)), paths(y0, keys))

    # Refusals name the argument, the expectation and what was given.
    errors = {}
    for name, call in {
        "indivisible": lambda: mlem_jax.shard_batch(jnp.zeros((6, 3)), mesh),
        "no_axis": lambda: mlem_jax.shard_batch(jnp.zeros(()), mesh),
        "axis_name": lambda: mlem_jax.shard_batch(jnp.zeros(4), mesh, axis_name="data"),
    }.items():
        try:
            call()
            errors[name] = None
        except ValueError as error:
            errors[name] = str(error)
    out["errors"] = errors
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory) -> dict:
    checkpoints = tmp_path_factory.mktemp("tiny_unets")
    for model in tiny_unets():  # built once here, loaded there
        save_model(checkpoints / f"unet_w{model.width}", model, image_shape=list(IMAGE_SHAPE))
    env = dict(
        os.environ,
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES}",
        JAX_PLATFORMS="cpu",
    )
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(checkpoints)],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def test_this_process_keeps_one_device():
    assert jax.device_count() == 1


def test_runs_on_four_devices_with_partitionable_threefry(four_devices):
    assert four_devices["devices"] == DEVICES and four_devices["partitionable"]


@pytest.mark.parametrize(
    "name", ["mlem_key", "mlem_path_steps", "solve_batched_levels", "solve_vmap"]
)
def test_sharded_equals_single_device_and_stays_sharded(four_devices, name):
    run = four_devices[name]
    # Float tolerance: the partitioned program may fuse differently from the 1-device one.
    assert run["max_abs_diff"] <= 1e-5 * max(1.0, run["scale"]), run
    assert run["mesh_devices"] == DEVICES
    expected = [None, "batch"] if name == "mlem_path_steps" else ["batch"]
    assert run["spec"] == expected, run


def test_level_draws_are_replicated_and_skipping_survives(four_devices):
    single, sharded = four_devices["evaluations"]
    assert single == sharded and sharded[1] < sharded[0] == 8
    # Each level's callback ran once per evaluation, not at every step.
    assert four_devices["callbacks"] == four_devices["callback_evaluations"]
    assert four_devices["callbacks"][1] < 8
    unsharded, partitioned = four_devices["conditionals"]
    assert partitioned == unsharded > 0
    assert four_devices["per_device_batch_in_hlo"]  # really partitioned: 8 images / 4


def test_refusals(four_devices):
    errors = four_devices["errors"]
    assert "batch axis 0 must be divisible by the 4 devices" in errors["indivisible"]
    assert "got size 6" in errors["indivisible"]
    assert "`x` must have a batch axis 0" in errors["no_axis"]
    assert "`axis_name` must be an axis of `mesh`" in errors["axis_name"]


def test_one_device_helpers():
    mesh = mlem_jax.batch_mesh()
    x = mlem_jax.shard_batch(jnp.arange(6.0).reshape(3, 2), mesh)
    assert x.sharding == mlem_jax.batch_sharding(mesh) and x.shape == (3, 2)
    with pytest.raises(ValueError, match="`axis` must be a non-negative int"):
        mlem_jax.batch_sharding(mesh, axis=-1)
    with pytest.raises(ValueError, match="`devices` must hold at least one device"):
        mlem_jax.batch_mesh([])
    leaves = mlem_jax.shard_batch({"a": jnp.ones((2, 1)), "n": 3}, mesh)
    assert leaves["n"] == 3
