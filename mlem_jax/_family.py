"""Levels that share computation: evaluating f^L also yields f^1..f^(L-1) in one pass."""

import abc
from collections.abc import Iterator
from typing import Any, overload

import equinox as eqx
import numpy as np
from jaxtyping import PyTree


class LevelFamily(eqx.Module):
    """Levels f^1..f^K, cheapest first, that one computation yields together.

    The early exits of one network are the typical case: running it up to exit L gives
    the outputs of exits 1..L on the way. Pass a family wherever levels are taken
    (`solve`, `build_step`, `MultilevelTerm`, the diffusion samplers): a step that draws
    levels 1..L then runs one pass to depth L and costs c_L, the cost of level L alone,
    instead of c_1 + ... + c_L. Its estimate is the same as that of the levels given one
    by one (`list(family)`), up to rounding.

    A family is also a sequence of its levels: `family[l]` is the callable
    `f(t, y, args)` of level l (a `FamilyLevel`, which runs a pass to depth l + 1), and
    `len(family)` is K, so calibration (`level_statistics`, `level_costs`) and EM on one
    level (`solve(family[-1:], ...)`) work unchanged. The cost of `family[l]` is the
    cumulative cost of levels 1..l + 1; `solve(..., costs=...)` and
    `optimal_probabilities(..., shared=True)` take costs in that sense.

    Subclasses define `num_levels` and `evaluate`.
    """

    @property
    @abc.abstractmethod
    def num_levels(self) -> int:
        """K, the number of levels."""

    @abc.abstractmethod
    def evaluate(self, t: Any, y: PyTree, args: Any, depth: int) -> tuple[PyTree, ...]:
        """f^1(t, y, args), ..., f^depth(t, y, args) from one pass; `depth` is a Python
        int in 1..K. Each output has the structure, shapes and dtypes of `y`."""

    def __len__(self) -> int:
        return self.num_levels

    @overload
    def __getitem__(self, index: int) -> "FamilyLevel": ...

    @overload
    def __getitem__(self, index: slice) -> "tuple[FamilyLevel, ...]": ...

    def __getitem__(self, index: int | slice) -> "FamilyLevel | tuple[FamilyLevel, ...]":
        if isinstance(index, slice):
            return tuple(FamilyLevel(self, i) for i in range(*index.indices(len(self))))
        position = int(index) + len(self) if int(index) < 0 else int(index)
        if not 0 <= position < len(self):
            raise IndexError(f"level index {index} out of range for {len(self)} levels.")
        return FamilyLevel(self, position)

    def __iter__(self) -> "Iterator[FamilyLevel]":
        return iter(self[:])

    def truncated(self, num_levels: int) -> "LevelFamily":
        """The family of the first `num_levels` levels (a ladder with a lower top)."""
        if not 1 <= num_levels <= len(self):
            raise ValueError(f"`num_levels` must be in 1..{len(self)}, got {num_levels}.")
        return _Truncated(self, num_levels)


class _Truncated(LevelFamily):
    """The first `count` levels of `family`."""

    family: LevelFamily
    count: int = eqx.field(static=True)

    @property
    def num_levels(self) -> int:
        return self.count

    def evaluate(self, t: Any, y: PyTree, args: Any, depth: int) -> tuple[PyTree, ...]:
        return self.family.evaluate(t, y, args, depth)

    def __getattr__(self, name: str) -> Any:
        # Attributes of the whole family (e.g. a diffusion family's `sde` and `kind`).
        if name.startswith("__") or name in ("family", "count"):
            raise AttributeError(name)
        return getattr(self.family, name)


class FamilyLevel(eqx.Module):
    """Level `index` (0-based) of a `LevelFamily` as a callable `f(t, y, args)`."""

    family: LevelFamily
    index: int = eqx.field(static=True)

    def __call__(self, t: Any, y: PyTree, args: Any) -> PyTree:
        return self.family.evaluate(t, y, args, self.index + 1)[self.index]


def marginal_costs(costs: Any) -> np.ndarray:
    """c_l - c_(l-1) (c_0 = 0): what a pass to depth l adds to a pass to depth l - 1,
    given the cumulative costs c_l of a family's levels."""
    c = np.asarray(costs, dtype=np.float64)
    return np.diff(c, prepend=0.0)


class StackedFamily(LevelFamily):
    """A `LevelFamily` with separate levels above its top: levels 1..K of `family`, then
    `above[0]`, `above[1]`, ... A pass to one of the levels above runs the whole family
    and the separate levels up to it, so a cheap family of early exits can carry an
    accurate model trained on its own as the top of the ladder.

    **Arguments:**

    - `family`: the shared levels, cheapest first.
    - `above`: callables `f(t, y, args)`, each more accurate than the last.
    """

    family: LevelFamily
    above: tuple

    def __init__(self, family: LevelFamily, above: Any):
        self.family, self.above = family, tuple(above)

    @property
    def num_levels(self) -> int:
        return len(self.family) + len(self.above)

    def evaluate(self, t: Any, y: PyTree, args: Any, depth: int) -> tuple[PyTree, ...]:
        shared = self.family.evaluate(t, y, args, min(depth, len(self.family)))
        return shared + tuple(level(t, y, args) for level in self.above[: depth - len(self.family)])

    def __getattr__(self, name: str) -> Any:
        # Attributes of the shared family (e.g. a diffusion family's `sde` and `kind`).
        if name.startswith("__") or name in ("family", "above"):
            raise AttributeError(name)
        return getattr(self.family, name)


class FamilyWithBase(LevelFamily):
    """A `LevelFamily` with a separate level below its first: level 1 is `base`, levels
    2..K + 1 are the family's. A pass to depth L >= 2 evaluates `base` and runs the
    family to its depth L - 1, so a cheap level of its own (e.g. the data's Gaussian
    score, `mlem_jax.diffusion.GaussianDrift`) can carry the steps of a ladder of early
    exits; a step that draws only level 1 runs no network.

    **Arguments:**

    - `base`: a callable `f(t, y, args)`, cheaper and rougher than the family's first
        level.
    - `family`: the shared levels, cheapest first.
    """

    base: Any
    family: LevelFamily

    @property
    def num_levels(self) -> int:
        return len(self.family) + 1

    def evaluate(self, t: Any, y: PyTree, args: Any, depth: int) -> tuple[PyTree, ...]:
        above = self.family.evaluate(t, y, args, depth - 1) if depth > 1 else ()
        return (self.base(t, y, args),) + tuple(above)

    def __getattr__(self, name: str) -> Any:
        # Attributes of the shared family (e.g. a diffusion family's `sde` and `kind`).
        if name.startswith("__") or name in ("base", "family"):
            raise AttributeError(name)
        return getattr(self.family, name)
