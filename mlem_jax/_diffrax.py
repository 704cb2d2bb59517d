"""ML-EM as a diffrax solver: `MultilevelTerm` for the drift, `MLEM` for the steps.

Switching from Euler-Maruyama in diffrax takes two lines:

```python
drift = mlem_jax.MultilevelTerm(levels, probabilities)  # was diffrax.ODETerm(f)
terms = diffrax.MultiTerm(drift, diffrax.ControlTerm(g, brownian_path))
sol = diffrax.diffeqsolve(terms, mlem_jax.MLEM(key), t0, t1, dt0, y0)  # was Euler()
```

The step is the core's `build_step`, not a copy of it: with the same key and Brownian
path, `diffeqsolve(..., MLEM(key), ...)` and `mlem_jax.solve` take the same steps.
"""

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax.numpy as jnp
import jax.tree_util as jtu
from jaxtyping import Array, Int, PRNGKeyArray, PyTree

from ._diffrax_private import wrapper_terms
from ._family import LevelFamily
from ._schedule import Probabilities, checked_probabilities
from ._step import MLEMState, build_step
from ._throw import error_if_failed, failed_steps
from ._validation import (
    check_coupling,
    check_draws,
    check_level_outputs,
    check_levels,
    check_throw,
)


class MultilevelTerm(diffrax.AbstractTerm):
    """The drift f dt of an SDE or ODE, given as levels f^1, ..., f^K.

    `MLEM` replaces f at each step by the unbiased estimate
    F_n = f^1 + sum_{l >= 2} (B_{n,l} / p_l) (f^l - f^(l-1)) with
    P(B_{n,l} = 1) = p_l, so E[F_n] = f^K. Levels that cancel from the estimate
    (`mlem_jax.needed_levels` of array probabilities) are never evaluated.

    Any other diffrax solver sees this term as `ODETerm(levels[-1])`: the top level,
    which is what the estimate is unbiased for. So `diffrax.Euler()` on the same terms
    is the Euler-Maruyama baseline.
    """

    levels: tuple[Callable, ...] | LevelFamily
    probabilities: Probabilities
    draws: str = eqx.field(static=True)

    def __init__(
        self,
        levels: Sequence[Callable] | LevelFamily,
        probabilities: Any = None,
        *,
        coupling: str = "nested",
        draws: str = "random",
    ):
        """**Arguments:**

        - `levels`: callables `f(t, y, args)` (the vector-field signature of
            `diffrax.ODETerm`), cheapest first, each returning the structure, shapes and
            dtypes of `y`. Equinox modules work as they are. Or a `mlem_jax.LevelFamily`,
            whose levels share one pass: a step then costs the pass to the deepest
            level it draws.
        - `probabilities`: p_1..p_K, each in (0, 1], p_1 == 1, non-increasing under
            the nested coupling; required when K > 1. See
            `mlem_jax.optimal_probabilities`. Or a schedule: an array (N, K) whose row
            n is used at step n (N at least the number of steps), or a callable
            `t -> (K,)` evaluated at the start of each step (in the user's time, also
            in reverse time). A schedule's rows are checked at run time
            (`eqx.error_if`), as the step index is traced.
        - `coupling`: `"nested"` (one uniform per step; the levels evaluated are
            1..L) or `"independent"` (each correction drawn on its own).
        - `draws`: `"random"` (independent draws at every step) or `"stratified"` (the
            steps that draw a level spread evenly; see `mlem_jax.draw_levels`).
        """
        self.levels = check_levels(levels)
        check_coupling(coupling)
        check_draws(draws)
        self.draws = draws
        self.probabilities = checked_probabilities(probabilities, len(self.levels), coupling)

    @property
    def coupling(self) -> str:
        """`"nested"` or `"independent"`."""
        return self.probabilities.coupling

    @property
    def needed(self) -> tuple[int, ...]:
        """The levels the estimate depends on (`mlem_jax.needed_levels`)."""
        return self.probabilities.needed

    def vf(self, t: Any, y: PyTree, args: Any) -> PyTree:
        """The top level f^K(t, y, args), the mean of ML-EM's drift estimate."""
        return self.levels[-1](t, y, args)

    def contr(self, t0: Any, t1: Any, **kwargs) -> Any:
        """The control of a drift: the time step t1 - t0, as for `diffrax.ODETerm`."""
        return t1 - t0

    def prod(self, vf: PyTree, control: Any) -> PyTree:
        """The vector field times the time step."""
        return jtu.tree_map(lambda v: (control * v).astype(v.dtype), vf)


