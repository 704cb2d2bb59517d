"""The SDE demo's committed output (experiments/results/sde_demo.txt, which the README and
the docs quote) is what `mlem-jax sde-demo` prints."""

from pathlib import Path

import pytest

from mlem_jax._sde_demo import run


COMMITTED = Path(__file__).parent.parent / "experiments" / "results" / "sde_demo.txt"


def committed_rows() -> list[tuple[str, int, float, float, int]]:
    """(method, steps, strong error, MFLOPs, top-level evaluations) of the committed table."""
    rows = []
    for line in COMMITTED.read_text().splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0] in ("EM", "ML-EM"):
            method, steps, error, mflops, _, top = fields
            rows.append((method, int(steps), float(error), float(mflops), int(top)))
    return rows


@pytest.mark.slow
def test_committed_sde_demo_output_is_what_the_demo_prints():
    rows = run()
    assert len(committed_rows()) == len(rows) == 6
    for (method, steps, error, mflops, top), row in zip(committed_rows(), rows):
        assert (row["method"], row["steps"], row["top_level_evaluations"]) == (method, steps, top)
        assert row["strong_error"] == pytest.approx(error, abs=1e-5)
        assert row["flops"] / 1e6 == pytest.approx(mflops, abs=0.01)
    # The README's "1.4x and 1.3x fewer FLOPs at EM's error with 16 and 64 steps".
    by = {(r["method"], r["steps"]): r for r in rows}
    for steps, ratio in ((16, 1.4), (64, 1.3)):
        em, mlem = by[("EM", steps)], by[("ML-EM", steps)]
        assert mlem["strong_error"] <= em["strong_error"]
        assert em["flops"] / mlem["flops"] == pytest.approx(ratio, abs=0.05)
