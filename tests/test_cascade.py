"""CascadeUNet (a UNet with early exits), its family, its joint loss, its checkpoint."""

from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax.diffusion.calibrate import calibrate, probabilities_for
from mlem_jax.diffusion.cascade import CascadeFamily, CascadeUNet
from mlem_jax.diffusion.checkpoint import load_model, save_model
from mlem_jax.diffusion.levels import (
    CASCADE_CHECKPOINTS,
    load_cascade,
    load_sampling_levels,
    train_cascade,
)
from mlem_jax.diffusion.sde import VPSDE, ScoreDrift, reverse_drift
from mlem_jax.diffusion.train import ExitsObjective, TrainConfig, _noised
from mlem_jax.diffusion.unet import UNet


SHAPE = (1, 8, 8)


def _trained_like(model: CascadeUNet, seed: int = 1) -> CascadeUNet:
    """`model` with every weight redrawn (readouts included), so no exit is zero."""
    leaves, tree = jax.tree_util.tree_flatten(eqx.filter(model, eqx.is_array))
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    noisy = [0.3 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)]
    return eqx.combine(jax.tree_util.tree_unflatten(tree, noisy), model)


@pytest.fixture(scope="module")
def cascade():
    return CascadeUNet((1, 2, 2), (1,), key=jax.random.key(0))


def test_every_exit_equals_the_first_at_initialisation(cascade):
    x = jax.random.normal(jax.random.key(1), SHAPE)
    exits = cascade.exits(0.4, x, 3)
    assert len(exits) == 3 and all(e.shape == SHAPE for e in exits)
    assert float(jnp.max(jnp.abs(exits[0]))) > 0
    for e in exits[1:]:
        np.testing.assert_array_equal(e, exits[0])


