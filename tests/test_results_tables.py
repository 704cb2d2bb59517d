"""The committed result tables are what their scripts write from the committed JSON."""

import json
from pathlib import Path

import pytest

from experiment_helpers import load_experiment


RESULTS = Path(__file__).parent.parent / "experiments" / "results"
# Written before the levels were drawn in groups: its config has no "groups", and the
# docs show it under a warning.
BEFORE_GROUPS = {"diffusion_quality_unets.json"}


# Result stem prefix -> the script and its function that writes the table, longest
# prefix first.
WRITERS = (
    ("diffusion_quality", "diffusion_quality", "table"),
    ("diffusion", "diffusion", "table"),
    ("bfloat16", "bfloat16", "table"),
    ("grids", "grids", "table"),
    ("ladders", "ladders", "table"),
    ("htmc", "htmc_report", "markdown_table"),
)


def table_writer(result: Path):
    """The function that writes the table of `result`."""
    for prefix, script, function in WRITERS:
        if result.stem.startswith(prefix):
            return getattr(load_experiment(script), function)
    raise AssertionError(f"no script writes {result.name}")


RESULT_FILES = sorted(
    f
    for f in RESULTS.glob("*.json")
    if (RESULTS / f"{f.stem}_table.md").exists() and f.name not in BEFORE_GROUPS
)


def test_every_diffusion_result_is_checked():
    names = {f.stem for f in RESULT_FILES}
    assert {"diffusion", "diffusion_below_top", "diffusion_quality"} <= names
    for name in BEFORE_GROUPS:
        assert "groups" not in json.loads((RESULTS / name).read_text())["config"]


@pytest.mark.parametrize("result", RESULT_FILES, ids=lambda f: f.stem)
def test_committed_table_is_the_scripts_table_of_the_committed_json(result):
    written = table_writer(result)(json.loads(result.read_text()))
    assert written == (RESULTS / f"{result.stem}_table.md").read_text()
