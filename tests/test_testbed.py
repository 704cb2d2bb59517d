"""The exact-score testbed: Gaussian mixture, PCA latents, latent networks and training."""

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax.diffusion.data import load_digits
from mlem_jax.diffusion.latent_models import ExitFamily, ResidualMLP
from mlem_jax.diffusion.latent_train import MixtureObjective, train_on_mixture
from mlem_jax.diffusion.latents import PCACodec, fit_latent_mixture, load_testbed, save_testbed
from mlem_jax.diffusion.mixture import ExactDrift, GaussianMixture
from mlem_jax.diffusion.sde import VPSDE, ScoreDrift, reverse_drift
from mlem_jax.diffusion.train import TrainConfig


SDE = VPSDE()


def small_mixture(dim=3, components=4, seed=0):
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(components, dim, dim)) * 0.4
    covariances = factors @ factors.swapaxes(1, 2) + 0.05 * np.eye(dim)
    return GaussianMixture(
        rng.uniform(0.5, 2.0, components), rng.normal(size=(components, dim)), covariances
    )


def test_score_is_the_gradient_of_the_log_density_at_every_noise_level():
    mixture = small_mixture()
    x = jax.random.normal(jax.random.key(0), (5, 3))
    for t in (0.0, 0.01, 0.3, 1.0):
        noised = mixture.noised(SDE, t)
        autodiff = jax.vmap(jax.grad(noised.log_density))(x)
        np.testing.assert_allclose(jax.vmap(noised.score)(x), autodiff, rtol=1e-4, atol=1e-4)


def test_density_integrates_to_one_and_samples_have_its_moments():
    mixture = small_mixture(dim=1, components=3)
    grid = jnp.linspace(-12, 12, 24001)[:, None]
    density = jnp.exp(jax.vmap(mixture.log_density)(grid))
    assert float(jnp.trapezoid(density, grid[:, 0])) == pytest.approx(1.0, abs=1e-4)
    mean = float(jnp.trapezoid(density * grid[:, 0], grid[:, 0]))
    second = float(jnp.trapezoid(density * grid[:, 0] ** 2, grid[:, 0]))
    n = 200_000
    samples = np.asarray(mixture.sample(jax.random.key(1), n))[:, 0]
    # Sample mean and variance within 5 standard errors of the density's.
    variance = second - mean**2
    assert abs(samples.mean() - mean) < 5 * np.sqrt(variance / n)
    assert abs(samples.var() - variance) < 5 * np.sqrt(2 * variance**2 / n) * 3


