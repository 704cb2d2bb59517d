"""Every number in the README's Results table is the committed result it quotes.

Each row of the table (found by a distinctive piece of its first column) has a list of
claims: the text as the row quotes it, a function of the committed files in
experiments/results/ that returns the value, and the format that renders the value as
quoted. A README number that drifts from its result file fails, and so do a row added or
removed without claims here and a number in a row that no claim covers.
"""

import json
import math
import re
import string
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pytest


ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
README = (ROOT / "README.md").read_text()
START, END = "<!-- --8<-- [start:results] -->", "<!-- --8<-- [end:results] -->"

KIND = {"sde": "reverse SDE", "ode": "probability-flow ODE"}
WORDS = {3: "three", 4: "four", 5: "five", 6: "six"}
# The experiments' families by how ML-EM draws its levels (experiments/diffusion.py).
DRAWS = {"mlem": "random", "mlem_t": "random", "mlem_tw": "random"}
DRAWS |= {"mlem_s": "stratified", "mlem_s3": "stratified"}


def table_rows() -> list[list[str]]:
    """The Results table's rows below its header, each as its three cells."""
    block = README.split(START, 1)[1].split(END, 1)[0].strip().splitlines()
    assert block[0].startswith("| setting |") and set(block[1]) <= set("|- ")
    rows = [line.removeprefix("| ").removesuffix(" |").split(" | ") for line in block[2:]]
    assert all(len(cells) == 3 for cells in rows)
    return rows


@cache
def load(name: str) -> Any:
    """A committed result file: JSON parsed, anything else as text."""
    text = (RESULTS / name).read_text()
    return json.loads(text) if name.endswith(".json") else text


def says(name: str, text: str, quoted: str | None = None) -> str:
    """`quoted` (default `text`) when the committed file `name` contains `text` (a
    table's fixed wording)."""
    return (quoted or text) if text in load(name) else f"<{text!r} not in {name}>"


def verdict(reached: bool) -> str:
    return "reached" if reached else "not reached"


# --- random-feature drifts (htmc.json) ---


def htmc_at(gamma: float) -> dict:
    return next(g for g in load("htmc.json")["gammas"] if g["gamma_nominal"] == gamma)


def htmc_over_gammas(*keys: str) -> tuple[float, float]:
    """Min and max over the gammas of htmc.json's gammas[i][keys[0]][keys[1]]..."""
    values = []
    for g in load("htmc.json")["gammas"]:
        for key in keys:
            g = g[key]
        values.append(g)
    return min(values), max(values)


def htmc_comparison() -> tuple:
    gamma = load("htmc.json")["settings"]["comparison_gamma"]
    g = htmc_at(gamma)
    ci = g["bootstrap_90"]
    return (g["mlem_slope"], *ci["mlem_slope"], g["em_slope"], *ci["em_slope"], gamma)


def htmc_apart() -> str:
    """The gammas whose 90% slope intervals of EM and ML-EM do not overlap."""
    apart = []
    for g in load("htmc.json")["gammas"]:
        (em_low, em_high), (ml_low, ml_high) = (
            g["bootstrap_90"]["em_slope"],
            g["bootstrap_90"]["mlem_slope"],
        )
        if ml_high < em_low or em_high < ml_low:
            apart.append(f"{g['gamma_nominal']:g}")
    return ", ".join(apart)


def htmc_flatter() -> str:
    gammas = load("htmc.json")["gammas"]
    return "every" if all(g["mlem_slope"] < g["em_slope"] for g in gammas) else "not every"


# --- MNIST diffusion (diffusion*.json, diffusion_quality*.json) ---


def best_speedups(name: str) -> tuple[float, float, str, float]:
    """FLOP and wall-clock speedups of the best ML-EM at EM's operating error, how that
    best one draws its levels, and the FLOP speedup of ML-EM with constant p_l and random
    draws."""
    d = load(name)
    best = d["mlem_best"]
    return d["speedup_flops"], d["speedup_wallclock"], DRAWS[best], d["speedups"]["mlem"]["flops"]


def at_target(name: str, em_steps: int) -> dict:
    return next(r for r in load(name)["speedup_by_target"] if r["em_steps"] == em_steps)


