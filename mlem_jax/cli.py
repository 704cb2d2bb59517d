"""The `mlem-jax` command: train, distill, calibrate, sample, demo, bench (diffusion), sde-demo and
distributed-sample (the multi-process launcher)."""

import argparse
import sys
from pathlib import Path


# `sample`'s default steps per method: ML-EM's defaults (128 steps, 16 top-level
# evaluations, stratified draws) are its operating point at EM's 64-step error on the
# shipped cascade (experiments/diffusion.py).
SAMPLE_STEPS = {"em": 64, "tstitch": 64, "mlem": 128}


def _positive(text: str) -> int:
    value = int(text) if text.lstrip("-").isdigit() else None
    if value is None or value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _widths(text: str) -> tuple[int, ...]:
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() and int(part) > 0 for part in parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive ints, got {text!r}")
    return tuple(int(part) for part in parts)


def _natural(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return int(text)


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _probabilities(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers in (0, 1], got {text!r}"
        )
    return values


def _sde_demo(a: argparse.Namespace) -> None:
    from ._sde_demo import run

    run(num_paths=a.paths, seed=a.seed)


def _train(a: argparse.Namespace) -> None:
    from .diffusion.levels import WIDTHS, train_cascade, train_levels, user_directory
    from .diffusion.train import TrainConfig

    config = TrainConfig(
        steps=a.steps, batch_size=a.batch_size, learning_rate=a.learning_rate, seed=a.seed
    )
    directory = Path(a.checkpoints) if a.checkpoints else user_directory() / "checkpoints"
    widths = a.widths or WIDTHS
    run = train_cascade if a.family == "cascade" else train_levels
    state = run(directory, dataset=a.dataset, widths=widths, config=config, progress=not a.quiet)
    print(
        f"trained {'a cascade of' if a.family == 'cascade' else 'UNets of'} widths {widths} "
        f"for {int(state.step)} steps in {float(state.seconds):.0f} s; checkpoints in "
        f"{directory}"
    )


def _distill(a: argparse.Namespace) -> None:
    from .diffusion.levels import distill_levels, output_directory
    from .diffusion.train import TrainConfig

    config = TrainConfig(
        steps=a.steps,
        batch_size=a.batch_size,
        learning_rate=a.learning_rate,
        warmup=min(50, a.steps),
        seed=a.seed,
    )
    out_dir = Path(a.out_dir) if a.out_dir else output_directory(a.checkpoints)
    state = distill_levels(a.checkpoints, out_dir=out_dir, config=config, progress=not a.quiet)
    print(
        f"distilled {len(state.params)} levels from the largest for {int(state.step)} "
        f"steps in {float(state.seconds):.0f} s; checkpoints in {out_dir}"
    )


def _calibrate(a: argparse.Namespace) -> None:
    import jax

    from .diffusion.calibrate import calibrate, write_calibration
    from .diffusion.levels import (
        in_package,
        ladder_key,
        level_names,
        load_sampling_levels,
        user_directory,
        with_base,
    )

    key = ladder_key(a.kind, a.base, a.top_only)
    networks, manifests = load_sampling_levels(a.checkpoints, a.kind)
    levels = with_base(networks, **_base(a)) if a.base != "none" else networks
    result = calibrate(
        levels,
        jax.random.key(a.seed),
        manifests[-1]["image_shape"],
        count=a.count,
        num_steps=a.steps,
        grid=_grid(a),
    )
    out = (
        Path(a.out)
        if a.out
        else (
            user_directory() / "calibration.json"
            if in_package(a.checkpoints)
            else Path(a.checkpoints) / "calibration.json"
        )
    )
    write_calibration(out, result, key)
    print(f"{'level':>8} {'MFLOP/image':>12} {'ms/image':>9} {'eps_l':>9} {'v_l':>10}")
    v = [float("nan")] + result["variances"]
    rows = zip(level_names(levels), result["flops"], result["seconds"], result["errors"], v)
    for name, f, s, e, var in rows:
        print(f"{name:>8} {f / 1e6:>12.2f} {s * 1e3:>9.3f} {e:>9.3f} {var:>10.3f}")
    use = (
        f"; use it with --calibration {out}"
        if out.resolve() != (Path(a.checkpoints) / "calibration.json").resolve()
        else ""
    )
    # gamma is None with fewer than 3 levels.
    print(
        f"gamma = {result['gamma'] or float('nan'):.2f} (FLOPs), "
        f"{result['gamma_seconds'] or float('nan'):.2f} (seconds); written to {out} "
        f"as {key!r}{use}"
    )


def _mlem_probabilities(a: argparse.Namespace, calibration: dict):
    """ML-EM's p_l from the calibration: constant, or p_l(t) with --schedule."""
    from .diffusion.calibrate import probabilities_for, schedule_for

    if a.schedule:
        schedule = schedule_for(calibration, a.steps, a.top_evaluations, draws=a.draws)
        return tuple(map(tuple, schedule.tolist()))
    return probabilities_for(calibration, a.steps, a.top_evaluations, a.draws)


def _sample(a: argparse.Namespace) -> None:
    import jax

    from .diffusion.demo import prepare
    from .diffusion.images import save_samples
    from .diffusion.runner import Setting, run_setting
    from .diffusion.sample import initial_noise, stitch_switch

    if a.steps is None:
        a.steps = SAMPLE_STEPS[a.method]
    levels, image_shape, calibration = prepare(
        a.checkpoints, a.kind, a.seed, a.calibration, **_base(a)
    )
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(a.seed), 3)
    probabilities = _mlem_probabilities(a, calibration) if a.method == "mlem" else None
    switch = stitch_switch(a.stitch_fraction) if a.method == "tstitch" else None
    if a.count % a.groups:
        raise ValueError(f"--groups must divide --count {a.count}, got {a.groups}")
    setting = Setting(
        a.method, a.steps, probabilities, switch, draws=a.draws, groups=a.groups, grid=_grid(a)
    )
    x1 = initial_noise(noise_key, a.count, image_shape)
    outcome = run_setting(setting, levels, x1, path_key, draw_key, calibration["flops"])
    path = save_samples(a.out, outcome.samples)
    print(
        f"{a.count} samples by {a.method} ({a.kind}, {a.steps} steps, {_grid(a)} grid): "
        f"{outcome.flops / 1e9:.3f} GFLOP/image, {outcome.seconds:.2f} s; wrote {path}"
    )


