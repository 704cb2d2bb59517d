"""The committed result tables are what their scripts write from the committed JSON."""

import json
from pathlib import Path

import pytest

from experiment_helpers import load_experiment


RESULTS = Path(__file__).parent.parent / "experiments" / "results"
BEFORE_GROUPS = "diffusion_quality_unets.json"
# Result files this test leaves out, and why.
LEFT_OUT = {
    BEFORE_GROUPS: "written before the levels were drawn in groups (its config has no "
    '"groups"); the docs show it under a warning',
    "htmc.json": "tests/test_htmc.py redraws its table and figure with --render-only",
}


# The scripts whose `table(result)` writes `<stem>_table.md`, a result's stem starting
# with its script's name; longest name first.
SCRIPTS = ("diffusion_quality", "diffusion", "bfloat16", "gaussian_base", "grids", "ladders")


def table_writer(result: Path):
    """The `table` function of the script that writes `result`."""
    for script in SCRIPTS:
        if result.stem.startswith(script):
            return load_experiment(script).table
    raise AssertionError(f"no script writes {result.name}")


RESULT_FILES = sorted(
    f
    for f in RESULTS.glob("*.json")
    if (RESULTS / f"{f.stem}_table.md").exists() and f.name not in LEFT_OUT
)


def test_every_diffusion_result_is_checked():
    names = {f.stem for f in RESULT_FILES}
    assert {"diffusion", "diffusion_below_top", "diffusion_quality", "gaussian_base"} <= names
    assert "groups" not in json.loads((RESULTS / BEFORE_GROUPS).read_text())["config"]


@pytest.mark.parametrize("result", RESULT_FILES, ids=lambda f: f.stem)
def test_committed_table_is_the_scripts_table_of_the_committed_json(result):
    written = table_writer(result)(json.loads(result.read_text()))
    assert written == (RESULTS / f"{result.stem}_table.md").read_text()