def best_at_target(name: str, em_steps: int) -> tuple[float, int]:
    """The best ML-EM's FLOP speedup at the error of EM with `em_steps` steps."""
    row = at_target(name, em_steps)
    return row[load(name)["mlem_best"]]["speedup_flops"], row["em_steps"]


def goal(name: str) -> str:
    """The diffusion goal (docs/experiments/diffusion.md, not a result): 4x fewer FLOPs
    and 3x less wall-clock at EM's operating error."""
    flops, wallclock = best_speedups(name)[:2]
    return verdict(flops >= 4 and wallclock >= 3)


def operating_steps(name: str) -> int:
    return load(name)["config"]["operating_steps"]


def operating_fd(name: str) -> tuple:
    """Samples, then the FD (mean and standard error) of the best ML-EM and of EM at the
    operating point of the experiment the quality run `name` reruns."""
    q = load(name)
    points = load(q["operating_points"])["operating_points"]
    best = points[load(q["operating_points"])["mlem_best"]]["label"]
    by_label = {p["label"]: p for p in q["points"]}
    mlem, em = by_label[best], by_label[points["em"]["label"]]
    samples = q["config"]["samples"] * q["config"]["repeats"]
    return samples, mlem["fd"], mlem["fd_standard_error"], em["fd"], em["fd_standard_error"]


def exits(name: str) -> int | str:
    """How many exits of one network the ladder of experiment `name` has."""
    d = load(name)
    return len(d["widths"]) if d["calibration"].get("shared") else "<separate networks>"


def unets(name: str) -> str:
    d = load(name)
    return "<exits>" if d["calibration"].get("shared") else WORDS[len(d["widths"])]


def below_top_exits() -> str:
    d = load("diffusion_below_top.json")
    ok = d["below_top"] and d["calibration"].get("shared")
    return WORDS[len(d["widths"])] if ok else "<not the exits below the top>"


def below_top_unets() -> tuple[str, int]:
    ladder = load("diffusion_unets_below_top.json")["widths"]
    (truth,) = set(load("diffusion_unets.json")["widths"]) - set(ladder)
    return ", ".join(str(w) for w in ladder), truth


def random_draws_cheapest(name: str) -> str:
    """Who the cheapest run at EM's error with constant p_l and random draws is."""
    point = load(name)["operating_points"]["mlem"]
    return "EM itself" if all(p == 1.0 for p in point["probabilities"]) else point["label"]


def beats_em(name: str) -> str:
    """Whether any ML-EM run at EM's operating error is cheaper in FLOPs."""
    row = at_target(name, operating_steps(name))
    speedups = [row[f]["speedup_flops"] for f in DRAWS if row[f] is not None]
    return "no" if max(speedups) <= 1.0 else "an"


def quality_at(em_steps: int) -> tuple[int, float, float]:
    """EM's steps, then the FLOP and wall-clock speedups of the best ML-EM at the FD of EM
    with `em_steps` steps (diffusion_quality_unets.json)."""
    rows = load("diffusion_quality_unets.json")["equal_quality"]
    row = next(r for r in rows if r["em"] == f"EM N={em_steps}")
    mlem = max((row[f] for f in DRAWS if row.get(f)), key=lambda p: p["speedup_flops"])
    return int(row["em"].removeprefix("EM N=")), mlem["speedup_flops"], mlem["speedup_wallclock"]


def quality_batches() -> tuple[int, str]:
    """Samples per batch, and how many draw sequences a batch had: one, before the
    script drew ML-EM's levels in groups (its config then has no "groups")."""
    config = load("diffusion_quality_unets.json")["config"]
    return config["samples"], "one" if "groups" not in config else "several"


# --- the Gaussian base (gaussian_base*.json) ---


def headline(name: str, ladder: str) -> dict:
    return load(name)["headline"][ladder]


def interval(name: str, ladder: str, key: str) -> tuple[float, float, float]:
    h = headline(name, ladder)
    point = load(name)["operating_points"][f"{ladder}/{h['family']}"]
    return (point[key], *point[f"{key}_ci"])