def _demo(a: argparse.Namespace) -> None:
    from .diffusion.demo import run_demo
    from .diffusion.testbed_demo import run_testbed_demo

    run_demo(
        a.checkpoints,
        count=a.count,
        seed=a.seed,
        out_dir=a.out_dir,
        quick=a.quick,
        calibration=a.calibration,
        grid=_grid(a),
    )
    if a.quick:
        run_testbed_demo(a.out_dir, seed=a.seed, count=32, reference_steps=256)
    else:
        run_testbed_demo(a.out_dir, seed=a.seed)


def _bench(a: argparse.Namespace) -> None:
    from .diffusion.demo import run_bench

    run_bench(
        a.checkpoints,
        count=a.count,
        num_steps=a.steps,
        repeats=a.repeats,
        seed=a.seed,
        calibration=a.calibration,
        **_base(a),
        schedule=a.schedule,
        draws=a.draws,
    )


def _distributed_sample(a: argparse.Namespace) -> None:
    import time

    from . import distributed

    distributed.check_coordinator(a.coordinator, "--coordinator")
    if a.process_id >= a.num_processes:
        raise ValueError(
            f"--process-id must be in [0, {a.num_processes}) for "
            f"--num-processes {a.num_processes}, got {a.process_id}"
        )
    devices = a.num_processes * a.local_devices
    if a.count % devices:
        raise ValueError(
            f"--count must be a multiple of the {devices} devices "
            f"(--num-processes x --local-devices), got {a.count}"
        )
    if Path(a.out).suffix != ".npz":
        raise ValueError(f"--out must end in .npz, got {a.out!r}")
    distributed.initialize(
        a.coordinator,
        a.num_processes,
        a.process_id,
        local_device_count=a.local_devices,
        timeout=a.timeout,
    )
    import jax
    import numpy as np

    from .diffusion.calibrate import probabilities_for
    from .diffusion.demo import prepare
    from .diffusion.levels import load_sampling_levels
    from .diffusion.sample import stitch_switch

    probabilities = a.probabilities
    if a.method == "mlem" and probabilities is None:
        levels, image_shape, calibration = prepare(a.checkpoints, a.kind, a.seed, a.calibration)
        probabilities = probabilities_for(calibration, a.steps, a.top_evaluations, a.draws)
    else:
        levels, manifests = load_sampling_levels(a.checkpoints, a.kind)
        image_shape = manifests[-1]["image_shape"]
    if a.method == "mlem" and len(probabilities) != len(levels):
        raise ValueError(
            f"--probabilities must hold {len(levels)} values, one per level, "
            f"got {len(probabilities)}"
        )
    start = time.perf_counter()
    samples, evaluations = distributed.sample_sharded(
        a.method,
        levels,
        jax.random.key(a.seed),
        a.count,
        image_shape,
        a.steps,
        probabilities=probabilities,
        draws=a.draws,
        switch=stitch_switch(a.stitch_fraction) if a.method == "tstitch" else None,
    )
    seconds = time.perf_counter() - start
    print(
        f"process {a.process_id} of {a.num_processes}: {a.count} samples by {a.method} "
        f"({a.steps} steps) on {jax.device_count()} devices, {jax.local_device_count()} "
        f"here, {seconds:.2f} s with compilation; evaluations {evaluations.tolist()}",
        flush=True,
    )
    if a.process_id == 0:
        np.savez(a.out, samples=samples, evaluations=evaluations)
        print(f"wrote {a.out}", flush=True)
    distributed.shutdown()