class MLEMSolverState(NamedTuple):
    """The state `MLEM` carries between steps.

    - `num_steps`: int scalar, the number of steps made so far; step n draws its levels
        with `mlem_jax.draw_levels(key, ..., step=n)`.
    - `evaluations`: int array (K,), at how many steps each level was evaluated.

    Read it after a solve with `diffeqsolve(..., saveat=SaveAt(..., solver_state=True))`
    and `mlem_jax.evaluations(sol)`.
    """

    num_steps: Int[Array, ""]
    evaluations: Int[Array, " K"]


class _Parsed(NamedTuple):
    drift: diffrax.AbstractTerm  # the MultilevelTerm, with diffrax's wrappers on
    multilevel: MultilevelTerm
    direction: Any
    others: tuple[diffrax.AbstractTerm, ...]


def _flatten(terms: Any) -> list:
    if isinstance(terms, diffrax.MultiTerm):
        return [leaf for term in terms.terms for leaf in _flatten(term)]
    return [terms]


def _unwrap(term: Any) -> tuple[Any, Any]:
    """Peel off diffrax's `WrapTerm`s (the direction of time); refuse `AdjointTerm`."""
    wrap_term, adjoint_term = wrapper_terms()
    direction = 1
    while True:
        if isinstance(term, wrap_term):
            direction = direction * term.direction
            term = term.term
        elif isinstance(term, adjoint_term):
            raise ValueError(
                "`mlem_jax.MLEM` does not support `adjoint=diffrax.BacksolveAdjoint()`: "
                "the backward solve would redraw the levels and differentiate a "
                "different random drift than the forward solve used. Use the default "
                "`diffrax.RecursiveCheckpointAdjoint()`, or `diffrax.DirectAdjoint()` / "
                "`diffrax.ForwardMode()`."
            )
        else:
            return term, direction


def _parse_terms(terms: Any) -> _Parsed:
    parts = _flatten(terms)
    found = [
        index for index, part in enumerate(parts) if isinstance(_unwrap(part)[0], MultilevelTerm)
    ]
    if len(found) != 1:
        got = ", ".join(type(_unwrap(part)[0]).__name__ for part in parts)
        raise TypeError(
            "`mlem_jax.MLEM` needs exactly one `mlem_jax.MultilevelTerm` (the drift) in "
            f"`terms`, got {len(found)} among the terms [{got}]. Use "
            "`terms=MultilevelTerm(levels, probabilities)` for an ODE, or "
            "`terms=diffrax.MultiTerm(MultilevelTerm(levels, probabilities), "
            "diffrax.ControlTerm(g, brownian_path))` for an SDE; replace "
            "`diffrax.ODETerm(f)` by the `MultilevelTerm`."
        )
    [index] = found
    multilevel, direction = _unwrap(parts[index])
    others = tuple(part for i, part in enumerate(parts) if i != index)
    return _Parsed(parts[index], multilevel, direction, others)


def _time_mapped(level: Callable, direction: Any) -> Callable:
    """`level` called with the user's time when diffrax hands over t * direction."""
    if isinstance(direction, int) and direction == 1:
        return level
    return lambda t, y, args: level(t * direction, y, args)


class _TimeMappedFamily(LevelFamily):
    """A `LevelFamily` called with the user's time when diffrax hands over t * direction."""

    family: LevelFamily
    direction: Any

    @property
    def num_levels(self) -> int:
        return len(self.family)

    def evaluate(self, t: Any, y: PyTree, args: Any, depth: int) -> tuple[PyTree, ...]:
        return self.family.evaluate(t * self.direction, y, args, depth)


def _time_mapped_levels(levels: Any, direction: Any) -> Any:
    """Every level, or the family, called with the user's time."""
    if isinstance(levels, LevelFamily):
        if isinstance(direction, int) and direction == 1:
            return levels
        return _TimeMappedFamily(levels, direction)
    return [_time_mapped(level, direction) for level in levels]


def _in_user_time(p: Probabilities, num_steps: Any, direction: Any) -> Probabilities:
    """`p` for a step of diffrax's loop: a callable schedule called with the user's time
    (diffrax hands over t * direction), a table checked at run time to have a row for
    step `num_steps` (the step index is traced)."""
    values = p.values
    if callable(values):
        schedule = values
        values = lambda t: schedule(t * direction)  # noqa: E731
    elif values is not None and values.ndim == 2:
        values = eqx.error_if(
            values,
            num_steps >= values.shape[0],
            f"`probabilities` has {values.shape[0]} rows (one per step) but the solve "
            "takes more steps than that.",
        )
    return Probabilities(values, p.needed, p.coupling)


