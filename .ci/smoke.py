"""Checks of the installed wheel, run by .ci/wheel-smoke from outside the checkout.

`python smoke.py core`: the solver without the diffusion extra. `python smoke.py
diffusion`: the shipped checkpoints and data load from the installed package.
"""

import subprocess
import sys
from pathlib import Path


def installed(module) -> Path:
    path = Path(module.__file__).resolve()
    assert "site-packages" in path.parts, f"{module.__name__} imported from {path}"
    return path


def core() -> None:
    import diffrax
    import jax
    import jax.numpy as jnp

    import mlem_jax

    installed(mlem_jax)
    assert (Path(mlem_jax.__file__).parent / "py.typed").exists()
    levels = mlem_jax.random_feature_levels(jax.random.key(0), 4, [8, 32, 128], alpha=1.0)
    run = mlem_jax.solve(
        levels,
        jnp.ones(4),
        0.0,
        1.0,
        32,
        probabilities=[1.0, 0.5, 0.1],
        key=jax.random.key(1),
        diffusion=lambda t, y, a: 0.3,
        brownian=jax.random.key(2),
    )
    assert run.ys.shape == (4,) and bool(jnp.isfinite(run.ys).all())
    sol = diffrax.diffeqsolve(
        mlem_jax.MultilevelTerm(levels, [1.0, 0.5, 0.1]),
        mlem_jax.MLEM(jax.random.key(1)),
        0.0,
        1.0,
        0.1,
        jnp.ones(4),
        saveat=diffrax.SaveAt(t1=True, solver_state=True),
    )
    assert int(mlem_jax.evaluations(sol)[0]) == 10
    try:
        import mlem_jax.diffusion  # noqa: F401
    except ModuleNotFoundError as error:
        message = str(error)
    else:
        raise AssertionError("mlem_jax.diffusion imported without the diffusion extra")
    assert "\n" not in message and "pip install 'mlem-jax[diffusion]'" in message, message
    done = subprocess.run(
        [sys.executable, "-m", "mlem_jax.cli", "sample"], capture_output=True, text=True
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and "mlem-jax[diffusion]" in lines[0], (
        done.returncode,
        done.stderr,
    )
    print(
        f"smoke core: mlem_jax {mlem_jax.__version__} from {installed(mlem_jax).parent}; "
        f"without the extra: {message}"
    )


def diffusion() -> None:
    import jax

    from mlem_jax.diffusion import (
        CASCADE_CHECKPOINTS,
        CHECKPOINTS,
        load_levels,
        load_mnist,
        load_model,
        read_calibration,
    )
    from mlem_jax.diffusion.levels import load_sampling_levels

    assert "site-packages" in CHECKPOINTS.parts, CHECKPOINTS
    models, _ = load_levels()
    cascade, _ = load_sampling_levels()  # the demo that follows samples with it
    calibration = read_calibration(CASCADE_CHECKPOINTS / "calibration.json", "sde")
    assert calibration is not None and len(calibration["flops"]) == len(cascade)
    classifier, _ = load_model(CHECKPOINTS / "classifier")
    held_out = load_mnist("test")
    assert held_out.images.shape == (1000, 1, 32, 32), held_out.images.shape
    logits = jax.vmap(classifier)(held_out.images[:4])
    assert logits.shape == (4, 10)
    print(
        f"smoke diffusion: {len(models)} UNets, a cascade of {len(cascade)} exits and the "
        f"classifier from {CHECKPOINTS}, "
        f"{len(held_out.images)} held-out MNIST digits"
    )


if __name__ == "__main__":
    {"core": core, "diffusion": diffusion}[sys.argv[1]]()