def gaussian_fd() -> tuple:
    d = load("gaussian_base.json")
    top, em = headline("gaussian_base.json", "gaussian_top")["quality"], d["em"]["quality"]
    samples = d["config"]["quality_batches"] * d["config"]["quality_samples"]
    return samples, top["fd"], top["fd_standard_error"], em["fd"], em["fd_standard_error"]


def gaussian_with_exits() -> tuple[str, float, float]:
    exits_below = len(load("gaussian_base.json")["calibrations"]["gaussian_family"]["flops"]) - 1
    h = headline("gaussian_base.json", "gaussian_family")
    return WORDS[exits_below], h["speedup_flops"], h["speedup_wallclock"]


def gaussian_goals() -> str:
    """Goals: 2.5x FLOPs with one network; 4x FLOPs and 3x wall-clock with the exits."""
    top = headline("gaussian_base.json", "gaussian_top")
    family = headline("gaussian_base.json", "gaussian_family")
    one = top["speedup_flops"] >= 2.5
    both = family["speedup_flops"] >= 4 and family["speedup_wallclock"] >= 3
    return verdict(one or both)


def gaussian_unets() -> tuple[str, str, float, float]:
    d = load("gaussian_base_unets.json")
    levels, top = d["calibrations"]["levels"]["flops"], d["calibrations"]["gaussian_top"]["flops"]
    largest = "largest" if math.isclose(top[-1], max(levels), rel_tol=1e-3) else "<not largest>"
    h = headline("gaussian_base_unets.json", "gaussian_top")
    return largest, WORDS[len(levels)], h["speedup_flops"], h["speedup_wallclock"]


def gaussian_ode() -> tuple[str, str, str, float]:
    name = "gaussian_base_ode.json"
    top, family = headline(name, "gaussian_top"), headline(name, "gaussian_family")
    gaussian = max(h["speedup_flops"] if h["reached"] else 0.0 for h in (top, family))
    pays = "does not pay" if gaussian < headline(name, "levels")["speedup_flops"] else "pays"
    return KIND[load(name)["kind"]], pays, verdict(top["reached"]), family["speedup_flops"]


def gaussian_testbed() -> tuple[str, float, float]:
    name = "gaussian_base_testbed.json"
    serves = "serves" if headline(name, "gaussian_top")["reached"] else "does not serve"
    return (
        serves,
        headline(name, "levels")["speedup_flops"],
        headline(name, "gaussian_family")["speedup_flops"],
    )


# --- time grids (grids.json) ---


def grid_speedups(grid: str) -> tuple[float, float]:
    """The best ML-EM's FLOP and wall-clock speedups on `grid` (reverse SDE)."""
    speedups = load("grids.json")["kinds"]["sde"][grid]["speedups"]
    best = max(speedups.values(), key=lambda s: s["flops"] or 0.0)
    return best["flops"], best["wallclock"]


def grids_smallest_em_error() -> str:
    """The grid on which EM with the operating steps has the smallest error (reverse SDE,
    against the common reference)."""
    by_grid = load("grids.json")["kinds"]["sde"]
    best = min(by_grid, key=lambda g: by_grid[g]["operating"]["em"]["common_error"])
    return "equal steps" if best == "uniform" else best


# --- ladders on the exact-score testbed (ladders.json, ladders_raw.json) ---


def ladder(family: str | None = None) -> dict:
    d = load("ladders.json")
    return d["testbeds"][d["testbed"]]["families"][family or d["family"]]


def ladder_exits() -> int | str:
    family = load("ladders.json")["family"]
    return ladder()["levels"] if family.startswith("exits") else "<not early exits>"


def ladder_speedups() -> tuple[float, float, int, str]:
    d, config = load("ladders.json"), load("ladders_raw.json")["config"]
    # "Equal quality": ML-EM's latent FD within 5% of EM's (the docs' goal).
    quality = "equal" if d["quality"]["mlem"] <= 1.05 * d["quality"]["em"] else "worse"
    return d["speedup_flops"], d["speedup_wallclock"], config["timing_batch"], quality


def ladders_without_speedup() -> str:
    none = all(ladder(f)["speedup_flops"] is None for f in ("independent", "distilled"))
    return "no speedup" if none else "a speedup"


