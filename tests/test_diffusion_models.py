"""UNet family, denoising score-matching training (with resume) and checkpoints."""

import json
import shutil

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem_jax.diffusion.checkpoint import CheckpointError, load_model, save_model
from mlem_jax.diffusion.classifier import Classifier
from mlem_jax.diffusion.data import load_digits
from mlem_jax.diffusion.levels import MULTIPLIERS, WIDTHS, distill_levels, load_levels
from mlem_jax.diffusion.sde import VPSDE, ScoreDrift
from mlem_jax.diffusion.train import TrainConfig, distillation_loss, dsm_loss, train
from mlem_jax.diffusion.unet import UNet, parameter_count, time_features

from diffusion_helpers import tiny_unets


def _flops(model, shape):
    dynamic, static = eqx.partition(model, lambda x: isinstance(x, jax.ShapeDtypeStruct))
    run = jax.jit(lambda d, x: eqx.combine(d, static)(0.5, x))
    analysis = run.lower(dynamic, jax.ShapeDtypeStruct(shape, "float32")).compile().cost_analysis()
    return (analysis[0] if isinstance(analysis, (list, tuple)) else analysis)["flops"]


def _shapes(width, multipliers=MULTIPLIERS):
    return eqx.filter_eval_shape(UNet, width, multipliers, key=jax.random.key(0))


def test_unet_family_shapes_parameters_and_flops():
    models = [_shapes(w) for w in WIDTHS]
    counts = [parameter_count(m) for m in models]
    assert counts == [2915, 10877, 41945, 164657]
    assert all(3.5 < b / a < 4.1 for a, b in zip(counts, counts[1:]))
    out = eqx.filter_eval_shape(models[-1], 0.3, jnp.ones((1, 28, 28)))
    assert out.shape == (1, 28, 28)
    flops = [_flops(m, (1, 28, 28)) for m in models]
    assert all(3.0 < b / a < 4.5 for a, b in zip(flops, flops[1:])), flops


def test_unet_takes_one_image_and_checks_arguments():
    model = tiny_unets()[1]
    with pytest.raises(ValueError, match="ONE image"):
        model(0.5, jnp.ones((4, 1, 8, 8)))
    with pytest.raises(ValueError, match="width"):
        UNet(0, key=jax.random.key(0))


def _channels_first_unet(model, t, x):
    """The UNet's forward pass written with equinox's own (channel-first) layers."""

    def block(b, h, e):
        r = b.conv1(jax.nn.silu(b.norm1(h))) + b.time(e)[:, None, None]
        r = b.conv2(jax.nn.silu(b.norm2(r)))
        return r + (h if b.skip is None else b.skip(h))

    e = model.embed(time_features(jnp.asarray(t)))
    h, skips = model.conv_in(x), []
    for i, b in enumerate(model.down):
        h = block(b, h, e)
        skips.append(h)
        if i < len(model.downsample):
            h = model.downsample[i](h)
    h = block(model.middle, h, e)
    for i in reversed(range(len(model.up))):
        if i < len(model.upsample):
            h = model.upsample[i](jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
        h = block(model.up[i], jnp.concatenate([h, skips[i]]), e)
    return model.conv_out(jax.nn.silu(model.norm_out(h)))


@pytest.mark.parametrize("width", [2, 4])
def test_channel_last_unet_equals_equinox_channel_first_layers(width):
    # Random values in every parameter (nonzero biases, GroupNorm affines), drawn with
    # NumPy into the UNet's structure: no op-by-op initialisation.
    rng = np.random.default_rng(width)
    model = jax.tree_util.tree_map(
        lambda s: (
            jnp.asarray(rng.normal(0.0, 0.3, s.shape), s.dtype)
            if isinstance(s, jax.ShapeDtypeStruct)
            else s
        ),
        _shapes(width),
    )
    # 16x16: both downsamplings and skip connections, at a quarter of 32x32's cost.
    x = jax.random.normal(jax.random.key(1), (1, 16, 16))
    t = jnp.array([1e-3, 0.4, 1.0])
    both = eqx.filter_jit(jax.vmap(lambda t: (model(t, x), _channels_first_unet(model, t, x))))
    channel_last, channel_first = both(t)
    np.testing.assert_allclose(channel_last, channel_first, rtol=1e-4, atol=1e-5)


def test_vp_sde_marginals():
    sde = VPSDE()
    t = jnp.array([1e-3, 0.5, 1.0])
    assert jnp.allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, 1.0, atol=1e-6)
    assert sde.sigma(1e-3) == pytest.approx(
        np.sqrt(1 - np.exp(-(0.1e-3 + 0.5e-6 * 19.9))), rel=1e-4
    )


@eqx.filter_jit
def _mean_loss(model, images):
    keys = jax.random.split(jax.random.key(123), 4)
    return jax.vmap(lambda k: dsm_loss(model, VPSDE(), images, k))(keys).mean()


