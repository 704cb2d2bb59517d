"""The error that bfloat16 levels add on the diffusion experiment.

**Setup.** The shipped UNets (widths 2, 4, 8, 16) as reverse-SDE levels, each wrapped
by `mlem_jax.in_precision(level, jnp.bfloat16)`: the UNet's weights and input are
bfloat16 and it computes in bfloat16; t, the VP-SDE coefficients, the output, the state
of `solve` and the ML-EM corrections (f^l - f^(l-1)) / p_l stay float32.

**What is compared.** EM with the largest UNet and ML-EM with all four (p_l from the
shipped calibration, `optimal_probabilities` with the top level drawn about m times),
each run in float32 and in bfloat16 from the same initial noise, the same Brownian path
(`grid_brownian_path` on the reference grid) and the same level draws. Reported: the
strong error (`mlem_jax.diffusion.metrics.strong_error`, RMS over images of the
per-image distance) of each run against the reference (EM, largest UNet, float32,
`reference_steps` steps), and the strong error between the bfloat16 and the float32
run: the error bfloat16 adds. ML-EM's errors are RMS over `draw_seeds` draw sequences.
Per level: the relative RMS error of one bfloat16 evaluation, of the drift and of the
corrections f^l - f^(l-1), at points (t, X_t) of the reference run.

Writes `experiments/results/bfloat16.json` and `bfloat16_table.md` (`--quick`: a smoke
run written to `bfloat16_quick.json` / `bfloat16_quick_table.md`).
"""

import argparse
import json
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from mlem_jax import in_precision, optimal_probabilities
from mlem_jax.diffusion.brownian import grid_brownian_path
from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
from mlem_jax.diffusion.metrics import strong_error
from mlem_jax.diffusion.runner import Setting, run_setting
from mlem_jax.diffusion.sample import T_MIN, initial_noise, sample, score_levels


RESULTS = Path(__file__).parent / "results"
FULL: dict[str, Any] = dict(
    images=8,
    reference_steps=256,
    em_steps=(32, 64),
    mlem=((64, 8.0), (128, 32.0)),
    draw_seeds=2,
    probe_steps=(26, 128, 230, 250, 255),
)
QUICK: dict[str, Any] = dict(
    images=2,
    reference_steps=32,
    em_steps=(16,),
    mlem=((16, 4.0),),
    draw_seeds=1,
    probe_steps=(4, 16, 31),
)


def probabilities(
    calibration: dict, num_steps: int, top_level_evaluations: float
) -> tuple[float, ...]:
    """p_l from the shipped calibration (FLOPs costs, measured v_l)."""
    p = optimal_probabilities(
        calibration["flops"],
        calibration["variances"],
        top_level_evaluations=top_level_evaluations,
        num_steps=num_steps,
    )
    return tuple(float(x) for x in p)


def settings(config: dict, calibration: dict) -> list[Setting]:
    em = [Setting("em", n, label=f"EM N={n}") for n in config["em_steps"]]
    mlem = [
        Setting("mlem", n, probabilities(calibration, n, m), label=f"ML-EM N={n} m={m:g}")
        for n, m in config["mlem"]
    ]
    return em + mlem


def grid_times(steps, num_steps: int) -> np.ndarray:
    """t_n = 1 + n (t_min - 1) / N, as `solve` places them."""
    return 1.0 + np.asarray(steps, dtype=np.float64) * ((T_MIN - 1.0) / num_steps)


def _relative(a, b) -> float:
    return float(jnp.sqrt(jnp.mean(jnp.square(a - b)) / jnp.mean(jnp.square(b))))


def level_errors(levels, low, ts, states) -> list[dict]:
    """Relative RMS error of each bfloat16 level and correction at each probe (t, X_t)."""
    evaluate = eqx.filter_jit(lambda fs, t, x: [f(t, x, None) for f in fs])
    rows = []
    for t, x in zip(ts, states):
        t = jnp.asarray(t, jnp.float32)
        exact, rounded = evaluate(levels, t, x), evaluate(low, t, x)
        rows.append(
            {
                "t": float(t),
                "levels": [_relative(r, e) for r, e in zip(rounded, exact)],
                "corrections": [
                    _relative(rounded[l] - rounded[l - 1], exact[l] - exact[l - 1])
                    for l in range(1, len(levels))
                ],
                "correction_norm_over_drift": [
                    float(jnp.linalg.norm(exact[l] - exact[l - 1]) / jnp.linalg.norm(exact[l]))
                    for l in range(1, len(levels))
                ],
            }
        )
    return rows