# Where the commands write what they make unless told where (see
# `mlem_jax.diffusion.levels.user_directory`); the parser is built without the extra.
USER_CACHE = "$XDG_CACHE_HOME/mlem-jax (default ~/.cache/mlem-jax)"


# `mlem_jax.diffusion.GRIDS`, spelled out so that `--help` works without the extra.
GRIDS = ("uniform", "edm", "logsnr")


def _grid_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--grid",
        choices=GRIDS,
        default=None,
        help="time grid from t = 1 to 1e-3: equal steps, EDM's rho = 7 schedule or uniform "
        "in log-SNR (default: mlem_jax.diffusion.DEFAULT_GRID)",
    )


def _base_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        choices=("none", "gaussian"),
        default="none",
        help="a level below the networks: the data's Gaussian score (shipped statistics of "
        "the training split), which costs next to nothing (default: none)",
    )
    parser.add_argument(
        "--top-only",
        action="store_true",
        help="with --base gaussian: the ladder [Gaussian score, top network], ML-EM on one network",
    )
    parser.add_argument(
        "--statistics",
        help="with --base gaussian: the data's statistics, an .npz written by "
        "mlem_jax.diffusion.save_gaussian (default: the shipped ones of MNIST)",
    )


def _base(a: argparse.Namespace) -> dict:
    """The ladder options of `prepare` and `with_base`."""
    from .diffusion.levels import GAUSSIAN_STATISTICS

    statistics = a.statistics or GAUSSIAN_STATISTICS
    return {"base": a.base, "top_only": a.top_only, "statistics": statistics}


def _draw_options(parser: argparse.ArgumentParser, default: str = "random") -> None:
    parser.add_argument(
        "--draws",
        choices=("random", "stratified"),
        default=default,
        help=f"ML-EM: independent level draws at every step, or spread evenly (default: {default})",
    )
    parser.add_argument(
        "--schedule",
        action="store_true",
        help="ML-EM: p_l(t) from the calibration's v_l(t) instead of constant p_l (what the "
        "Gaussian base needs: its correction is about 17x larger near t = 0 than at high noise)",
    )