def test_exit_j_adds_stage_js_readout_to_the_exit_before(cascade):
    model = _trained_like(cascade)
    x = jax.random.normal(jax.random.key(2), SHAPE)
    exits = model.exits(0.7, x, 3)
    h, expected = None, []
    for stage in model.stages:
        h = stage.features(0.7, x, h)
        expected.append(stage.readout(h) + (expected[-1] if expected else 0.0))
    for got, want in zip(exits, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(exits[0], model.stages[0](0.7, x), rtol=1e-6, atol=1e-6)
    assert float(jnp.max(jnp.abs(exits[2] - exits[1]))) > 1e-3
    for depth in (1, 2):
        for got, want in zip(model.exits(0.7, x, depth), exits):
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(model(0.7, x), exits[-1])


def test_family_levels_are_the_reverse_drifts_of_the_exits(cascade):
    model, sde = _trained_like(cascade), VPSDE()
    y = jax.random.normal(jax.random.key(4), (3, *SHAPE))
    for kind in ("sde", "ode"):
        family = CascadeFamily(model, sde, kind)
        assert len(family) == 3
        drifts = family.evaluate(0.3, y, None, 3)
        for depth, drift in enumerate(drifts, 1):
            eps = jax.vmap(lambda x: model.exits(0.3, x, depth)[-1])(y)
            want = reverse_drift(sde, kind, 0.3, y, -eps / sde.sigma(0.3))
            np.testing.assert_allclose(drift, want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(family[depth - 1](0.3, y, None), drift, atol=1e-5)
        top = ScoreDrift(model, sde, kind)
        np.testing.assert_allclose(top(0.3, y, None), drifts[-1], rtol=1e-5, atol=1e-5)


def test_mlem_on_the_family_with_every_p_one_is_em_on_the_top_exit(cascade):
    family = CascadeFamily(_trained_like(cascade), VPSDE())
    y0 = jax.random.normal(jax.random.key(5), (2, *SHAPE))
    diffusion, path = VPSDE().diffusion, jax.random.key(6)
    mlem = mlem_jax.solve(
        family,
        y0,
        1.0,
        1e-3,
        6,
        probabilities=(1.0, 1.0, 1.0),
        key=jax.random.key(7),
        diffusion=diffusion,
        brownian=path,
    )
    em = mlem_jax.solve(
        [family[-1]], y0, 1.0, 1e-3, 6, probabilities=(1.0,), diffusion=diffusion, brownian=path
    )
    np.testing.assert_allclose(mlem.ys, em.ys, rtol=1e-5, atol=1e-5)


def test_bad_arguments_are_named(cascade):
    with pytest.raises(ValueError, match="`widths`"):
        CascadeUNet((4, 2), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`widths`"):
        CascadeUNet((), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`depth`"):
        cascade.exits(0.5, jnp.ones(SHAPE), 4)
    with pytest.raises(ValueError, match="`extra`"):
        cascade.stages[1].features(0.5, jnp.ones(SHAPE), None)
    with pytest.raises(ValueError, match="`extra`"):
        cascade.stages[1].features(0.5, jnp.ones(SHAPE), jnp.ones((8, 8, 3)))
    with pytest.raises(ValueError, match="`kind`"):
        CascadeFamily(cascade, VPSDE(), "euler")


def test_joint_loss_is_the_mean_of_each_exits_loss_plus_the_gaps(cascade):
    model, sde = _trained_like(cascade), VPSDE()
    images = jax.random.normal(jax.random.key(7), (4, *SHAPE))
    key = jax.random.key(8)
    t, xt, z = _noised(sde, images, key)
    exits = jax.vmap(lambda s, x: model.exits(s, x, 3))(t, xt)
    fits = [float(jnp.mean(jnp.square(e - z))) for e in exits]
    gaps = [float(jnp.mean(jnp.square(a - b))) for a, b in zip(exits, exits[1:])]
    plain = float(ExitsObjective(sde)(model, None, images, key))
    np.testing.assert_allclose(plain, np.mean(fits), rtol=1e-5)
    penalised = float(ExitsObjective(sde, 0.5)(model, None, images, key))
    np.testing.assert_allclose(penalised, np.mean(fits) + 0.5 * sum(gaps), rtol=1e-5)
    teacher = UNet(1, (1,), key=jax.random.key(9))
    target = jax.vmap(teacher)(t, xt)
    distilled = float(ExitsObjective(sde)(model, teacher, images, key))
    want = np.mean([float(jnp.mean(jnp.square(e - target))) for e in exits])
    np.testing.assert_allclose(distilled, want, rtol=1e-5)


def test_the_gap_penalty_pulls_only_the_lower_exit(cascade):
    """The next exit is not differentiated: with only the gaps in the loss (a model whose
    exits all fit equally), the top stage's weights get no gradient from them."""
    model, sde = _trained_like(cascade), VPSDE()
    images = jax.random.normal(jax.random.key(10), (2, *SHAPE))

    def gaps_only(m):
        objective = ExitsObjective(sde, 1.0)
        return objective(m, None, images, jax.random.key(11)) - ExitsObjective(sde)(
            m, None, images, jax.random.key(11)
        )

    grads = eqx.filter_grad(gaps_only)(model)
    top = jax.tree_util.tree_leaves(eqx.filter(grads.stages[-1].conv_out, eqx.is_array))
    lower = jax.tree_util.tree_leaves(eqx.filter(grads.stages[1].conv_out, eqx.is_array))
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in top)
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in lower)


def test_checkpoint_round_trip(tmp_path, cascade):
    model = _trained_like(cascade)
    manifest = save_model(tmp_path / "cascade", model, note="x")
    assert manifest["architecture"] == {
        "model": "CascadeUNet",
        "widths": [1, 2, 2],
        "multipliers": [1],
        "channels": 1,
    }
    loaded = cast(CascadeUNet, load_model(tmp_path / "cascade")[0])
    x = jnp.ones(SHAPE)
    np.testing.assert_array_equal(loaded(0.5, x), model(0.5, x))
    stage = model.stages[1]
    save_model(tmp_path / "stage", stage)
    again, stored = load_model(tmp_path / "stage")
    again = cast(UNet, again)
    assert stored["architecture"]["extra_channels"] == 1
    h = jnp.ones((8, 8, 1))
    np.testing.assert_array_equal(again.features(0.5, x, h), stage.features(0.5, x, h))


def test_training_the_cascade_writes_a_loadable_family(tmp_path):
    config = TrainConfig(steps=2, batch_size=4, warmup=1, learning_rate=1e-3)
    state = train_cascade(tmp_path, dataset="digits", widths=(1, 2), config=config, progress=False)
    assert int(state.step) == 2 and np.isfinite(np.asarray(state.loss)).all()
    model, manifest = load_cascade(tmp_path)
    assert model.widths == (1, 2) and manifest["steps"] == 2
    assert manifest["objective"] == "denoising score matching on every exit"
    levels, manifests = load_sampling_levels(tmp_path, "ode")
    assert isinstance(levels, CascadeFamily) and levels.kind == "ode"
    assert manifests[-1]["image_shape"] == [1, 8, 8]


def test_calibrating_a_family_counts_shared_costs(cascade):
    family = CascadeFamily(_trained_like(cascade), VPSDE())
    c = calibrate(family, jax.random.key(12), SHAPE, count=2, num_steps=8, repeats=1)
    assert c["shared"] is True
    assert c["flops"][0] < c["flops"][1] < c["flops"][2]
    assert c["errors"][-1] == 0.0 and min(c["errors"][:-1]) > 0  # the top against itself
    want = mlem_jax.optimal_probabilities(
        c["flops"], c["variances"], top_level_evaluations=3.0, num_steps=16, shared=True
    )
    np.testing.assert_allclose(probabilities_for(c, 16, 3.0), want)
    # The stored flag is what makes the costs cumulative: with costs 1, 2, 16 the
    # corrections cost 1 and 14 in a family, 3 and 18 as separate levels.
    costs = {"flops": [1.0, 2.0, 16.0], "variances": [10.0, 1.0]}
    shared = probabilities_for({**costs, "shared": True}, 64, 4.0)
    separate = probabilities_for(costs, 64, 4.0)
    for got, flag in ((shared, True), (separate, False)):
        np.testing.assert_allclose(
            got,
            mlem_jax.optimal_probabilities(
                costs["flops"],
                costs["variances"],
                top_level_evaluations=4.0,
                num_steps=64,
                shared=flag,
            ),
        )
    assert not np.allclose(shared, separate)


def test_shipped_cascade_exits_approach_the_top_one():
    """The shipped network's exits, on noised digits: each later exit is closer to the
    last one, measured as the mean squared difference of the noise predictions."""
    family, manifests = load_sampling_levels(CASCADE_CHECKPOINTS)
    assert isinstance(family, CascadeFamily) and len(family) >= 4
    from mlem_jax.diffusion.data import load_mnist

    images = jnp.asarray(load_mnist("test").images[:8])
    t, xt, _ = _noised(VPSDE(), images, jax.random.key(13))
    model = family.model
    exits = jax.vmap(lambda s, x: model.exits(s, x, model.num_exits))(t, xt)
    gaps = [float(jnp.mean(jnp.square(e - exits[-1]))) for e in exits[:-1]]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_shipped_cascade_calibration_is_used_for_both_kinds(monkeypatch, kind):
    """`prepare` on the shipped cascade reads its calibration for the reverse SDE and
    the probability-flow ODE, rather than calibrating at start."""
    from mlem_jax.diffusion import demo

    def no_calibration(*args, **kwargs):
        raise AssertionError(f"prepare recalibrated the shipped cascade for {kind}")

    monkeypatch.setattr(demo, "calibrate", no_calibration)
    levels, _, calibration = demo.prepare(CASCADE_CHECKPOINTS, kind, 0)
    assert calibration["kind"] == kind
    assert len(calibration["flops"]) == len(levels) == 4
    assert len(calibration["variances"]) == 3 and all(v > 0 for v in calibration["variances"])
