"""The README: its two set-up commands come first, CI runs the test one, and every
```python block (the quick start, your own score model) runs as written."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"^```(\w+)\n(.*?)^```", README, flags=re.DOTALL | re.MULTILINE)
PYTHON = [code for language, code in BLOCKS if language == "python"]


def test_readme_starts_with_the_demo_and_test_commands_that_ci_runs():
    language, first = BLOCKS[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines() if line.strip()]
    assert language == "bash" and commands == ["make demo", "make test"]
    assert README.index("```bash") < README.index("# mlem-jax")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[-1] == "make test"


def test_readme_shows_sampling_your_own_score_model_on_a_time_grid():
    section = README.split("## Your own score model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"^```python\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    assert len(code) == 1 and code[0] in PYTHON
    for name in ("score_levels(", "prediction=", "calibrate(", "time_grid(", "ts=ts"):
        assert name in code[0], name


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_readme_example_runs(index):
    exec(compile(PYTHON[index], f"README.md:{index}", "exec"), {})