def compare(
    setting: Setting,
    levels,
    low,
    x1,
    path,
    reference,
    flops,
    draw_seeds: int,
    caches: tuple[dict, dict],
) -> dict:
    """The setting in float32 and bfloat16: errors against the reference and between."""
    seeds = draw_seeds if setting.method == "mlem" else 1
    runs = []
    for s in range(seeds):
        key = jax.random.key(100 + s)
        runs.append(
            (
                run_setting(setting, levels, x1, path, key, flops, caches[0]),
                run_setting(setting, low, x1, path, key, flops, caches[1]),
            )
        )

    def rms(values):
        return float(np.sqrt(np.mean(np.square(values))))

    return {
        "label": setting.label,
        "method": setting.method,
        "steps": setting.num_steps,
        "probabilities": setting.probabilities,
        "error_float32": rms([strong_error(a.samples, reference) for a, _ in runs]),
        "error_bfloat16": rms([strong_error(b.samples, reference) for _, b in runs]),
        "bfloat16_vs_float32": rms([strong_error(b.samples, a.samples) for a, b in runs]),
        "seconds_float32": float(np.mean([a.seconds for a, _ in runs])) / len(x1),
        "seconds_bfloat16": float(np.mean([b.seconds for _, b in runs])) / len(x1),
        "evaluations": [a.evaluations.tolist() for a, _ in runs],
        "same_draws": all(a.evaluations.tolist() == b.evaluations.tolist() for a, b in runs),
    }


def table(result: dict) -> str:
    c = result["config"]
    rows = [
        "| method | strong error vs reference, float32 | same, bfloat16 levels | "
        "bfloat16 vs float32 (error added) | added / method error | ms / image float32 | "
        "ms / image bfloat16 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["runs"]:
        rows.append(
            f"| {r['label']} | {r['error_float32']:.3f} | {r['error_bfloat16']:.3f} | "
            f"{r['bfloat16_vs_float32']:.3f} | "
            f"{r['bfloat16_vs_float32'] / r['error_float32']:.1%} | "
            f"{r['seconds_float32'] * 1e3:.0f} | {r['seconds_bfloat16'] * 1e3:.0f} |"
        )
    widths = result["widths"]
    rows += [
        "",
        "| t | relative error of one bfloat16 evaluation, widths "
        f"{', '.join(map(str, widths))} | relative error of the corrections "
        f"{', '.join(f'{b}-{a}' for a, b in zip(widths, widths[1:]))} | "
        "correction / drift (float32) |",
        "|---|---|---|---|",
    ]
    for p in result["level_errors"]:
        rows.append(
            f"| {p['t']:.3f} | {', '.join(f'{e:.4f}' for e in p['levels'])} | "
            f"{', '.join(f'{e:.3f}' for e in p['corrections'])} | "
            f"{', '.join(f'{e:.3f}' for e in p['correction_norm_over_drift'])} |"
        )
    return (
        "\n".join(
            rows
            + [
                "",
                f"{c['images']} images, reference EM with the largest UNet, float32, "
                f"{c['reference_steps']} steps, same initial noise and Brownian path; ML-EM errors "
                f"RMS over {c['draw_seeds']} draw sequences (the float32 and bfloat16 runs share "
                f"them). bfloat16's unit roundoff is 2^-8 = 0.0039. Seconds on "
                f"{result['device']}, compilation excluded, one run each. "
                f"Written by `experiments/bfloat16.py` in {result['seconds']:.0f} s.",
            ]
        )
        + "\n"
    )


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    parser.add_argument("--checkpoints", default=str(CHECKPOINTS))
    parser.add_argument("--out", default=str(RESULTS))
    a = parser.parse_args(argv)
    config, out = (QUICK if a.quick else FULL), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    models, manifests = load_levels(a.checkpoints)
    levels = score_levels(models, "sde")
    low = [in_precision(f, jnp.bfloat16) for f in levels]
    calibration = json.loads((Path(a.checkpoints) / "calibration.json").read_text())["sde"]
    flops = calibration["flops"]
    shape = tuple(manifests[-1]["image_shape"])

    x1 = initial_noise(jax.random.key(2), config["images"], shape)
    path = grid_brownian_path(jax.random.key(3), x1.shape, config["reference_steps"], T_MIN)
    probes = sorted(set(config["probe_steps"]) | {config["reference_steps"]})
    times = grid_times(probes, config["reference_steps"])
    reference = sample("em", levels, x1, config["reference_steps"], brownian=path, saveat=times)
    final = np.asarray(reference.ys[-1])
    errors = level_errors(levels, low, times[:-1], reference.ys[:-1])
    for p in errors:
        print(
            f"t={p['t']:.3f} level errors {np.round(p['levels'], 4).tolist()} "
            f"correction errors {np.round(p['corrections'], 3).tolist()}",
            flush=True,
        )

    caches: tuple[dict, dict] = ({}, {})
    runs = []
    for setting in settings(config, calibration):
        runs.append(
            compare(setting, levels, low, x1, path, final, flops, config["draw_seeds"], caches)
        )
        r = runs[-1]
        print(
            f"{r['label']:<20} error f32 {r['error_float32']:.4f} bf16 "
            f"{r['error_bfloat16']:.4f} bf16-vs-f32 {r['bfloat16_vs_float32']:.4f}",
            flush=True,
        )
    result = {
        "config": config,
        "widths": [m.width for m in models],
        "runs": runs,
        "level_errors": errors,
        "device": f"{jax.devices()[0].platform} "
        f"({jax.devices()[0].device_kind}), {jax.device_count()} device(s)",
        "seconds": time.perf_counter() - start,
        "quick": a.quick,
    }
    name = "bfloat16_quick" if a.quick else "bfloat16"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}_table.md").write_text(table(result))
    print(table(result))
    return result


if __name__ == "__main__":
    main()
