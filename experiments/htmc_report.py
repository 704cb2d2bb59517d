"""Frontiers, fitted slopes and speedups of `htmc.py`'s sweeps; its figure and table."""

import pathlib

import numpy as np

import mlem_jax


def frontier(records: list[dict], cost: str = "flops") -> list[dict]:
    """The records on the lower envelope of `cost` against error, by decreasing error."""
    front = mlem_jax.pareto_frontier([r["error"] for r in records], [r[cost] for r in records])
    return [records[i] for i in front]


def fit_window(em_records: list[dict]) -> tuple[float, float]:
    """[2 e_floor, e_ceiling] from the EM sweep (see `htmc.py`): e_floor, e_ceiling are
    the errors of the top and of the cheapest level with the most steps."""
    most = max(r["num_steps"] for r in em_records)
    at_most_steps = {r["level"]: r["error"] for r in em_records if r["num_steps"] == most}
    return 2 * at_most_steps[max(at_most_steps)], at_most_steps[min(at_most_steps)]


def _slope(records: list[dict], cost: str, window) -> float | None:
    """Frontier slope over `window`, None with fewer than two frontier points in it."""
    try:
        return mlem_jax.frontier_slope(
            [r["error"] for r in records], [r[cost] for r in records], error_range=window
        )
    except ValueError:
        return None


def compare(em: list[dict], mlem: list[dict], window, cost: str) -> dict:
    """Frontier slopes over the window and over its lower and upper halves (in log
    error); speedups at the smallest error both frontiers reach and at the window's low
    end."""
    smallest = max(min(r["error"] for r in rs) for rs in (em, mlem))
    middle = float(np.sqrt(window[0] * window[1]))

    def speedup(error):
        """EM's cost over ML-EM's to reach `error`; None where ML-EM does not reach it."""
        em_cost, mlem_cost = (
            mlem_jax.cost_to_reach([r["error"] for r in rs], [r[cost] for r in rs], error)
            for rs in (em, mlem)
        )
        return None if np.isinf(mlem_cost) else em_cost / mlem_cost

    slopes = {}
    for name, part in (
        ("", window),
        ("_lower_half", (window[0], middle)),
        ("_upper_half", (middle, window[1])),
    ):
        slopes[f"em_slope{name}"] = _slope(em, cost, part)
        slopes[f"mlem_slope{name}"] = _slope(mlem, cost, part)
    return {
        **slopes,
        "min_error": smallest,
        "speedup_at_min_error": speedup(smallest),
        "speedup_at_window_low": speedup(window[0]),
    }


def _resampled(records: list[dict], chunks: np.ndarray) -> list[dict]:
    """The records with their errors recomputed on the chunks `chunks`."""
    return [
        {**r, "error": float(np.sqrt(np.mean(np.take(r["chunk_squared_errors"], chunks))))}
        for r in records
    ]


def bootstrap(em: list[dict], mlem: list[dict], *, resamples: int = 200, seed: int = 0):
    """90% intervals of the FLOP slopes and of the speedup at the window's low end, from
    resampling the chunks of paths (and level draws) with replacement; the window is
    recomputed on each resample."""
    rng = np.random.default_rng(seed)
    num_chunks = len(em[0]["chunk_squared_errors"])
    draws = []
    for _ in range(resamples):
        chunks = rng.integers(0, num_chunks, num_chunks)
        em_b, mlem_b = _resampled(em, chunks), _resampled(mlem, chunks)
        draws.append(compare(em_b, mlem_b, fit_window(em_b), "flops"))
    keys = ("em_slope", "mlem_slope", "speedup_at_window_low")
    return {
        key: np.percentile([d[key] for d in draws if d[key] is not None], [5, 95]).tolist()
        for key in keys
    }


def _fitted_line(front: list[dict], cost: str, window, slope: float):
    """The least-squares line of slope `slope` through the frontier points in `window`."""
    inside = [r for r in front if window[0] <= r["error"] <= window[1]]
    errors = np.array([r["error"] for r in inside])
    costs = np.array([r[cost] for r in inside])
    offset = np.mean(np.log(costs) - slope * np.log(1 / errors))
    span = np.geomspace(window[0], window[1], 20)
    return span, np.exp(offset + slope * np.log(1 / span))


METHODS = (("em", "EM", "tab:red"), ("mlem", "ML-EM", "tab:blue"))


