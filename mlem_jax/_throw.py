"""`throw=True`: stop at the first step whose state is not finite, saying where."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import equinox.internal as eqxi
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jaxtyping import Array, Bool, Int, PyTree


def all_finite(tree: PyTree) -> Bool[Array, ""]:
    """Whether every entry of every leaf of `tree` is finite."""
    return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in jtu.tree_leaves(tree)]))


def group_finite(tree: PyTree, groups: int) -> Bool[Array, " G"]:
    """Whether each of `groups` groups of the leading axis of `tree` is finite."""
    return jnp.stack(
        [jnp.isfinite(x.reshape(groups, -1)).all(axis=1) for x in jtu.tree_leaves(tree)]
    ).all(axis=0)


def failed_steps(
    y: PyTree, step: Any, groups: int = 1, earlier: Int[Array, " G"] | None = None
) -> Int[Array, " G"]:
    """For each group of the leading axis of `y` (one group: the whole state), the first
    step after which its state was not finite, -1 while it is. Non-finite states stay
    non-finite (X_(n+1) = X_n + ...), so this is where the trouble began.

    **Arguments:**

    - `y`: the state after step `step`.
    - `groups`: G.
    - `earlier`: the record before the step (None: a single step).
    """
    finite = group_finite(y, groups) if groups > 1 else all_finite(y)[None]
    now = jnp.where(finite, -1, step).astype(jnp.int32)
    return now if earlier is None else jnp.where(earlier >= 0, earlier, now)


class _Messages(Sequence):
    """Error messages written at run time by a host callback, which returns their index
    for `eqx.branched_error_if` (whose messages are otherwise fixed at trace time)."""

    def __init__(self):
        self._messages: list[str] = []

    def __len__(self) -> int:
        return len(self._messages)

    def __getitem__(self, index):
        return self._messages[index]

    def add(self, message: str) -> int:
        self._messages.append(message)
        return len(self._messages) - 1


_MESSAGES = _Messages()


def _describe(step, t, evaluated, group) -> str:
    where = f"step {int(step)} (t = {float(t):.6g})"
    if group >= 0:
        where += f" in group {int(group)}"
    levels = ", ".join(f"levels[{i}]" for i in np.flatnonzero(evaluated)) or "none"
    return (
        f"throw=True: the state after {where} is not finite (its drift estimate or "
        f"noise increment is not); levels evaluated there: {levels}."
    )


def error_if_failed(
    out: PyTree, failed: Int[Array, " G"], details: Callable[[Array, Array], tuple[Array, Array]]
) -> PyTree:
    """`out`, or a runtime error naming the first failed step, its time and the levels
    evaluated there.

    **Arguments:**

    - `out`: returned unchanged (the check is tied to it).
    - `failed`: `failed_steps`' record.
    - `details`: `details(step, group) -> (t, evaluated)`, the step's start time and
        the bool (K,) of levels evaluated there by that group; traced for the failure
        branch only.

    **Returns:**

    `out`. Raises `equinox.EquinoxRuntimeError` at run time (also inside `jit`, `vmap`
    and diffrax's loop) when a step failed. Costs one `lax.cond`; the host callback that
    writes the message runs only on failure.
    """
    groups = failed.shape[-1]

    def record(step, t, evaluated, group):
        # Under vmap every field carries the batch: report its earliest failure.
        batch = np.shape(step)
        step, t, group = (np.reshape(x, -1) for x in (step, t, group))
        evaluated = np.reshape(evaluated, (len(step), -1))
        i = int(np.argmin(np.where(step >= 0, step, np.iinfo(np.int32).max)))
        message = _describe(step[i], t[i], evaluated[i], group[i] if groups > 1 else -1)
        return np.full(batch, _MESSAGES.add(message), np.int32)

    def fail():
        first = jnp.where(failed >= 0, failed, jnp.iinfo(jnp.int32).max)
        group = jnp.argmin(first)
        step = first[group]
        t, evaluated = details(step, group)
        index = jax.pure_callback(
            record,
            jax.ShapeDtypeStruct((), jnp.int32),
            step,
            t,
            evaluated,
            group,
            vmap_method="broadcast_all",
        )
        return eqx.branched_error_if(jnp.zeros((), jnp.int32), True, index, _MESSAGES)

    # The check is threaded onto a scalar, not onto `out` (a sharded batch would be
    # gathered to pass through the error's callback), and `out` is made to depend on
    # it by a select XLA cannot fold away, so it runs whenever `out` is used. Its
    # predicate is unbatched under vmap, so the cond stays a cond.
    token = lax.cond(eqxi.unvmap_any(failed >= 0), fail, lambda: jnp.zeros((), jnp.int32))
    return jtu.tree_map(lambda x: jnp.where(token >= 0, x, jnp.zeros_like(x)), out)


def throw_message(error: BaseException) -> str | None:
    """The message of a `throw=True` error (from its long runtime-error text), else None."""
    for line in str(error).splitlines():
        if "throw=True: " in line:
            return line[line.index("throw=True: ") :]
    return None
