"""The `mlem-jax` command."""

import argparse
import sys


def _demo(arguments: argparse.Namespace) -> None:
    from ._sde_demo import run

    run(num_paths=arguments.paths, seed=arguments.seed)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlem-jax", description="Multilevel Euler-Maruyama (ML-EM) in JAX."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="solve a small SDE with EM and ML-EM; print cost and strong error"
    )
    demo.add_argument("--paths", type=int, default=256, help="number of sample paths")
    demo.add_argument("--seed", type=int, default=0, help="seed of the problem and draws")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    if getattr(arguments, "paths", 1) < 1:
        print("mlem-jax: error: --paths must be >= 1", file=sys.stderr)
        return 2
    arguments.run(arguments)
    return 0


if __name__ == "__main__":
    sys.exit(main())