def _sum_terms(*values: PyTree) -> PyTree:
    return jtu.tree_map(lambda *v: sum(v[1:], v[0]), *values)


class MLEM(diffrax.AbstractItoSolver):
    """The Multilevel Euler-Maruyama method as a diffrax solver.

    Pass the drift as a `mlem_jax.MultilevelTerm`, alone (ODE) or in a
    `diffrax.MultiTerm` with the noise (e.g. `diffrax.ControlTerm(g, brownian_path)`).
    Each step is `mlem_jax.build_step`: X_{n+1} = X_n + dt F_n + (other terms at t_n),
    with F_n the unbiased multilevel drift estimate, whose levels step n draws with
    `mlem_jax.draw_levels(key, ..., step=n)`. With the same key and Brownian path this is
    exactly `mlem_jax.solve`; with every p_l = 1 it is `diffrax.Euler()` on the top
    level. Terms other than the `MultilevelTerm` are stepped as by `diffrax.Euler()`.

    **Batches:** keep `key` unbatched when you `vmap` over initial conditions (or the
    Brownian path): the draws are then shared by the whole batch, each level sits in a
    `lax.cond` on an unbatched predicate, and a level that is not drawn is really
    skipped. A batched key turns the `cond` into a `select` that evaluates every level.
    Shared draws give every path the same randomisation error, which a mean over the
    batch does not average out: for independent groups, `lax.map` over groups of
    initial conditions, each `vmap`ped with a key of its own.

    **Non-finite values:** `MLEM(key, throw=True)` stops at the first step whose new
    state is not finite with an error naming the step, its time and the levels evaluated
    there (see `mlem_jax.solve`).

    **Step sizes:** constant only (`dt0` with `ConstantStepSize`, or `StepTo`). The
    drift estimate is random, so there is no error estimate: each step returns
    `y_error=None`, diffrax's mark of a solver without one, and adaptive controllers
    such as `PIDController` refuse it at trace time. (Do not wrap `MLEM` in
    `diffrax.HalfSolver` to get one: the difference of two random drift estimates
    measures the randomisation noise, not the step's error.)

    **Orders:** `order` is `None` (with random draws the drift estimate is random, so
    even on an ODE the error is of strong order 1/2, not of a deterministic order);
    `strong_order` is 1/2, as for Euler-Maruyama: the randomisation error is of order
    1/2 with random draws and 1 with stratified ones.

    **Evaluations:** `saveat=diffrax.SaveAt(..., solver_state=True)`, then
    `mlem_jax.evaluations(sol)` gives how many times each level was evaluated.

    **Adjoints:** the default `RecursiveCheckpointAdjoint` (with a
    `VirtualBrownianTree`), `DirectAdjoint` or `ForwardMode` (required by diffrax with
    `UnsafeBrownianPath`). `BacksolveAdjoint` is refused.
    """

    key: PRNGKeyArray | None = None
    throw: bool = eqx.field(default=False, static=True)

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar[Callable[..., diffrax.LocalLinearInterpolation]] = (
        diffrax.LocalLinearInterpolation
    )

    def __check_init__(self):
        check_throw(self.throw)

    def order(self, terms: PyTree[diffrax.AbstractTerm]) -> int | None:
        """`None`: ML-EM's drift estimate is random, so it has no deterministic order."""
        return None

    def strong_order(self, terms: PyTree[diffrax.AbstractTerm]) -> float | None:
        """1/2, the strong order of Euler-Maruyama and of the randomisation error."""
        return 0.5

    def error_order(self, terms: PyTree[diffrax.AbstractTerm]) -> float | None:
        """`None`: there is no error estimate (each step's `y_error` is `None`)."""
        return None

    def _check_key(self, term: MultilevelTerm) -> None:
        if len(term.levels) > 1 and self.key is None:
            raise ValueError(
                f"`mlem_jax.MLEM(key)` needs a PRNG key to draw the levels of the "
                f"`MultilevelTerm` ({len(term.levels)} levels), got None. Pass e.g. "
                "`MLEM(jax.random.key(0))`; keep it unbatched under `vmap`."
            )

    def init(
        self,
        terms: PyTree[diffrax.AbstractTerm],
        t0: Any,
        t1: Any,
        y0: PyTree,
        args: Any,
    ) -> MLEMSolverState:
        """Check `terms` against `y0` and start the counters at zero.

        **Arguments:** as `diffrax.AbstractSolver.init`.

        **Returns:**

        `MLEMSolverState(num_steps=0, evaluations=zeros(K))`.
        """
        parsed = _parse_terms(terms)
        self._check_key(parsed.multilevel)
        levels = parsed.multilevel.levels
        time_levels = _time_mapped_levels(levels, parsed.direction)
        check_level_outputs(time_levels, t0, y0, args)
        return MLEMSolverState(
            num_steps=jnp.zeros((), jnp.int32),
            evaluations=jnp.zeros(len(levels), jnp.int32),
        )

    def step(
        self,
        terms: PyTree[diffrax.AbstractTerm],
        t0: Any,
        t1: Any,
        y0: PyTree,
        args: Any,
        solver_state: MLEMSolverState,
        made_jump: Any,
    ) -> tuple[PyTree, PyTree, dict, MLEMSolverState, diffrax.RESULTS]:
        """One ML-EM step over [t0, t1], by the core's `build_step`.

        **Arguments:** as `diffrax.AbstractSolver.step`.

        **Returns:**

        `(y1, None, dense_info, solver_state, result)`: there is no error estimate (see
        the class docstring).
        """
        del made_jump
        parsed = _parse_terms(terms)
        term = parsed.multilevel
        self._check_key(term)
        levels = _time_mapped_levels(term.levels, parsed.direction)
        others = parsed.others
        noise = dw = None
        if others:

            def other_terms(t, y, args, dw):
                return _sum_terms(*(other.vf_prod(t, y, args, w) for other, w in zip(others, dw)))

            noise, dw = other_terms, tuple(other.contr(t0, t1) for other in others)
        p = _in_user_time(term.probabilities, solver_state.num_steps, parsed.direction)
        step = build_step(levels, p, noise=noise, coupling=term.coupling, draws=term.draws)
        dt = parsed.drift.contr(t0, t1)  # the signed time step: negative in reverse time
        start = MLEMState(y0, solver_state.evaluations, solver_state.num_steps)
        state, info = step(self.key, start, t0, dt, dw, args)
        y1 = state.y
        if self.throw:
            y1 = error_if_failed(
                y1,
                failed_steps(y1, start.step),
                lambda n, group: (t0 * parsed.direction, info.evaluated),
            )
        dense_info = dict(y0=y0, y1=y1)
        new_state = MLEMSolverState(state.step, state.evaluations)
        return y1, None, dense_info, new_state, diffrax.RESULTS.successful

    def func(self, terms: PyTree[diffrax.AbstractTerm], t0: Any, y0: PyTree, args: Any) -> Any:
        """The vector fields at a point, the drift being the top level f^K."""
        return terms.vf(t0, y0, args)