def _grid(a: argparse.Namespace) -> str:
    from .diffusion.grids import DEFAULT_GRID

    return DEFAULT_GRID if a.grid is None else a.grid


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlem-jax", description="Multilevel Euler-Maruyama (ML-EM) in JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run, *, checkpoints: bool = True, calibration: bool = False):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
        if checkpoints:
            sub.add_argument(
                "--checkpoints",
                help="folder of the checkpoints: a CascadeUNet (cascade.eqx) or UNets "
                "(unet_w*.eqx) (default: the shipped cascade, which is only read; "
                "`distill`: the shipped UNets)",
            )
        if calibration:
            sub.add_argument(
                "--calibration",
                help="calibration JSON written by `mlem-jax calibrate` "
                "(default: <checkpoints>/calibration.json)",
            )
        sub.set_defaults(run=run)
        return sub

    home = USER_CACHE
    train = command(
        "train",
        "train the UNet levels on MNIST (resumes if interrupted)",
        _train,
        checkpoints=False,
    )
    train.add_argument(
        "--checkpoints", help=f"folder to write the checkpoints to (default: {home}/checkpoints)"
    )
    train.add_argument(
        "--family",
        choices=("cascade", "unets"),
        default="cascade",
        help="one CascadeUNet whose exits are the levels (default), or one UNet per level",
    )
    train.add_argument(
        "--widths",
        type=_widths,
        help="e.g. 2,4,8,16: the stages or the UNets (default: those of the shipped ones)",
    )
    train.add_argument("--steps", type=_positive, default=2000, help="optimiser steps")
    train.add_argument("--batch-size", type=_positive, default=64)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    distill = command(
        "distill",
        "distil the smaller UNet levels from the largest, starting "
        "from their checkpoints (resumes if interrupted)",
        _distill,
    )
    distill.add_argument(
        "--out-dir",
        help="folder to write the distilled levels to (default: "
        f"--checkpoints, or {home}/checkpoints when those are the shipped "
        "ones)",
    )
    distill.add_argument("--steps", type=_positive, default=1500, help="optimiser steps")
    distill.add_argument("--batch-size", type=_positive, default=64)
    distill.add_argument("--learning-rate", type=float, default=1e-3)
    distill.add_argument("--quiet", action="store_true", help="no progress bar")

    cal = command("calibrate", "measure eps_l, v_l, c_l and gamma along sampling runs", _calibrate)
    cal.add_argument("--kind", choices=("sde", "ode"), default="sde")
    cal.add_argument("--count", type=_positive, default=16, help="images per run")
    cal.add_argument("--steps", type=_positive, default=64, help="EM steps of the run")
    _grid_option(cal)
    _base_options(cal)
    cal.add_argument(
        "--out",
        help="JSON file (default: <checkpoints>/calibration.json, or "
        f"{home}/calibration.json for the shipped checkpoints)",
    )

    smp = command(
        "sample",
        "draw samples by EM, ML-EM or T-Stitch; write PNG or NPZ",
        _sample,
        calibration=True,
    )
    smp.add_argument("--method", choices=("em", "mlem", "tstitch"), default="mlem")
    smp.add_argument(
        "--kind", choices=("sde", "ode"), default="sde", help="reverse SDE or probability-flow ODE"
    )
    smp.add_argument(
        "--steps",
        type=_positive,
        help="default: 128 for ML-EM, 64 for EM and T-Stitch (ML-EM's defaults, 128 steps, "
        "16 top-level evaluations and stratified draws, reach EM's 64-step error on the "
        "shipped cascade at 2.46x fewer FLOPs)",
    )
    _grid_option(smp)
    smp.add_argument("--count", type=_positive, default=16, help="number of samples")
    smp.add_argument(
        "--top-evaluations",
        type=float,
        default=16.0,
        help="ML-EM: expected evaluations of the top level per run (default: 16)",
    )
    _draw_options(smp, default="stratified")
    _base_options(smp)
    smp.add_argument(
        "--groups",
        type=_positive,
        default=1,
        help="ML-EM: groups of the samples with level draws of their own (a "
        "divisor of --count); with 1 (default) every sample carries the "
        "same randomisation error, which statistics over the samples do "
        "not average out",
    )
    smp.add_argument(
        "--stitch-fraction",
        type=_fraction,
        default=0.5,
        help="T-Stitch: share of the time span on the small UNet",
    )
    smp.add_argument("--out", default="samples.png", help="output .png (grid) or .npz")

    demo = command(
        "demo",
        "EM vs ML-EM vs T-Stitch: cost, strong error, samples side by "
        "side and the cost-error frontier (PNGs)",
        _demo,
        calibration=True,
    )
    demo.add_argument("--count", type=_positive, default=64, help="images per method")
    demo.add_argument("--out-dir", default=".", help="folder of the PNGs")
    _grid_option(demo)
    demo.add_argument(
        "--quick",
        action="store_true",
        help="fewer and shorter runs (4 to 16 steps), for a smoke test",
    )

    bench = command(
        "bench", "time each level and EM vs ML-EM sampling side by side", _bench, calibration=True
    )
    bench.add_argument("--count", type=_positive, default=16, help="images per batch")
    bench.add_argument("--steps", type=_positive, default=64)
    bench.add_argument("--repeats", type=_positive, default=3)
    _draw_options(bench)
    _base_options(bench)

    sde = command(
        "sde-demo",
        "solve a small SDE with EM and ML-EM; print cost and error",
        _sde_demo,
        checkpoints=False,
    )
    sde.add_argument("--paths", type=_positive, default=256, help="number of sample paths")

    dist = command(
        "distributed-sample",
        "sample one batch over several processes (hosts): "
        "start once per process; process 0 writes the gathered samples",
        _distributed_sample,
        calibration=True,
    )
    dist.add_argument(
        "--coordinator", required=True, help="host:port of process 0, the same for every process"
    )
    dist.add_argument("--num-processes", type=_positive, required=True)
    dist.add_argument("--process-id", type=_natural, required=True, help="0 .. N-1")
    dist.add_argument(
        "--local-devices", type=_positive, default=1, help="CPU devices per process (default 1)"
    )
    dist.add_argument(
        "--timeout", type=_positive, default=300, help="seconds to wait for the other processes"
    )
    dist.add_argument("--method", choices=("em", "mlem", "tstitch"), default="mlem")
    dist.add_argument("--kind", choices=("sde", "ode"), default="sde")
    dist.add_argument("--steps", type=_positive, default=64)
    dist.add_argument(
        "--count",
        type=_positive,
        default=16,
        help="global number of samples, a multiple of the devices",
    )
    dist.add_argument(
        "--top-evaluations",
        type=float,
        default=2.0,
        help="ML-EM: expected evaluations of the top level per run",
    )
    dist.add_argument(
        "--probabilities",
        type=_probabilities,
        help="ML-EM: p_1..p_K, one per checkpoint, e.g. 1,0.3 (default: from "
        "<checkpoints>/calibration.json, --top-evaluations and --draws)",
    )
    dist.add_argument(
        "--draws",
        choices=("random", "stratified"),
        default="random",
        help="ML-EM: independent level draws at every step, or spread evenly",
    )
    dist.add_argument(
        "--stitch-fraction",
        type=_fraction,
        default=0.5,
        help="T-Stitch: share of the time span on the small UNet",
    )
    dist.add_argument("--out", default="samples.npz", help="output .npz (process 0)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors in the arguments or the files, and a missing extra, are
    one line on stderr."""
    arguments = _parser().parse_args(argv)
    if (
        getattr(arguments, "out", None)
        and arguments.command == "sample"
        and Path(arguments.out).suffix not in (".png", ".npz")
    ):
        print(
            f"mlem-jax: error: --out must end in .png or .npz, got {arguments.out!r}",
            file=sys.stderr,
        )
        return 2
    try:
        # The commands that read checkpoints default to the shipped ones: the cascade, or
        # the UNets for `distill` (`train` writes its own to the user cache instead).
        if (
            arguments.command != "train"
            and "checkpoints" in arguments
            and arguments.checkpoints is None
        ):
            from .diffusion.levels import CASCADE_CHECKPOINTS, CHECKPOINTS

            shipped = CHECKPOINTS if arguments.command == "distill" else CASCADE_CHECKPOINTS
            arguments.checkpoints = str(shipped)
        if getattr(arguments, "top_only", False) and arguments.base == "none":
            raise ValueError("--top-only needs --base gaussian (the top network alone is EM)")
        arguments.run(arguments)
    except (ValueError, OSError, ModuleNotFoundError) as error:
        print(f"mlem-jax: error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:  # the samplers' throw=True: a non-finite state
        from ._throw import throw_message

        message = throw_message(error)
        if message is None:
            raise
        print(f"mlem-jax: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
