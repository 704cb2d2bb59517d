"""Every ```python block of the documentation runs as written (the README's:
test_readme.py)."""

import re
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
EXAMPLES = {
    f"{page.relative_to(ROOT)}:{index}": block
    for page in PAGES
    for index, block in enumerate(
        re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.DOTALL | re.MULTILINE)
    )
}


def test_the_pages_have_examples():
    pages = {name.split(":")[0] for name in EXAMPLES}
    assert {
        "docs/how-to/from-diffrax.md",
        "docs/how-to/probabilities.md",
        "docs/how-to/score-models.md",
        "docs/how-to/strong-error.md",
        "docs/how-to/sharding.md",
    } <= pages


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_runs(name):
    exec(compile(EXAMPLES[name], name, "exec"), {})
