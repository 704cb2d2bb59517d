"""The Gaussian-score level: exact for Gaussian data, its low-rank form, its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax.diffusion import (
    VESDE,
    VPSDE,
    CascadeFamily,
    GaussianDrift,
    fit_gaussian,
    gaussian_statistics,
    load_digits,
    load_gaussian,
    reverse_drift,
    sample,
    save_gaussian,
)

from diffusion_helpers import IMAGE_SHAPE, tiny_cascade


SHAPE = (2, 3)  # a small "image": d = 6


def random_moments(seed=0, d=6):
    k1, k2 = jax.random.split(jax.random.key(seed))
    a = np.asarray(jax.random.normal(k1, (d, d)), np.float64)
    return np.asarray(jax.random.normal(k2, (d,)), np.float64), a @ a.T / d + 0.05 * np.eye(d)


def autodiff_score(mean, covariance, sde, t, x):
    """grad_x log N(x; alpha(t) mean, alpha(t)^2 covariance + sigma(t)^2 I), in float64."""
    alpha, sigma = float(sde.alpha(t)), float(sde.sigma(t))
    marginal = alpha**2 * covariance + sigma**2 * np.eye(len(mean))
    with jax.enable_x64():
        log_density = lambda z: jax.scipy.stats.multivariate_normal.logpdf(  # noqa: E731
            z, alpha * jnp.asarray(mean), jnp.asarray(marginal)
        )
        return np.asarray(jax.vmap(jax.grad(log_density))(jnp.asarray(x, jnp.float64)))


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(0.01, 5.0)], ids=["vp", "ve"])
@pytest.mark.parametrize("t", [0.01, 0.3, 0.9])
def test_gaussian_score_is_the_exact_score_of_gaussian_data(sde, t):
    mean, covariance = random_moments()
    level = GaussianDrift(gaussian_statistics(mean.reshape(SHAPE), covariance), sde)
    x = np.asarray(jax.random.normal(jax.random.key(3), (5, 6))) * float(sde.sigma(t)) + 1.0
    expected = autodiff_score(mean, covariance, sde, t, x)
    got = np.asarray(level.score(t, jnp.asarray(x, jnp.float32).reshape(5, *SHAPE)))
    np.testing.assert_allclose(
        got.reshape(5, 6), expected, rtol=2e-4, atol=2e-4 * abs(expected).max()
    )


@pytest.mark.parametrize("rank", [1, 3, 5])
def test_low_rank_form_is_the_exact_score_of_its_own_covariance(rank):
    # S_k = U diag(lambda) U^T + rest (I - U U^T) is a covariance of its own: the
    # low-rank score is exactly the score of N(mean, S_k).
    mean, covariance = random_moments(seed=1)
    stats = gaussian_statistics(mean, covariance, SHAPE, rank=rank)
    assert stats.rank == rank
    low = np.asarray(stats.covariance(), np.float64)
    eigenvalues = np.linalg.eigvalsh(covariance)[::-1]
    np.testing.assert_allclose(np.trace(low), eigenvalues.sum(), rtol=1e-5)  # trace kept
    np.testing.assert_allclose(
        np.sort(np.linalg.eigvalsh(low))[::-1][:rank], eigenvalues[:rank], rtol=1e-5
    )
    sde, t = VPSDE(), 0.2
    x = np.asarray(jax.random.normal(jax.random.key(4), (4, 6)))
    expected = autodiff_score(mean, low, sde, t, x)
    got = np.asarray(GaussianDrift(stats, sde).score(t, jnp.asarray(x).reshape(4, *SHAPE)))
    np.testing.assert_allclose(got.reshape(4, 6), expected, rtol=2e-4, atol=1e-4)


def test_low_rank_score_converges_to_the_full_one_as_the_rank_grows():
    images = load_digits("train").images  # d = 64
    full = fit_gaussian(images)
    assert full.rank == 64 and float(full.rest) == 0.0
    sde, x = VPSDE(), jnp.asarray(images[:32])
    errors = []
    for t in (0.05, 0.5):
        y = sde.alpha(t) * x + sde.sigma(t) * jax.random.normal(jax.random.key(5), x.shape)
        exact = GaussianDrift(full, sde).score(t, y)
        errors.append(
            [
                float(
                    jnp.sqrt(
                        jnp.mean(
                            jnp.square(GaussianDrift(full.truncated(k), sde).score(t, y) - exact)
                        )
                    )
                )
                for k in (2, 8, 16, 32, 48, 64)
            ]
        )
    for row in errors:
        assert all(b < a for a, b in zip(row, row[1:-1])), row
        assert row[-1] < 1e-5 * row[0]  # the full rank is the full form
    # Truncating stored statistics equals fitting at that rank.
    direct = fit_gaussian(images, rank=8)
    np.testing.assert_allclose(full.truncated(8).rest, direct.rest, rtol=1e-4)
    np.testing.assert_allclose(full.truncated(8).variances, direct.variances, rtol=1e-5)


def test_fit_gaussian_is_the_sample_mean_and_covariance():
    samples = np.asarray(jax.random.normal(jax.random.key(6), (50, *SHAPE))) * 2.0 + 0.5
    stats = fit_gaussian(samples)
    flat = samples.reshape(50, -1)
    np.testing.assert_allclose(stats.mean, flat.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stats.covariance(), np.cov(flat, rowvar=False), rtol=1e-4, atol=1e-5)
    assert stats.shape == SHAPE and stats.size == 6


@pytest.mark.parametrize("kind, weight", [("sde", 1.0), ("ode", 0.5)])
def test_gaussian_drift_is_the_reverse_drift_of_its_score(kind, weight):
    mean, covariance = random_moments(seed=2)
    sde = VPSDE()
    level = GaussianDrift(gaussian_statistics(mean, covariance, SHAPE), sde, kind)
    y = jax.random.normal(jax.random.key(7), (3, *SHAPE))
    score = level.score(0.4, y)
    np.testing.assert_allclose(
        level(0.4, y, None),
        sde.drift(0.4, y) - weight * sde.diffusion_squared(0.4) * score,
        rtol=1e-6,
    )
    np.testing.assert_allclose(level(0.4, y, None), reverse_drift(sde, kind, 0.4, y, score))


def test_save_and_load_round_trip(tmp_path):
    mean, covariance = random_moments(seed=3)
    stats = gaussian_statistics(mean, covariance, SHAPE, rank=4)
    path = save_gaussian(tmp_path / "stats", stats)
    loaded = load_gaussian(path)
    assert loaded.shape == SHAPE and loaded.rank == 4
    for a, b in zip(
        (stats.mean, stats.directions, stats.variances, stats.rest),
        (loaded.mean, loaded.directions, loaded.variances, loaded.rest),
    ):
        np.testing.assert_array_equal(a, b)
    assert load_gaussian(path, rank=2).rank == 2


def test_shipped_base_fits_the_training_split_and_beats_exit_1_at_high_noise():
    from mlem_jax.diffusion.data import load_mnist
    from mlem_jax.diffusion.levels import GAUSSIAN_STATISTICS, load_sampling_levels, with_base

    stats = load_gaussian(GAUSSIAN_STATISTICS)
    images = load_mnist("train").images
    assert stats.shape == images.shape[1:]
    np.testing.assert_allclose(stats.mean, images.reshape(len(images), -1).mean(0), atol=1e-5)
    cascade, _ = load_sampling_levels()
    based, two = with_base(cascade), with_base(cascade, top_only=True)
    assert isinstance(based, mlem_jax.FamilyWithBase) and len(based) == 5 and len(two) == 2
    assert with_base(cascade, "none") is cascade
    with pytest.raises(ValueError, match=r"`base` must be one of \('none', 'gaussian'\)"):
        with_base(cascade, "laplace")
    # At high noise the Gaussian score is closer to the top exit than exit 1 is.
    sde, t, x0 = VPSDE(), 0.8, jnp.asarray(images[:16])
    y = sde.alpha(t) * x0 + sde.sigma(t) * jax.random.normal(jax.random.key(11), x0.shape)
    drifts = based.evaluate(t, y, None, 5)
    gaussian_error = float(jnp.sum(jnp.square(drifts[0] - drifts[-1])))
    exit_error = float(jnp.sum(jnp.square(drifts[1] - drifts[-1])))
    assert gaussian_error < 0.5 * exit_error


def test_bad_statistics_and_states_are_refused_naming_the_argument():
    mean, covariance = random_moments()
    with pytest.raises(ValueError, match=r"`mean` must have the sample shape \(3, 3\)"):
        gaussian_statistics(mean, covariance, (3, 3))
    with pytest.raises(
        ValueError, match=r"`covariance` must have shape \(6, 6\).*got shape \(5, 5\)"
    ):
        gaussian_statistics(mean, covariance[:5, :5], SHAPE)
    with pytest.raises(ValueError, match=r"`covariance` must be positive semi-definite"):
        gaussian_statistics(
            mean, covariance - 2.0 * np.eye(6) * np.linalg.eigvalsh(covariance).max(), SHAPE
        )
    bad = covariance.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match=r"`covariance` must be finite and symmetric"):
        gaussian_statistics(mean, bad, SHAPE)
    with pytest.raises(ValueError, match=r"`rank` must be an int in 1..6, got 7"):
        gaussian_statistics(mean, covariance, SHAPE, rank=7)
    with pytest.raises(ValueError, match=r"`samples` must be an array \(n, \*shape\)"):
        fit_gaussian(np.ones((1, 6)))
    level = GaussianDrift(gaussian_statistics(mean, covariance, SHAPE))
    with pytest.raises(
        ValueError, match=r"`y` must be a batch \(B, \*\(2, 3\)\).*got shape \(4, 6\)"
    ):
        jax.jit(lambda y: level(0.5, y, None))(jnp.ones((4, 6)))
    with pytest.raises(ValueError, match=r"`kind` must be one of"):
        GaussianDrift(gaussian_statistics(mean, covariance, SHAPE), VPSDE(), "flow")


def test_gaussian_base_under_a_cascade_samples_with_ml_em():
    images = load_digits("train").images
    base = GaussianDrift(fit_gaussian(images, rank=16), VPSDE(), "sde")
    based = mlem_jax.FamilyWithBase(base, CascadeFamily(tiny_cascade()))
    assert len(based) == 3 and based.kind == "sde"
    x1 = jax.random.normal(jax.random.key(8), (4, *IMAGE_SHAPE))
    every = sample(
        "mlem",
        based,
        x1,
        8,
        key=jax.random.key(9),
        brownian=jax.random.key(10),
        probabilities=(1.0, 1.0, 1.0),
    )
    em = sample("em", based, x1, 8, brownian=jax.random.key(10))
    np.testing.assert_allclose(every.ys, em.ys, rtol=1e-4, atol=1e-4)
    cheap = sample(
        "mlem",
        based,
        x1,
        8,
        key=jax.random.key(9),
        brownian=jax.random.key(10),
        probabilities=(1.0, 0.25, 0.25),
    )
    assert cheap.evaluations[0] == 8 and cheap.evaluations[2] < 8
    costs = mlem_jax.level_costs(based, 0.5, x1, repeats=1).flops
    assert (np.diff(costs) > 0).all() and costs[0] < 0.2 * costs[1]


def test_ladder_keys_and_level_names():
    from mlem_jax.diffusion import ScoreDrift
    from mlem_jax.diffusion.levels import ladder_key, level_names

    from diffusion_helpers import tiny_unets

    assert ladder_key("sde") == "sde" and ladder_key("ode", "gaussian") == "ode+gaussian"
    assert ladder_key("sde", "gaussian", top_only=True) == "sde+gaussian_top"
    with pytest.raises(ValueError, match=r"`top_only` needs a base level"):
        ladder_key("sde", top_only=True)
    base = GaussianDrift(fit_gaussian(load_digits("train").images, rank=4))
    cascade = CascadeFamily(tiny_cascade())
    assert level_names(mlem_jax.FamilyWithBase(base, cascade)) == ["gaussian", "1", "2"]
    assert level_names([base, cascade[-1]]) == ["gaussian", "2"]
    unets = [ScoreDrift(model, VPSDE()) for model in tiny_unets()]
    assert level_names([base, *unets]) == ["gaussian", "1", "2"]