MLEM.__init__.__doc__ = """**Arguments:**

- `key`: PRNG key of the level draws; step n draws with `mlem_jax.draw_levels(key, ...,
    step=n)`. Required when the `MultilevelTerm` has more than one level. Keep it
    unbatched under `vmap`.
- `throw`: stop with an `equinox.EquinoxRuntimeError` at the first step whose new state
    is not finite (as it is when the drift estimate or the noise increment is not),
    naming the step, its time and the levels evaluated there. Off (default), nothing is
    checked; on, every step is (one reduction and one `lax.cond`). (diffrax's own
    `diffeqsolve(..., throw=...)` is about the solve's result code, which stays
    successful.)
"""


def evaluations(solution: diffrax.Solution) -> Int[Array, "*batch K"]:
    """How many times each level was evaluated in a `diffeqsolve` with `MLEM`.

    **Arguments:**

    - `solution`: the result of `diffrax.diffeqsolve(..., solver=mlem_jax.MLEM(key),
        saveat=diffrax.SaveAt(..., solver_state=True))`.

    **Returns:**

    An int array (K,) (with the batch axes of a `vmap`ped solve in front): the number of
    steps at which each level was evaluated.
    """
    state = solution.solver_state
    if not isinstance(state, MLEMSolverState):
        raise ValueError(
            "`mlem_jax.evaluations` reads the level counts from `sol.solver_state`, "
            f"which is {type(state).__name__}. Solve with `solver=mlem_jax.MLEM(key)` "
            "and `saveat=diffrax.SaveAt(..., solver_state=True)`."
        )
    return state.evaluations