# --- the SDE demo (sde_demo.txt) ---


def demo() -> dict[tuple[str, int], dict[str, float]]:
    """The demo's table by (method, steps): strong error, MFLOPs, ms, top-level evals."""
    rows = {}
    for line in load("sde_demo.txt").splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[0] in ("EM", "ML-EM"):
            method, steps, error, mflops, ms, top = fields
            values = float(error), float(mflops), float(ms), float(top)
            rows[method, int(steps)] = dict(zip(("error", "mflops", "ms", "top"), values))
    return rows


def demo_levels() -> int:
    match = re.search(r"features \[([^]]*)\]", load("sde_demo.txt"))
    assert match
    return len(match.group(1).split(","))


def demo_equal_steps() -> str:
    steps = {method: {s for m, s in demo() if m == method} for method in ("EM", "ML-EM")}
    return "equal" if steps["EM"] == steps["ML-EM"] else "unequal"


def demo_speedups() -> tuple:
    """EM's MFLOPs over ML-EM's (rounded to one decimal in the README) at each step count
    where ML-EM's strong error is at most EM's, then those step counts."""
    rows = demo()
    steps = sorted(
        s for m, s in rows if m == "EM" and rows["ML-EM", s]["error"] <= rows[m, s]["error"]
    )
    return (*(rows["EM", s]["mflops"] / rows["ML-EM", s]["mflops"] for s in steps), *steps)