def test_training_lowers_the_loss_and_resumes_exactly(tmp_path):
    images = load_digits("train").images
    config = TrainConfig(steps=24, batch_size=32, warmup=2, learning_rate=3e-3)
    model = tiny_unets()[1]
    state_path, halfway = tmp_path / "state.eqx", tmp_path / "halfway.eqx"

    def keep_halfway(state):
        if int(state.step) == 12:
            shutil.copy(state_path, halfway)

    straight = train(
        [model],
        images,
        config,
        state_path=state_path,
        save_every=12,
        on_save=keep_halfway,
        progress=False,
    )
    batch = jnp.asarray(images[:128])
    assert _mean_loss(straight.params[0], batch) < 0.8 * _mean_loss(model, batch)
    assert int(straight.step) == 24 and float(straight.seconds) > 0
    resumed = train([model], images, config, state_path=halfway, progress=False)
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(straight.ema, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(resumed.ema, eqx.is_array)),
    ):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_and_manifest(tmp_path):
    model = tiny_unets()[1]
    manifest = save_model(tmp_path / "m", model, steps=7, final_loss=0.5)
    loaded, read = load_model(tmp_path / "m.eqx", {"model": "UNet", "width": 2})
    assert read == manifest and read["steps"] == 7 and read["parameters"] == parameter_count(model)
    assert eqx.tree_equal(loaded, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.eqx", "m.json"]  # no temp files
    classifier = Classifier(2, image_size=8, features=4, key=jax.random.key(2))
    save_model(tmp_path / "c", classifier)
    again, _ = load_model(tmp_path / "c")
    assert eqx.tree_equal(again, classifier)
    assert not eqx.tree_equal(again, Classifier(2, image_size=8, features=4, key=jax.random.key(3)))


def test_checkpoint_refuses_wrong_architecture_and_corruption(tmp_path):
    save_model(tmp_path / "m", tiny_unets()[1])
    with pytest.raises(CheckpointError, match="width: stored 2, expected 4"):
        load_model(tmp_path / "m", {"width": 4})
    data = bytearray((tmp_path / "m.eqx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "m.eqx").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_model(tmp_path / "m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupted checkpoint manifest"):
        load_model(tmp_path / "m")
    with pytest.raises(CheckpointError, match="no checkpoint manifest"):
        load_model(tmp_path / "missing")


def test_checkpoint_refuses_weights_of_another_structure(tmp_path):
    save_model(tmp_path / "m", tiny_unets()[1])
    manifest = json.loads((tmp_path / "m.json").read_text())
    manifest["architecture"]["width"] = 4
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path / "m")


def test_distillation_loss_is_the_squared_drift_gap_per_pixel():
    student, teacher = tiny_unets()
    sde, key = VPSDE(), jax.random.key(5)
    x0 = jnp.asarray(load_digits("train").images[:6])
    loss = eqx.filter_jit(distillation_loss)(student, teacher, sde, x0, key)
    t_key, z_key = jax.random.split(key)  # the noised images of dsm_loss
    t = jax.random.uniform(t_key, (6,), minval=1e-3, maxval=1.0)
    z = jax.random.normal(z_key, x0.shape)
    xt = sde.alpha(t)[:, None, None, None] * x0 + sde.sigma(t)[:, None, None, None] * z
    # Image by image: each at its own t, through the drifts that sampling uses.
    gaps = eqx.filter_jit(
        jax.vmap(
            lambda t, x: (
                ScoreDrift(student, sde)(t, x[None], None)
                - ScoreDrift(teacher, sde)(t, x[None], None)
            )
        )
    )(t, xt)
    np.testing.assert_allclose(loss, jnp.mean(jnp.square(gaps)), rtol=1e-5)
    assert eqx.filter_jit(distillation_loss)(teacher, teacher, sde, x0, key) == 0.0


def test_distilling_levels_brings_them_to_the_teacher(tmp_path):
    images = load_digits("train").images
    student, teacher = tiny_unets()
    for model in (student, teacher):
        save_model(
            tmp_path / f"unet_w{model.width}", model, dataset="digits", steps=3, final_loss=1.0
        )
    with pytest.raises(ValueError, match="at least two levels"):
        (tmp_path / "one").mkdir()
        shutil.copy(tmp_path / "unet_w2.eqx", tmp_path / "one")
        shutil.copy(tmp_path / "unet_w2.json", tmp_path / "one")
        distill_levels(tmp_path / "one")
    config = TrainConfig(steps=30, batch_size=32, warmup=2, learning_rate=3e-3)
    distill_levels(tmp_path, config=config, progress=False)
    (distilled, unchanged), manifests = load_levels(tmp_path)
    assert eqx.tree_equal(unchanged, teacher)
    batch, keys = jnp.asarray(images[:128]), jax.random.split(jax.random.key(9), 4)
    gap = eqx.filter_jit(
        lambda m: jax.vmap(lambda k: distillation_loss(m, teacher, VPSDE(), batch, k))(keys).mean()
    )
    assert gap(distilled) < 0.8 * gap(student)
    assert manifests[0]["objective"] == "distillation" and manifests[0]["steps"] == 30
    assert manifests[0]["teacher"] == {"width": 2, "sha256": manifests[1]["sha256"]}
    assert manifests[0]["pretrained"] == {"steps": 3, "final_loss": 1.0}
