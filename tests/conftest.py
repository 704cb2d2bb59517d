import os
from pathlib import Path


# A persistent compilation cache, shared with the subprocesses the tests start (the CLI
# and experiment runs, 4 devices, 2 processes): programs compiled more than once in a
# run, or in an earlier run, are read back instead of compiled again.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", str(Path(__file__).parents[1] / ".pytest_cache" / "jax")
)
# The tests run small programs, most of them once: XLA's optimisation passes cost them
# more time than they save.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import chex
import diffrax
import jax
import pytest


jax.config.update("jax_platforms", "cpu")


def linear_levels(rates):
    """Levels f^l(t, y) = -rate_l * y: cheap to run, with exact differences."""
    return [lambda t, y, args, r=r: -r * y for r in rates]


@pytest.fixture
def levels3():
    return linear_levels([1.0, 1.2, 1.3])


def brownian_tree(key, t0, t1, shape, tol=2.0**-12):
    return diffrax.VirtualBrownianTree(min(t0, t1), max(t0, t1), tol=tol, shape=shape, key=key)


def assert_close(a, b, **kw):
    """Same tree structure, shapes and (to float tolerance) values."""
    kw.setdefault("rtol", 1e-5)
    kw.setdefault("atol", 1e-6)
    chex.assert_trees_all_equal_shapes(a, b)
    chex.assert_trees_all_close(a, b, **kw)