# Per row (a distinctive piece of its first column): (text as quoted, value, format).
Claim = tuple[str, Callable[[], Any], str]
SDE_64 = "EM's strong error with 64 steps"
CLAIMS: dict[str, list[Claim]] = {
    "(HTMC regime)": [
        ("γ = 1.5 to 4", lambda: htmc_over_gammas("gamma_nominal"), "γ = {:g} to {:g}"),
        ("13 levels", lambda: load("htmc.json")["settings"]["num_levels"], "{} levels"),
        ("flatter frontier at every γ", htmc_flatter, "flatter frontier at {} γ"),
        (
            "3.51 [2.82, 3.81] against 3.75 [3.55, 4.01] at γ = 3",
            htmc_comparison,
            "{:.2f} [{:.2f}, {:.2f}] against {:.2f} [{:.2f}, {:.2f}] at γ = {:g}",
        ),
        ("90% intervals", lambda: says("htmc_table.md", "90% intervals"), "{}"),
        ("apart only at γ = 1.5", htmc_apart, "apart only at γ = {}"),
        (
            "2.6x to 4.0x fewer FLOPs at the smallest common error",
            lambda: htmc_over_gammas("flops", "speedup_at_min_error"),
            "{:.1f}x to {:.1f}x fewer FLOPs at the smallest common error",
        ),
        (
            "6.6x to 13.3x at twice the error floor",
            lambda: htmc_over_gammas("flops", "speedup_at_window_low"),
            "{:.1f}x to {:.1f}x at twice the error floor",
        ),
        # The window's low end, where the second range is taken, is twice the error floor.
        (
            "twice the error floor",
            lambda: says("htmc_table.md", "window [2 e_floor,", "twice"),
            "{} the error floor",
        ),
    ],
    "(`CascadeUNet`, the default levels)": [
        ("4 early exits", lambda: exits("diffusion.json"), "{} early exits"),
        ("reverse SDE", lambda: KIND[load("diffusion.json")["kind"]], "{}"),
        (SDE_64, lambda: operating_steps("diffusion.json"), "EM's strong error with {} steps"),
        (
            "2.46x fewer FLOPs and 1.19x less wall-clock with stratified draws",
            lambda: best_speedups("diffusion.json")[:3],
            "{:.2f}x fewer FLOPs and {:.2f}x less wall-clock with {} draws",
        ),
        (
            "3.20x fewer FLOPs at EM's 128-step error",
            lambda: best_at_target("diffusion.json", 128),
            "{:.2f}x fewer FLOPs at EM's {}-step error",
        ),
        (
            "1.11x with random draws",
            lambda: best_speedups("diffusion.json")[3],
            "{:.2f}x with random draws",
        ),
        (
            "FD on 2,048 samples 181.0 ± 8.4 against EM's 210.1 ± 9.3",
            lambda: operating_fd("diffusion_quality.json"),
            "FD on {:,} samples {:.1f} ± {:.1f} against EM's {:.1f} ± {:.1f}",
        ),
        # The goal, 4x fewer FLOPs and 3x less wall-clock, is the docs' (not a result).
        ("Goal of 4x / 3x not reached", lambda: goal("diffusion.json"), "Goal of 4x / 3x {}"),
    ],
    "`GaussianDrift`": [
        ("reverse SDE", lambda: KIND[load("gaussian_base.json")["kind"]], "{}"),
        (
            "EM's held-out strong error with 64 steps",
            lambda: (
                "held-out" if load("gaussian_base.json")["heldout"] else "tuning",
                operating_steps("gaussian_base.json"),
            ),
            "EM's {} strong error with {} steps",
        ),
        (
            "2.52x less wall-clock (90% interval 2.02 to 3.03)",
            lambda: interval("gaussian_base.json", "gaussian_top", "speedup_wallclock"),
            "{:.2f}x less wall-clock (90% interval {:.2f} to {:.2f})",
        ),
        (
            "90% interval",
            lambda: says("gaussian_base_table.md", "| 90% interval |", "90% interval"),
            "{}",
        ),
        (
            "2.17x fewer FLOPs ([1.74, 2.61])",
            lambda: interval("gaussian_base.json", "gaussian_top", "speedup_flops"),
            "{:.2f}x fewer FLOPs ([{:.2f}, {:.2f}])",
        ),
        (
            "FD on 2,048 samples 185.7 ± 6.6 against EM's 210.1 ± 9.3",
            gaussian_fd,
            "FD on {:,} samples {:.1f} ± {:.1f} against EM's {:.1f} ± {:.1f}",
        ),
        (
            "with the four exits under the Gaussian 2.40x fewer FLOPs and 1.50x less wall-clock",
            gaussian_with_exits,
            "with the {} exits under the Gaussian {:.2f}x fewer FLOPs and {:.2f}x less wall-clock",
        ),
        (
            "Goals of 2.5x FLOPs (one network) and 4x / 3x (with the exits) not reached",
            gaussian_goals,
            "Goals of 2.5x FLOPs (one network) and 4x / 3x (with the exits) {}",
        ),
        (
            "Under the largest of the four UNets: 1.84x fewer FLOPs, 2.13x less wall-clock",
            gaussian_unets,
            "Under the {} of the {} UNets: {:.2f}x fewer FLOPs, {:.2f}x less wall-clock",
        ),
        (
            "On the probability-flow ODE the base does not pay (one network not reached, "
            "1.07x with the exits)",
            gaussian_ode,
            "On the {} the base {} (one network {}, {:.2f}x with the exits)",
        ),
        (
            "on the exact-score testbed it does not serve one network but lifts its exits "
            "from 2.71x to 3.46x fewer FLOPs",
            gaussian_testbed,
            "on the exact-score testbed it {} one network but lifts its exits "
            "from {:.2f}x to {:.2f}x fewer FLOPs",
        ),
    ],
    "the cascade, probability-flow ODE": [
        (
            "the cascade, probability-flow ODE",
            lambda: KIND[load("diffusion_ode.json")["kind"]],
            "the cascade, {}",
        ),
        (SDE_64, lambda: operating_steps("diffusion_ode.json"), "EM's strong error with {} steps"),
        (
            "1.96x fewer FLOPs and 1.06x less wall-clock with stratified draws; "
            "1.00x with random draws",
            lambda: best_speedups("diffusion_ode.json"),
            "{:.2f}x fewer FLOPs and {:.2f}x less wall-clock with {} draws; "
            "{:.2f}x with random draws",
        ),
    ],
    "the cascade's three lower exits": [
        (
            "the cascade's three lower exits as the ladder, its top exit as the truth",
            below_top_exits,
            "the cascade's {} lower exits as the ladder, its top exit as the truth",
        ),
        (
            SDE_64,
            lambda: operating_steps("diffusion_below_top.json"),
            "EM's strong error with {} steps",
        ),
        (
            "2.87x fewer FLOPs and 1.55x less wall-clock with stratified draws; "
            "1.00x with random draws",
            lambda: best_speedups("diffusion_below_top.json"),
            "{:.2f}x fewer FLOPs and {:.2f}x less wall-clock with {} draws; "
            "{:.2f}x with random draws",
        ),
    ],
    "four MNIST UNets, reverse SDE": [
        (
            "four MNIST UNets, reverse SDE",
            lambda: (unets("diffusion_unets.json"), KIND[load("diffusion_unets.json")["kind"]]),
            "{} MNIST UNets, {}",
        ),
        (
            SDE_64,
            lambda: operating_steps("diffusion_unets.json"),
            "EM's strong error with {} steps",
        ),
        (
            "1.44x fewer FLOPs with stratified draws but 0.75x in wall-clock",
            lambda: best_speedups("diffusion_unets.json")[:3],
            "{0:.2f}x fewer FLOPs with {2} draws but {1:.2f}x in wall-clock",
        ),
        (
            "FD on 2,048 samples 359.8 ± 17.3 against EM's 354.8 ± 9.2",
            lambda: operating_fd("diffusion_quality_unets_operating.json"),
            "FD on {:,} samples {:.1f} ± {:.1f} against EM's {:.1f} ± {:.1f}",
        ),
        (
            "with random draws the cheapest run is EM itself",
            lambda: random_draws_cheapest("diffusion_unets.json"),
            "with random draws the cheapest run is {}",
        ),
    ],
    "the UNets of widths 2, 4, 8 as the ladder": [
        (
            "the UNets of widths 2, 4, 8 as the ladder, the width-16 UNet as the truth",
            below_top_unets,
            "the UNets of widths {} as the ladder, the width-{} UNet as the truth",
        ),
        (
            SDE_64,
            lambda: operating_steps("diffusion_unets_below_top.json"),
            "EM's strong error with {} steps",
        ),
        (
            "2.02x fewer FLOPs with stratified draws, 0.71x in wall-clock; 1.00x with random draws",
            lambda: best_speedups("diffusion_unets_below_top.json"),
            "{0:.2f}x fewer FLOPs with {2} draws, {1:.2f}x in wall-clock; "
            "{3:.2f}x with random draws",
        ),
    ],
    "the four UNets, probability-flow ODE": [
        (
            "the four UNets, probability-flow ODE",
            lambda: (
                unets("diffusion_unets_ode.json"),
                KIND[load("diffusion_unets_ode.json")["kind"]],
            ),
            "the {} UNets, {}",
        ),
        (
            SDE_64,
            lambda: operating_steps("diffusion_unets_ode.json"),
            "EM's strong error with {} steps",
        ),
        (
            "1.00x: no ML-EM configuration beats EM",
            lambda: (
                load("diffusion_unets_ode.json")["speedup_flops"],
                beats_em("diffusion_unets_ode.json"),
            ),
            "{:.2f}x: {} ML-EM configuration beats EM",
        ),
    ],
    "EDM's and a log-SNR-uniform time grid": [
        (
            "the four UNets",
            lambda: WORDS[len(load("grids.json")["kinds"]["sde"]["edm"]["calibration"]["flops"])],
            "the {} UNets",
        ),
        (
            "EM's strong error with 64 steps on that grid",
            lambda: operating_steps("grids.json"),
            "EM's strong error with {} steps on that grid",
        ),
        # The same FLOP speedup on both grids; the wall-clock of EDM's, then log-SNR's.
        (
            "1.07x fewer FLOPs, 0.63x and 0.64x in wall-clock (SDE)",
            lambda: (
                grid_speedups("edm")[0],
                grid_speedups("edm")[1],
                grid_speedups("logsnr")[1],
            ),
            "{:.2f}x fewer FLOPs, {:.2f}x and {:.2f}x in wall-clock (SDE)",
        ),
        ("1.07x fewer FLOPs", lambda: grid_speedups("logsnr")[0], "{:.2f}x fewer FLOPs"),
        (
            "equal steps give EM the smallest error",
            grids_smallest_em_error,
            "{} give EM the smallest error",
        ),
    ],
    "exact-score testbed (Gaussian mixture": [
        (
            "PCA-16 latents",
            lambda: load("ladders.json")["testbeds"][load("ladders.json")["testbed"]]["dim"],
            "PCA-{} latents",
        ),
        ("one network with 6 early exits", ladder_exits, "one network with {} early exits"),
        (
            "the best single-level EM within 10% of EM's best error",
            lambda: round(100 * (load("ladders_raw.json")["config"]["target_slack"] - 1)),
            "the best single-level EM within {}% of EM's best error",
        ),
        (
            "2.24x fewer FLOPs and 1.65x less wall-clock (batch 256) at equal quality",
            ladder_speedups,
            "{:.2f}x fewer FLOPs and {:.2f}x less wall-clock (batch {}) at {} quality",
        ),
        (
            "`predict_speedup` predicted 2.18x",
            lambda: max(ladder()["predicted_speedup_flops"].values()),
            "`predict_speedup` predicted {:.2f}x",
        ),
        (
            "Independently trained or distilled levels: no speedup",
            ladders_without_speedup,
            "Independently trained or distilled levels: {}",
        ),
    ],
    "the four UNets, sample quality (FD)": [
        (
            "the four UNets",
            lambda: WORDS[len(load("diffusion_unets.json")["widths"])],
            "the {} UNets",
        ),
        # The second and third cells, joined as `row_of` joins them.
        (
            "EM's quality with 32 steps | 1.26x fewer FLOPs, 0.43x in wall-clock",
            lambda: quality_at(32),
            "EM's quality with {} steps | {:.2f}x fewer FLOPs, {:.2f}x in wall-clock",
        ),
        (
            "every batch of 256 samples on one draw sequence",
            quality_batches,
            "every batch of {} samples on {} draw sequence",
        ),
    ],
    "(SDE demo)": [
        ("5 levels", demo_levels, "{} levels"),
        ("equal step counts", demo_equal_steps, "{} step counts"),
        (
            "1.4x and 1.3x fewer FLOPs at EM's error with 16 and 64 steps",
            demo_speedups,
            "{:.1f}x and {:.1f}x fewer FLOPs at EM's error with {} and {} steps",
        ),
    ],
}
# Numbers in a row that are not results, so that no claim covers them.
NOT_RESULTS = {"`GaussianDrift`": ["as level 1"]}

