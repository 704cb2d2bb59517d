"""Strong order 1 of EM for additive noise, on an SDE with a known solution."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import mlem_jax


THETA, SIGMA, T = 2.0, 0.8, 1.0
FINE = 2**11


def exact_ou(x0, path):
    """X_T = e^{-theta T} x0 + sigma int_0^T e^{-theta (T - s)} dW_s for the OU process.

    The stochastic integral of the deterministic integrand is evaluated on a grid of
    FINE intervals with the midpoint weight; its error, O(1 / FINE), is far below the
    errors measured here.
    """
    s = jnp.linspace(0.0, T, FINE + 1)
    increments = jax.vmap(path.evaluate)(s[:-1], s[1:])
    weights = jnp.exp(-THETA * (T - 0.5 * (s[:-1] + s[1:])))
    return jnp.exp(-THETA * T) * x0 + SIGMA * weights @ increments


def test_strong_order_one_for_additive_noise():
    step_counts = np.array([8, 16, 32, 64])
    keys = jax.random.split(jax.random.key(0), 400)
    x0 = 1.0

    @jax.jit
    def errors_for_path(key):
        path = diffrax.VirtualBrownianTree(0.0, T, tol=T / FINE / 4, shape=(), key=key)
        exact = exact_ou(x0, path)
        return jnp.stack(
            [
                mlem_jax.solve(
                    [lambda t, y, a: -THETA * y],
                    jnp.array(x0),
                    0.0,
                    T,
                    int(n),
                    diffusion=lambda t, y, a: SIGMA,
                    brownian=path,
                ).ys
                - exact
                for n in step_counts
            ]
        )

    rms = np.sqrt(np.mean(np.asarray(jax.vmap(errors_for_path)(keys)) ** 2, axis=0))
    order, _ = np.polyfit(np.log(1.0 / step_counts), np.log(rms), 1)
    assert 0.85 < order < 1.15, (order, rms)
