"""Scaling out: ML-EM samples per second against the number of devices.

1. CPU: the batch sharded (`mlem_jax.shard_batch`) over 1, 2 and 4 forced host devices
   (`XLA_FLAGS=--xla_force_host_platform_device_count=n`, one subprocess each, set
   before JAX starts), the shipped UNets, ML-EM at a fixed batch and step count.
   Samples per second are medians of timed calls after one warm-up call (compilation
   excluded), printed as ratios to one device. The forced devices share the machine's
   cores, so this measures the partitioning's overhead, not a speedup from more silicon.
2. GPU, when one is present: throughput at batch 256 and 1024 over every GPU. Without a
   GPU this part says so and records no numbers.

Run: python bench/bench_scaling.py [--batch 16] [--steps 32] [--repeats 3]
         [--json bench/results/scaling.json]
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path


DEVICE_COUNTS = (1, 2, 4)
GPU_BATCHES = (256, 1024)


def worker(batch: int, steps: int, repeats: int, top_evaluations: float) -> dict:
    """Time ML-EM on this process's devices (JAX is imported here, after XLA_FLAGS)."""
    import time

    import jax
    import numpy as np

    import mlem_jax
    from mlem_jax.diffusion.levels import CHECKPOINTS, load_levels
    from mlem_jax.diffusion.sample import initial_noise, sample, score_levels

    models, manifests = load_levels()
    levels = score_levels(models, "sde")
    calibration = json.loads((CHECKPOINTS / "calibration.json").read_text())["sde"]
    p = tuple(
        float(x)
        for x in mlem_jax.optimal_probabilities(
            calibration["flops"],
            calibration["variances"],
            top_level_evaluations=top_evaluations,
            num_steps=steps,
        )
    )
    mesh = mlem_jax.batch_mesh()
    x1 = mlem_jax.shard_batch(
        initial_noise(jax.random.key(0), batch, tuple(manifests[-1]["image_shape"])), mesh
    )

    def run(x):
        solution = sample(
            "mlem",
            levels,
            x,
            steps,
            key=jax.random.key(1),
            brownian=jax.random.key(2),
            probabilities=p,
        )
        return solution.ys, solution.evaluations

    start = time.perf_counter()
    compiled = jax.jit(run).lower(x1).compile()
    compile_seconds = time.perf_counter() - start
    ys, evaluations = jax.block_until_ready(compiled(x1))  # warm-up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x1))
        seconds.append(time.perf_counter() - start)
    median = float(np.median(seconds))
    return {
        "devices": jax.device_count(),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
        "batch": batch,
        "steps": steps,
        "probabilities": p,
        "evaluations": np.asarray(evaluations).tolist(),
        "output_spec": [None if a is None else str(a) for a in ys.sharding.spec],
        "seconds": seconds,
        "median_seconds": median,
        "samples_per_second": batch / median,
        "compile_seconds": compile_seconds,
    }


def _spawn(arguments: list[str], env: dict, timeout: float) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode:
        raise RuntimeError(f"worker {arguments} failed:\n{done.stderr[-2000:]}")
    line = next(ln for ln in done.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT") :])


def _gpu_present(timeout: float) -> bool:
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
    probe = "import jax; print('PLATFORM', jax.devices()[0].platform)"
    try:
        done = subprocess.run(
            [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return False
    return "PLATFORM gpu" in done.stdout


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16, help="CPU batch (multiple of 4)")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top-evaluations", type=float, default=8.0)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per worker")
    parser.add_argument("--json", default=str(Path(__file__).parent / "results" / "scaling.json"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    a = parser.parse_args(argv)
    if a.worker:
        print(
            "RESULT" + json.dumps(worker(a.batch, a.steps, a.repeats, a.top_evaluations)),
            flush=True,
        )
        return {}
    common = [
        "--batch",
        str(a.batch),
        "--steps",
        str(a.steps),
        "--repeats",
        str(a.repeats),
        "--top-evaluations",
        str(a.top_evaluations),
    ]
    load_before, cpu = os.getloadavg()[0], []
    for count in DEVICE_COUNTS:
        env = dict(
            os.environ,
            JAX_PLATFORMS="cpu",
            XLA_FLAGS=f"--xla_force_host_platform_device_count={count}",
        )
        cpu.append(_spawn(common, env, a.timeout))
    base = cpu[0]["samples_per_second"]
    print(
        f"ML-EM, shipped UNets, batch {a.batch}, {a.steps} steps, CPU with "
        f"{os.cpu_count()} cores; devices forced with XLA_FLAGS"
    )
    print(
        f"{'devices':>8} {'samples/s':>10} {'vs 1 device':>12} {'median s':>9} "
        f"{'compile s':>10}  evaluations"
    )
    for r in cpu:
        r["ratio_vs_one_device"] = r["samples_per_second"] / base
        print(
            f"{r['devices']:>8} {r['samples_per_second']:>10.2f} "
            f"{r['ratio_vs_one_device']:>11.2f}x {r['median_seconds']:>9.2f} "
            f"{r['compile_seconds']:>10.1f}  {r['evaluations']}"
        )
    load = (load_before, os.getloadavg()[0])
    print(
        f"1-minute load average before and after: {load[0]:.1f}, {load[1]:.1f} "
        f"(other work on the machine slows every row alike only if it is steady)"
    )
    result = {"cpu": cpu, "cpu_cores": os.cpu_count(), "load_average": load, "gpu": None}
    if _gpu_present(120.0):
        env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
        gpu = [
            _spawn(
                [
                    "--batch",
                    str(b),
                    "--steps",
                    str(a.steps),
                    "--repeats",
                    str(a.repeats),
                    "--top-evaluations",
                    str(a.top_evaluations),
                ],
                env,
                a.timeout,
            )
            for b in GPU_BATCHES
        ]
        result["gpu"] = gpu
        for r in gpu:
            print(
                f"GPU ({r['device_kind']}, {r['devices']} device(s)): batch {r['batch']}: "
                f"{r['samples_per_second']:.1f} samples/s"
            )
    else:
        result["gpu_note"] = "no GPU available in this run: GPU throughput not measured"
        print(result["gpu_note"])
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {a.json}")
    return result


if __name__ == "__main__":
    main()