ROWS = table_rows()
NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")


def row_of(key: str) -> str:
    (row,) = [cells for cells in ROWS if key in cells[0]]
    return " | ".join(row)


def render(fmt: str, value: Any) -> str:
    values = value if isinstance(value, tuple) else (value,)
    fields = [field for _, field, _, _ in string.Formatter().parse(fmt) if field is not None]
    assert len(fields) == len(values), (fmt, values)
    return fmt.format(*values)


def test_every_results_row_has_claims_and_no_other_row_does():
    firsts = [cells[0] for cells in ROWS]
    matches = {key: [first for first in firsts if key in first] for key in CLAIMS}
    assert all(len(found) == 1 for found in matches.values()), matches
    assert sorted(found[0] for found in matches.values()) == sorted(firsts)


@pytest.mark.parametrize(
    ("key", "quoted", "value", "fmt"),
    [(key, *claim) for key, claims in CLAIMS.items() for claim in claims],
    ids=[f"{key}: {claim[0]}" for key, claims in CLAIMS.items() for claim in claims],
)
def test_readme_results_quote_the_committed_results(key, quoted, value, fmt):
    assert quoted in row_of(key)
    assert render(fmt, value()) == quoted


@pytest.mark.parametrize("key", CLAIMS)
def test_every_number_in_a_results_row_is_checked(key):
    row = row_of(key)
    covered = set()
    for quoted in [claim[0] for claim in CLAIMS[key]] + NOT_RESULTS.get(key, []):
        for match in re.finditer(re.escape(quoted), row):
            covered |= set(range(*match.span()))
    unchecked = [m.group() for m in NUMBER.finditer(row) if not set(range(*m.span())) <= covered]
    assert not unchecked, unchecked
