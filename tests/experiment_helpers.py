"""Load or run the scripts of experiments/ from the tests."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType


EXPERIMENTS = Path(__file__).parents[1] / "experiments"


def load_experiment(name: str) -> ModuleType:
    """experiments/<name>.py as a module (its functions, without running main)."""
    spec = importlib.util.spec_from_file_location(f"{name}_experiment", EXPERIMENTS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_experiment(name: str, out: Path, *flags: str, timeout: float | None = None) -> None:
    """Run experiments/<name>.py on the CPU in a fresh interpreter, writing to `out`."""
    subprocess.run(
        [sys.executable, str(EXPERIMENTS / f"{name}.py"), *flags, "--out", str(out)],
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        cwd=EXPERIMENTS.parent,
        timeout=timeout,
    )