def test_moments_are_the_mixtures_mean_and_covariance():
    # In 1-d against the density's quadrature; in 3-d, one component is its own moments
    # (the eigendecomposition undone) and a far-apart pair has the law of total covariance.
    line = small_mixture(dim=1, components=3)
    grid = jnp.linspace(-12, 12, 24001)[:, None]
    density = np.asarray(jnp.exp(jax.vmap(line.log_density)(grid)), np.float64)
    x = np.asarray(grid[:, 0], np.float64)
    mean = np.trapezoid(density * x, x)
    mu, variance = line.moments()
    assert mu[0] == pytest.approx(mean, abs=1e-4)
    assert variance[0, 0] == pytest.approx(np.trapezoid(density * (x - mean) ** 2, x), abs=1e-3)
    rng = np.random.default_rng(3)
    factor = rng.normal(size=(3, 3))
    covariance = factor @ factor.T + 0.1 * np.eye(3)
    one = GaussianMixture(np.ones(1), np.array([[1.0, -2.0, 0.5]]), covariance[None])
    mu, sigma = one.moments()
    np.testing.assert_allclose(mu, [1.0, -2.0, 0.5], rtol=1e-6)
    np.testing.assert_allclose(sigma, covariance, rtol=1e-5, atol=1e-6)
    means = np.array([[3.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
    pair = GaussianMixture(np.array([1.0, 3.0]), means, np.stack([covariance, covariance]))
    mu, sigma = pair.moments()
    np.testing.assert_allclose(mu, [0.0, 0.0, 0.0], atol=1e-6)
    # Between the components: weights 1/4 and 3/4 at distance 4, variance 4^2 * 3/16 = 3.
    np.testing.assert_allclose(sigma, covariance + np.diag([3.0, 0.0, 0.0]), rtol=1e-5, atol=1e-6)


def test_noised_mixture_is_the_law_of_the_forward_process():
    mixture = small_mixture()
    t, n = 0.4, 200_000
    x0 = mixture.sample(jax.random.key(2), n)
    z = jax.random.normal(jax.random.key(3), x0.shape)
    xt = np.asarray(SDE.alpha(t) * x0 + SDE.sigma(t) * z)
    direct = np.asarray(mixture.noised(SDE, t).sample(jax.random.key(4), n))
    # Means and covariances of the two samples agree within 5 joint standard errors.
    scale = np.sqrt(np.diag(np.cov(xt, rowvar=False)))
    assert np.all(np.abs(xt.mean(0) - direct.mean(0)) < 5 * scale * np.sqrt(2 / n))
    assert np.allclose(np.cov(xt, rowvar=False), np.cov(direct, rowvar=False), atol=0.02)


def test_exact_drift_is_the_reverse_drift_of_the_noised_score():
    mixture = small_mixture()
    y = jax.random.normal(jax.random.key(5), (4, 3))
    drift = ExactDrift(mixture, SDE, "ode")
    expected = reverse_drift(SDE, "ode", 0.2, y, jax.vmap(mixture.noised(SDE, 0.2).score)(y))
    np.testing.assert_allclose(drift(0.2, y, None), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        ExactDrift(mixture, SDE, "flow")


def test_mixture_checks_its_arguments():
    with pytest.raises(ValueError, match=r"`covariances` must have shape \(2, 3, 3\)"):
        GaussianMixture([1.0, 1.0], np.zeros((2, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], np.zeros((1, 2)), np.array([[[1.0, 0.0], [0.0, -1.0]]]))
    with pytest.raises(ValueError, match="`weights` must be > 0"):
        GaussianMixture([1.0, 0.0], np.zeros((2, 1)), np.ones((2, 1, 1)))


def test_fitted_latent_mixture_decodes_to_images_and_round_trips(tmp_path):
    images = load_digits("train").images
    mixture, codec = fit_latent_mixture(images, latent_dim=8, components=4, width=0.5)
    latents = codec.encode(jnp.asarray(images))
    # Whitened: unit variance along every kept axis.
    np.testing.assert_allclose(np.asarray(latents).std(0), 1.0, rtol=1e-3)
    decoded = codec.decode(mixture.sample(jax.random.key(0), 16))
    assert decoded.shape == (16, 1, 8, 8) and float(jnp.abs(decoded).max()) <= 1.0
    # Unclipped decoding is the exact inverse of encoding on the kept axes.
    z = jax.random.normal(jax.random.key(2), (4, 8))
    np.testing.assert_allclose(codec.encode(codec.decode(z, clip=False)), z, atol=1e-4)
    save_testbed(tmp_path / "testbed.npz", mixture, codec)
    loaded, loaded_codec = load_testbed(tmp_path / "testbed.npz")
    x = jax.random.normal(jax.random.key(1), (3, 8))
    np.testing.assert_allclose(
        jax.vmap(loaded.score)(x), jax.vmap(mixture.score)(x), rtol=2e-3, atol=2e-3
    )
    np.testing.assert_array_equal(loaded_codec.components, codec.components)
    with pytest.raises(ValueError, match="`width` must be > 0"):
        fit_latent_mixture(images, 4, 2, width=0.0)
    with pytest.raises(ValueError, match=r"`image_shape` \(1, 8, 9\) must hold P = 64"):
        PCACodec(np.zeros(64), np.eye(64)[:2], np.ones(2), (1, 8, 9))


def test_exit_family_levels_are_the_drifts_of_the_exits():
    model = ResidualMLP(3, 8, (4, 8, 16), key=jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_array)
    params = jax.tree_util.tree_map(lambda a: a + 0.1, params)  # nonzero readouts
    model = eqx.combine(params, static)
    family = ExitFamily(model, SDE)
    y = jax.random.normal(jax.random.key(1), (5, 3))
    drifts = family.evaluate(0.3, y, None, 3)
    assert len(drifts) == 3 and len(family) == 3
    single = ScoreDrift(model, SDE)  # the network's last exit as a level
    np.testing.assert_allclose(drifts[-1], single(0.3, y, None), rtol=1e-5)
    np.testing.assert_allclose(family[0](0.3, y, None), drifts[0], rtol=1e-5)
    # A fresh network's readouts are zero: every exit predicts sigma(t) x, the exact
    # noise of whitened Gaussian data.
    fresh = ResidualMLP(3, 8, (4,), key=jax.random.key(0))
    x = jnp.ones(3)
    np.testing.assert_allclose(fresh(0.5, x), SDE.sigma(0.5) * x, rtol=1e-6)
    with pytest.raises(ValueError, match="ONE latent vector of shape"):
        fresh(0.5, jnp.ones((2, 3)))


def test_exact_target_is_the_conditional_mean_of_the_noise():
    """E||eps - z||^2 = E||eps - eps*||^2 + E||z - eps*||^2 when eps* = E[z | x_t], so
    denoising and exact losses differ by the same constant for any two networks."""
    mixture = small_mixture()
    a = ResidualMLP(3, 8, (8,), key=jax.random.key(0))
    b = eqx.combine(jax.tree_util.tree_map(lambda x: x + 0.05, eqx.filter(a, eqx.is_array)), a)
    losses = {}
    for target in ("dsm", "exact"):
        objective = MixtureObjective(SDE, 200_000, target, every_exit=False)
        losses[target] = [float(objective(m, None, mixture, jax.random.key(7))) for m in (a, b)]
    gap_dsm = losses["dsm"][1] - losses["dsm"][0]
    gap_exact = losses["exact"][1] - losses["exact"][0]
    assert losses["dsm"][0] > losses["exact"][0] + 0.1
    assert gap_dsm == pytest.approx(gap_exact, rel=0.05)


def test_training_on_the_exact_score_lowers_every_exit_error():
    mixture = small_mixture()
    model = ResidualMLP(3, 16, (16, 16), key=jax.random.key(0))
    objective = MixtureObjective(SDE, 128, "exact", every_exit=True, consistency=0.1)
    config = TrainConfig(steps=150, learning_rate=3e-3, warmup=10)
    state = train_on_mixture([model], mixture, config, objective, progress=False)
    probe = MixtureObjective(SDE, 20_000, "exact", every_exit=False)
    before = float(probe(model, None, mixture, jax.random.key(9)))
    after = float(probe(state.ema[0], None, mixture, jax.random.key(9)))
    assert after < 0.7 * before
    # The trained exits are ML-EM levels: solve runs the family.
    family = ExitFamily(state.ema[0], SDE)
    sol = mlem_jax.solve(
        family,
        jnp.ones((4, 3)),
        1.0,
        1e-3,
        16,
        probabilities=[1.0, 0.5],
        key=jax.random.key(1),
        diffusion=SDE.diffusion,
        brownian=jax.random.key(2),
    )
    assert sol.ys.shape == (4, 3) and bool(jnp.isfinite(sol.ys).all())


def test_samplers_run_a_family_one_pass_per_step():
    from mlem_jax.diffusion.runner import Setting, run_setting
    from mlem_jax.diffusion.sample import method_cost, sample

    model = ResidualMLP(3, 8, (4, 8, 16), key=jax.random.key(0))
    model = eqx.combine(
        jax.tree_util.tree_map(lambda a: a + 0.1, eqx.filter(model, eqx.is_array)), model
    )
    family = ExitFamily(model, SDE)
    x1 = jax.random.normal(jax.random.key(1), (4, 3))
    p = (1.0, 0.5, 0.25)
    kwargs: dict[str, Any] = dict(
        key=jax.random.key(2), brownian=jax.random.key(3), probabilities=p
    )
    shared = sample("mlem", family, x1, 16, **kwargs)
    separate = sample("mlem", list(family), x1, 16, **kwargs)
    np.testing.assert_allclose(shared.ys, separate.ys, rtol=1e-5, atol=1e-6)
    em = sample("em", family, x1, 16, brownian=jax.random.key(3))
    np.testing.assert_allclose(
        em.ys, sample("em", [family[-1]], x1, 16, brownian=jax.random.key(3)).ys
    )
    # A step costs the pass it ran: c_L for the deepest level L it drew.
    flops = [10.0, 30.0, 70.0]
    outcome = run_setting(
        Setting("mlem", 16, p), family, x1, jax.random.key(3), jax.random.key(2), flops
    )
    e = outcome.evaluations
    passes = [e[0] - e[1], e[1] - e[2], e[2]]  # steps whose pass ended at each level
    assert outcome.flops == pytest.approx(np.dot(passes, flops))
    assert method_cost("mlem", e, flops, 16, shared=True) == pytest.approx(outcome.flops)
    assert method_cost("mlem", e, flops, 16) == pytest.approx(np.dot(e, flops))


def test_testbed_demo_runs_em_and_mlem_on_a_saved_ladder(tmp_path, capsys):
    from mlem_jax.diffusion.checkpoint import save_model
    from mlem_jax.diffusion.testbed_demo import run_testbed_demo

    model = ResidualMLP(16, 8, (4, 8, 16), key=jax.random.key(0))
    save_model(
        tmp_path / "ladder",
        model,
        calibration={"flops": [1e3, 3e3, 9e3], "v": [1.0, 0.5], "delta": [3, 2, 1]},
        operating={
            "em": {"level": 2, "steps": 8},
            "mlem": {"steps": 16, "probabilities": [1.0, 0.5, 0.25], "draws": "stratified"},
        },
    )
    rows = run_testbed_demo(tmp_path, count=4, reference_steps=32, path=tmp_path / "ladder")
    assert [row["method"] for row in rows] == ["EM, exit 3, 8 steps", "ML-EM stratified, 16 steps"]
    assert rows[0]["mflops"] == pytest.approx(8 * 9e3 / 1e6)
    assert all(np.isfinite(row["error"]) and row["ms"] > 0 for row in rows)
    assert (tmp_path / "testbed_digits.png").stat().st_size > 0
    assert "panels exact | EM | ML-EM" in capsys.readouterr().out