def plot_frontiers(results: list[dict], path: pathlib.Path) -> None:
    """Cost against strong error, EM and ML-EM, FLOPs (top row) and seconds (bottom row),
    one column per gamma; dashed lines are the fitted slopes over the fit window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = (
        ("flops", "FLOPs per path", "flops", "_configurations", "_frontier"),
        ("seconds", "seconds per path", "wallclock", "_frontier", "_wallclock_frontier"),
    )
    fig, axes = plt.subplots(2, len(results), figsize=(4.2 * len(results), 7.2), squeeze=False)
    for column, result in enumerate(results):
        window = result["fit_window"]
        for row, (cost, label, fits, points, line) in enumerate(rows):
            ax = axes[row, column]
            for method, name, color in METHODS:
                every = result[f"{method}{points}"]
                ax.scatter(
                    [r["error"] for r in every],
                    [r[cost] for r in every],
                    s=4,
                    color=color,
                    alpha=0.25,
                )
                front = result[f"{method}{line}"]
                slope = result[fits][f"{method}_slope"]
                legend = f"{name}: slope " + ("n/a" if slope is None else f"{slope:.2f}")
                ax.plot(
                    [r["error"] for r in front],
                    [r[cost] for r in front],
                    "o-",
                    color=color,
                    ms=3,
                    label=legend,
                )
                if slope is not None:
                    ax.plot(*_fitted_line(front, cost, window, slope), "--", color="black", lw=1)
            ax.axvspan(*window, color="grey", alpha=0.1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("strong error RMS |X_T - X_T^ref|")
            ax.set_ylabel(label)
            ax.set_title(
                f"gamma = {result['gamma_nominal']} (measured {result['gamma_measured']:.2f})"
            )
            ax.legend(fontsize=8)
    fig.suptitle("Cost-error frontiers; shaded: fit window; theory EM gamma+1, ML-EM max(gamma, 2)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _number(value, pattern: str) -> str:
    return "n/a" if value is None else format(value, pattern)


def _interval(bounds) -> str:
    return "[" + ", ".join(f"{b:.2f}" for b in bounds) + "]"


def _times(speedup) -> str:
    return "not reached" if speedup is None else f"{speedup:.1f}x"


def markdown_table(report: dict) -> str:
    """The README table: one row per gamma, then the coupling/probability comparison."""
    lines = [
        "| gamma | measured gamma | EM slope [90% CI] (theory) "
        "| ML-EM slope [90% CI] (theory) | fit window "
        "| speedup at smallest common error: FLOPs, wall-clock (error) "
        "| speedup at window low end: FLOPs, wall-clock |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in report["gammas"]:
        g, flops, clock = r["gamma_nominal"], r["flops"], r["wallclock"]
        low, high = r["fit_window"]
        em_range, mlem_range = (
            _interval(r["bootstrap_90"][key]) for key in ("em_slope", "mlem_slope")
        )
        lines.append(
            f"| {g:g} | {r['gamma_measured']:.2f} | {_number(r['em_slope'], '.2f')} "
            f"{em_range} ({g + 1:g}) | {_number(r['mlem_slope'], '.2f')} {mlem_range} "
            f"({max(g, 2):g}) "
            f"| {low:.2g} - {high:.2g} "
            f"| {_times(flops['speedup_at_min_error'])}, "
            f"{_times(clock['speedup_at_min_error'])} ({r['min_error']:.2g}) "
            f"| {_times(flops['speedup_at_window_low'])}, "
            f"{_times(clock['speedup_at_window_low'])} |"
        )
    lines += [
        "",
        "FLOP slopes over the lower and upper halves of the fit window (split at its "
        "geometric middle):",
        "",
        "| gamma | EM lower half | EM upper half | ML-EM lower half | ML-EM upper half |",
        "|---|---|---|---|---|",
    ]
    for r in report["gammas"]:
        halves = [
            _number(r["flops"][f"{method}_slope_{half}_half"], ".2f")
            for method in ("em", "mlem")
            for half in ("lower", "upper")
        ]
        lines.append(f"| {r['gamma_nominal']:g} | " + " | ".join(halves) + " |")
    for r in report["gammas"]:
        if "comparison" not in r:
            continue
        lines += [
            "",
            f"ML-EM variants at gamma = {r['gamma_nominal']:g} (FLOPs; speedups against EM):",
            "",
            "| coupling | probabilities | ML-EM slope | smallest common error | speedup there "
            "| speedup at window low end |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["comparison"]:
            lines.append(
                f"| {row['coupling']} | {row['probabilities']} "
                f"| {_number(row['mlem_slope'], '.2f')} | {row['min_error']:.2g} "
                f"| {_times(row['speedup_at_min_error'])} "
                f"| {_times(row['speedup_at_window_low'])} |"
            )
    minutes = report["duration_seconds"] / 60
    lines += [
        "",
        "Slopes: least squares of log cost (FLOPs) on log(1/error) over the frontier points "
        "in the fit window [2 e_floor, e_ceiling] (EM errors of the top and of the cheapest "
        "level with the most steps); 90% intervals from resampling the chunks of paths and "
        "level draws. Wall-clock: median seconds of the jitted solve of all paths, for the "
        "configurations on each FLOP frontier. "
        f"Run time {minutes:.1f} min" + (" (quick mode)." if report["quick"] else "."),
    ]
    return "\n".join(lines) + "\n"
