"""What recompiles: `solve` once per new function object (so define levels and the
diffusion once), and nothing the library builds itself when called again with the same
shapes (counted with JAX's compilation events)."""

import contextlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax
from mlem_jax.diffusion.calibrate import calibrate
from mlem_jax.diffusion.classifier import Classifier
from mlem_jax.diffusion.metrics import classifier_features
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import initial_noise, sample, score_levels, stitch_switch
from mlem_jax.distributed import global_noise

from diffusion_helpers import IMAGE_SHAPE, tiny_unets


COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def compilations():
    """The names of the functions XLA compiles inside the block."""
    names = []

    def listener(event: str, duration_secs: float, **kwargs: str | int) -> None:
        if event == COMPILE:
            names.append(kwargs.get("fun_name"))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield names
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def twice(run):
    """Compilations of the first and of the second call of `run`."""
    with compilations() as first:
        run()
    with compilations() as second:
        run()
    return first, second


def test_solve_compiles_once_per_function_object():
    levels = mlem_jax.random_feature_levels(jax.random.key(0), 4, [8, 32], alpha=1.0)

    def diffusion(t, y, args):
        return 0.5

    def run(g, key):
        return mlem_jax.solve(
            levels,
            jnp.ones(4),
            0.0,
            1.0,
            16,
            probabilities=[1.0, 0.3],
            key=key,
            diffusion=g,
            brownian=key,
        ).ys

    with compilations() as reused:
        for seed in range(3):
            run(diffusion, jax.random.key(seed))
    with compilations() as inline:
        for seed in range(3):
            run(lambda t, y, args: 0.5, jax.random.key(seed))
    assert reused.count("jit(_scan)") == 1  # `solve`'s jitted loop, once
    assert inline.count("jit(_scan)") == 3  # a new lambda is a new function: recompiles


def test_samplers_runner_and_calibration_compile_once_for_the_same_shapes():
    levels = score_levels(tiny_unets())
    x1 = initial_noise(jax.random.key(1), 2, IMAGE_SHAPE)
    kw = dict(key=jax.random.key(3), brownian=jax.random.key(2))
    # (T-Stitch builds its stitched level anew at every call.)
    cases: tuple[tuple[str, dict[str, Any]], ...] = (
        ("mlem", dict(probabilities=(1.0, 0.5), groups=2)),
        ("tstitch", dict(switch=stitch_switch(0.5))),
    )
    for method, extra in cases:
        first, second = twice(lambda: sample(method, levels, x1, 3, **kw, **extra).ys)
        assert first and not second, (method, second)
    setting = Setting("mlem", 3, (1.0, 0.5))
    first, second = twice(
        lambda: run_setting(setting, levels, x1, jax.random.key(2), jax.random.key(3), [1.0, 4.0])
    )
    assert first and not second, second
    first, second = twice(
        lambda: calibrate(levels, jax.random.key(0), IMAGE_SHAPE, count=2, num_steps=2, repeats=1)
    )
    assert first and not second, second


def test_classifier_features_and_sharded_noise_compile_once():
    model = Classifier(2, image_size=8, features=4, key=jax.random.key(2))
    images = np.zeros((3, *IMAGE_SHAPE), np.float32)
    first, second = twice(lambda: classifier_features(model, images))
    assert first and not second, second
    first, second = twice(lambda: global_noise(jax.random.key(0), 2, IMAGE_SHAPE))
    assert first and not second, second


def test_seconds_in_turns_compiles_each_run_once_and_times_it_every_round(monkeypatch):
    from mlem_jax.diffusion import runner

    levels = score_levels(tiny_unets())
    x1 = initial_noise(jax.random.key(1), 2, IMAGE_SHAPE)
    runs = {"em": (Setting("em", 3), levels[-1:]), "mlem": (Setting("mlem", 3, (1.0, 0.5)), levels)}
    order = []
    timed = runner.run_setting

    def recorded(setting, *args, **kwargs):
        order.append(setting.method)
        return timed(setting, *args, **kwargs)

    monkeypatch.setattr(runner, "run_setting", recorded)
    cache: dict = {}
    seconds = runner.seconds_in_turns(runs, x1, jax.random.key(2), jax.random.key(3), cache, 3)
    # In turns, every round; one compiled sampler per run, kept in `cache`.
    assert order == ["em", "mlem"] * 3 and len(cache) == 2
    assert set(seconds) == {"em", "mlem"} and all(s > 0 for s in seconds.values())
