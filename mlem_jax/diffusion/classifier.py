"""A small CNN digit classifier whose pooled features define the Frechet distance."""

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray


class Classifier(eqx.Module):
    """Three convolutions (the last two stride 2), a dense feature layer, the logits.

    `features` (the `features`-dimensional dense layer) is the feature map of the quality
    score; `__call__` gives the class logits. Both take ONE image (C, H, W) with H = W =
    `image_size`.
    """

    width: int = eqx.field(static=True)
    channels: int = eqx.field(static=True)
    classes: int = eqx.field(static=True)
    image_size: int = eqx.field(static=True)
    convs: list[eqx.nn.Conv2d]
    dense: eqx.nn.Linear
    head: eqx.nn.Linear

    def __init__(
        self,
        width: int = 16,
        channels: int = 1,
        classes: int = 10,
        image_size: int = 32,
        features: int = 64,
        *,
        key: PRNGKeyArray,
    ):
        if width < 1 or classes < 2 or image_size % 4:
            raise ValueError(
                f"need width >= 1, classes >= 2 and image_size divisible by 4, got {width}, "
                f"{classes}, {image_size}."
            )
        self.width, self.channels, self.classes = width, channels, classes
        self.image_size = image_size
        k1, k2, k3, k4, k5 = jax.random.split(key, 5)
        self.convs = [
            eqx.nn.Conv2d(channels, width, 3, padding=1, key=k1),
            eqx.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, key=k2),
            eqx.nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1, key=k3),
        ]
        self.dense = eqx.nn.Linear(4 * width * (image_size // 4) ** 2, features, key=k4)
        self.head = eqx.nn.Linear(features, classes, key=k5)

    def features(self, x: Float[Array, "c h w"]) -> Float[Array, " f"]:
        """The dense-layer features of one image."""
        for conv in self.convs:
            x = jax.nn.silu(conv(x))
        return jax.nn.silu(self.dense(x.reshape(-1)))

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, " classes"]:
        """Class logits of one image."""
        return self.head(self.features(x))


def _loss(model: Classifier, images: Array, labels: Array) -> Array:
    logits = jax.vmap(model)(images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.cache
def _training(steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """Adam with cosine decay over `steps`, and its jitted step: built once per `steps`,
    so a second training of the same shapes does not compile again."""
    transform = optax.adam(optax.cosine_decay_schedule(3e-3, steps, 0.1))

    @eqx.filter_jit
    def step(model, opt_state, x, y):
        grads = eqx.filter_grad(_loss)(model, x, y)
        updates, opt_state = transform.update(grads, opt_state)
        return eqx.apply_updates(model, updates), opt_state

    return transform, step


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    width: int = 16,
    steps: int = 600,
    batch_size: int = 128,
    seed: int = 0,
) -> Classifier:
    """Train a `Classifier` with Adam on (images, labels), seeded.

    **Arguments:**

    - `images`: (n, C, H, W) in [-1, 1]; `labels`: int (n,).
    - `width`, `steps`, `batch_size`, `seed`: model size and optimisation.

    **Returns:**

    The trained classifier.
    """
    model = Classifier(
        width, images.shape[1], int(labels.max()) + 1, images.shape[-1], key=jax.random.key(seed)
    )
    transform, step = _training(steps)
    opt_state = transform.init(eqx.filter(model, eqx.is_array))
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        chosen = rng.integers(0, len(images), batch_size)
        model, opt_state = step(model, opt_state, images[chosen], labels[chosen])
    return model


@eqx.filter_jit
def _logits(model: Classifier, images: Array) -> Array:
    return jax.vmap(model)(images)


def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of `images` classified as `labels`."""
    predicted = jnp.argmax(_logits(model, jnp.asarray(images)), axis=-1)
    return float(jnp.mean(predicted == jnp.asarray(labels)))
