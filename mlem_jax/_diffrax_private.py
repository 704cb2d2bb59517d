"""The private names of diffrax that `MLEM` needs, in one place.

diffrax wraps the terms it hands to a solver: in `WrapTerm` when time runs backwards, in
`AdjointTerm` for the backward solve of `BacksolveAdjoint`. It exports neither class, so
they come from `diffrax._term`, and only `MLEM` reads them, when it steps: if a diffrax
release moves them, `import mlem_jax` and `solve` keep working and `MLEM` says why it
cannot.
"""

import diffrax


# The diffrax releases these names were tested with.
TESTED = "0.7.0 to 0.7.2"


def wrapper_terms() -> tuple[type, type]:
    """`(WrapTerm, AdjointTerm)` from `diffrax._term`, or an `ImportError` naming the
    installed diffrax version when they are not there."""
    try:
        from diffrax._term import AdjointTerm, WrapTerm
    except ImportError as error:
        raise ImportError(
            "`mlem_jax.MLEM` needs `WrapTerm` and `AdjointTerm` from `diffrax._term`, "
            f"which diffrax {diffrax.__version__} does not have (tested with diffrax "
            f"{TESTED}). Install one of those versions, or use `mlem_jax.solve`."
        ) from error
    return WrapTerm, AdjointTerm
