"""The `mlem-jax` command: train, calibrate, sample, demo, bench (diffusion) and sde-demo."""

import argparse
import sys
from pathlib import Path


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


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def _sde_demo(a: argparse.Namespace) -> None:
    from ._sde_demo import run

    run(num_paths=a.paths, seed=a.seed)


def _train(a: argparse.Namespace) -> None:
    from .diffusion.levels import train_levels
    from .diffusion.train import TrainConfig

    config = TrainConfig(steps=a.steps, batch_size=a.batch_size,
                         learning_rate=a.learning_rate, seed=a.seed)
    state = train_levels(a.checkpoints, dataset=a.dataset, widths=a.widths, config=config,
                         progress=not a.quiet)
    print(f"trained widths {a.widths} for {int(state.step)} steps in "
          f"{float(state.seconds):.0f} s; checkpoints in {a.checkpoints}")


def _calibrate(a: argparse.Namespace) -> None:
    import jax

    from .diffusion.calibrate import calibrate, write_calibration
    from .diffusion.levels import load_levels
    from .diffusion.sample import score_levels

    models, manifests = load_levels(a.checkpoints)
    result = calibrate(score_levels(models, a.kind), jax.random.key(a.seed),
                       manifests[-1]["image_shape"], count=a.count, num_steps=a.steps)
    out = Path(a.out) if a.out else Path(a.checkpoints) / "calibration.json"
    write_calibration(out, result)
    print(f"{'width':>6} {'MFLOP/image':>12} {'ms/image':>9} {'eps_l':>9} {'v_l':>10}")
    v = [float("nan")] + result["variances"]
    for m, f, s, e, var in zip(models, result["flops"], result["seconds"], result["errors"], v):
        print(f"{m.width:>6} {f / 1e6:>12.2f} {s * 1e3:>9.3f} {e:>9.3f} {var:>10.3f}")
    print(f"gamma = {result['gamma']:.2f} (FLOPs), {result['gamma_seconds']:.2f} (seconds); "
          f"written to {out}")


def _sample(a: argparse.Namespace) -> None:
    import jax

    from .diffusion.calibrate import probabilities_for
    from .diffusion.demo import prepare
    from .diffusion.images import save_samples
    from .diffusion.runner import Setting, run_setting
    from .diffusion.sample import initial_noise, stitch_switch

    levels, image_shape, calibration = prepare(a.checkpoints, a.kind, a.seed)
    noise_key, path_key, draw_key = jax.random.split(jax.random.key(a.seed), 3)
    setting = Setting(
        a.method, a.steps,
        probabilities_for(calibration, a.steps, a.top_evaluations) if a.method == "mlem"
        else None,
        stitch_switch(a.stitch_fraction) if a.method == "tstitch" else None,
    )
    x1 = initial_noise(noise_key, a.count, image_shape)
    outcome = run_setting(setting, levels, x1, path_key, draw_key, calibration["flops"])
    path = save_samples(a.out, outcome.samples)
    print(f"{a.count} samples by {a.method} ({a.kind}, {a.steps} steps): "
          f"{outcome.flops / 1e9:.3f} GFLOP/image, {outcome.seconds:.2f} s; wrote {path}")


def _demo(a: argparse.Namespace) -> None:
    from .diffusion.demo import run_demo

    run_demo(a.checkpoints, count=a.count, seed=a.seed, out_dir=a.out_dir)


def _bench(a: argparse.Namespace) -> None:
    from .diffusion.demo import run_bench

    run_bench(a.checkpoints, count=a.count, num_steps=a.steps, repeats=a.repeats, seed=a.seed)


def _parser() -> argparse.ArgumentParser:
    from .diffusion.levels import CHECKPOINTS, WIDTHS

    parser = argparse.ArgumentParser(
        prog="mlem-jax", description="Multilevel Euler-Maruyama (ML-EM) in JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str, run, *, checkpoints: bool = True):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--seed", type=int, default=0, help="PRNG seed (default 0)")
        if checkpoints:
            sub.add_argument("--checkpoints", default=str(CHECKPOINTS),
                             help="folder of the UNet checkpoints (default: the shipped ones)")
        sub.set_defaults(run=run)
        return sub

    train = command("train", "train the UNet levels on MNIST (resumes if interrupted)", _train)
    train.add_argument("--widths", type=_widths, default=WIDTHS, help="e.g. 2,4,8,16")
    train.add_argument("--steps", type=_positive, default=2000, help="optimiser steps")
    train.add_argument("--batch-size", type=_positive, default=64)
    train.add_argument("--learning-rate", type=float, default=2e-3)
    train.add_argument("--dataset", choices=("mnist", "digits"), default="mnist")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    cal = command("calibrate", "measure eps_l, v_l, c_l and gamma along sampling runs",
                  _calibrate)
    cal.add_argument("--kind", choices=("sde", "ode"), default="sde")
    cal.add_argument("--count", type=_positive, default=16, help="images per run")
    cal.add_argument("--steps", type=_positive, default=64, help="EM steps of the run")
    cal.add_argument("--out", help="JSON file (default: <checkpoints>/calibration.json)")

    smp = command("sample", "draw samples by EM, ML-EM or T-Stitch; write PNG or NPZ", _sample)
    smp.add_argument("--method", choices=("em", "mlem", "tstitch"), default="mlem")
    smp.add_argument("--kind", choices=("sde", "ode"), default="sde",
                     help="reverse SDE or probability-flow ODE")
    smp.add_argument("--steps", type=_positive, default=64)
    smp.add_argument("--count", type=_positive, default=16, help="number of samples")
    smp.add_argument("--top-evaluations", type=float, default=2.0,
                     help="ML-EM: expected evaluations of the largest UNet per run")
    smp.add_argument("--stitch-fraction", type=_fraction, default=0.5,
                     help="T-Stitch: share of the time span on the small UNet")
    smp.add_argument("--out", default="samples.png", help="output .png (grid) or .npz")

    demo = command("demo", "EM vs ML-EM vs T-Stitch: cost, strong error, PNG grids", _demo)
    demo.add_argument("--count", type=_positive, default=8, help="images per method")
    demo.add_argument("--out-dir", default=".", help="folder of the PNG grids")

    bench = command("bench", "time each level and EM vs ML-EM sampling side by side", _bench)
    bench.add_argument("--count", type=_positive, default=16, help="images per batch")
    bench.add_argument("--steps", type=_positive, default=64)
    bench.add_argument("--repeats", type=_positive, default=3)

    sde = command("sde-demo", "solve a small SDE with EM and ML-EM; print cost and error",
                  _sde_demo, checkpoints=False)
    sde.add_argument("--paths", type=_positive, default=256, help="number of sample paths")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors in the arguments or the files are one line on stderr."""
    arguments = _parser().parse_args(argv)
    if getattr(arguments, "out", None) and arguments.command == "sample" and \
            Path(arguments.out).suffix not in (".png", ".npz"):
        print(f"mlem-jax: error: --out must end in .png or .npz, got {arguments.out!r}",
              file=sys.stderr)
        return 2
    try:
        arguments.run(arguments)
    except (ValueError, OSError) as error:
        print(f"mlem-jax: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
