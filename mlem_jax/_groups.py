"""Grouped level draws: G groups of a batch, each with draws of its own."""

from collections.abc import Callable
from typing import Any

import jax
import jax.lax as lax
import jax.tree_util as jtu
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from ._validation import describe


def check_groups(groups: Any) -> int:
    """`groups` as a positive Python int."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"`groups` must be a positive Python int, got {groups!r}.")
    return int(groups)


def check_group_sizes(y: PyTree, groups: int) -> None:
    """Every leaf of `y` needs a leading batch axis that `groups` divides."""
    for leaf in jtu.tree_leaves(y):
        shape = np.shape(leaf)
        if not shape or shape[0] % groups:
            raise ValueError(
                f"`groups={groups}` splits the leading (batch) axis of every leaf of the "
                f"state into {groups} equal groups, got a state of shape "
                f"{describe(jax.eval_shape(lambda: y))}."
            )


def group_keys(key: PRNGKeyArray, groups: int) -> PRNGKeyArray:
    """The draw keys of the groups, one per group: `jax.random.split(key, groups)`."""
    return jax.random.split(key, groups)


def grouped(
    estimate: Callable[[PRNGKeyArray, PyTree], tuple[PyTree, Any, Any]],
    key: PRNGKeyArray,
    y: PyTree,
    groups: int,
) -> tuple[PyTree, Any, Any]:
    """`estimate(key_g, y_g)` for each of `groups` groups of the leading axis of `y`,
    one after the other (`lax.map`, so each group's `lax.cond`s still skip), with
    `key_g = jax.random.split(key, groups)[g]`.

    **Returns:**

    The drifts concatenated back along the batch axis, and the other outputs stacked on
    a leading group axis. With `groups == 1`, `estimate(key, y)` itself.
    """
    if groups == 1:
        return estimate(key, y)
    check_group_sizes(y, groups)
    split = jtu.tree_map(lambda x: x.reshape(groups, x.shape[0] // groups, *x.shape[1:]), y)
    drift, *rest = lax.map(lambda a: estimate(*a), (group_keys(key, groups), split))
    drift = jtu.tree_map(lambda x: x.reshape(-1, *x.shape[2:]), drift)
    return (drift, *rest)
