"""The `mlem-jax` command: help of every subcommand, one-line errors, a tiny `sample`."""

import hashlib
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem_jax
from mlem_jax.cli import main
from mlem_jax.diffusion import demo
from mlem_jax.diffusion.checkpoint import read_manifest, save_model
from mlem_jax.diffusion.figures import sample_panels
from mlem_jax.diffusion.testbed import LADDER, TESTBED_FILES
from mlem_jax.diffusion.testbed_demo import demo_settings

from diffusion_helpers import IMAGE_SHAPE, tiny_cascade, tiny_unets


COMMANDS = ("train", "distill", "calibrate", "sample", "demo", "bench", "sde-demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mlem-jax {command}") and "--seed" in text


def test_console_script_lists_the_commands():
    done = subprocess.run(
        [sys.executable, "-m", "mlem_jax.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert all(command in done.stdout for command in COMMANDS)


@pytest.fixture
def checkpoints(tmp_path):
    for model in tiny_unets():
        save_model(tmp_path / f"unet_w{model.width}", model, image_shape=list(IMAGE_SHAPE))
    calibration = {
        "kind": "sde",
        "flops": [1e4, 4e4],
        "variances": [1.0],
        "gamma": None,
        "profile": {"edges": [1e-3, 1.0], "variances": [[1.0]], "counts": [1]},
        "sensitivity": {"times": [1e-3, 1.0], "gains": [1.0, 1.0]},
    }
    (tmp_path / "calibration.json").write_text(json.dumps({"sde": calibration}))
    return tmp_path


def _one_line_error(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit:
        code = main(argv)
        raise SystemExit(code)
    assert exit.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert fragment in lines[-1] and "Traceback" not in "".join(lines)


def test_bad_arguments_give_one_clear_line(capsys, tmp_path, checkpoints):
    _one_line_error(capsys, ["sample", "--steps", "0"], "expected a positive integer")
    _one_line_error(capsys, ["sample", "--method", "heun"], "invalid choice: 'heun'")
    _one_line_error(capsys, ["sample", "--out", "x.jpg"], "--out must end in .png or .npz")
    _one_line_error(
        capsys,
        ["sample", "--checkpoints", str(tmp_path / "none")],
        "none: neither a CascadeUNet (cascade.json) nor UNets",
    )
    _one_line_error(
        capsys,
        ["sample", "--checkpoints", str(checkpoints), "--count", "3", "--groups", "2"],
        "--groups must divide --count 3, got 2",
    )
    (checkpoints / "unet_w2.eqx").write_bytes(b"garbage")
    _one_line_error(capsys, ["sample", "--checkpoints", str(checkpoints)], "corrupted")


def test_tiny_sample_run(checkpoints, tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = [
        "sample",
        "--checkpoints",
        str(checkpoints),
        "--method",
        "mlem",
        "--steps",
        "4",
        "--count",
        "3",
        "--seed",
        "1",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (3, *IMAGE_SHAPE) and np.isfinite(samples).all()
    assert "3 samples by mlem" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert main(argv[:-1] + [str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv + ["--draws", "stratified", "--groups", "3"]) == 0
    assert "3 samples by mlem" in capsys.readouterr().out
    # --calibration: another file's FLOPs (EM: 4 steps of 4e9 per image). (A file
    # without a profile would be measured again on the spot.)
    other = tmp_path / "other.json"
    other.write_text(
        json.dumps(
            {
                "sde": {
                    "kind": "sde",
                    "flops": [1e9, 4e9],
                    "variances": [1.0],
                    "gamma": None,
                    "profile": {},
                }
            }
        )
    )
    assert main(argv[:4] + ["em", *argv[5:], "--calibration", str(other)]) == 0
    assert "16.000 GFLOP/image" in capsys.readouterr().out


def test_a_cascade_is_calibrated_and_sampled_as_one_family(tmp_path, capsys):
    folder = tmp_path / "cascade"
    save_model(folder / "cascade", tiny_cascade(), image_shape=list(IMAGE_SHAPE))
    assert main(["calibrate", "--checkpoints", str(folder), "--count", "2", "--steps", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed[1:3]] == ["1", "2"]  # the stage widths
    calibration = json.loads((folder / "calibration.json").read_text())["sde"]
    assert calibration["shared"] is True and len(calibration["flops"]) == 2
    out = tmp_path / "s.npz"
    argv = ["sample", "--checkpoints", str(folder), "--steps", "4", "--count", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (2, *IMAGE_SHAPE) and np.isfinite(samples).all()


def test_the_gaussian_base_is_calibrated_and_sampled_under_a_cascade(tmp_path, capsys):
    from mlem_jax.diffusion import fit_gaussian, load_digits, save_gaussian

    folder = tmp_path / "cascade"
    # A second exit that differs from the first (a fresh cascade's readouts start at 0).
    cascade = eqx.tree_at(
        lambda c: c.stages[1].conv_out.weight,
        tiny_cascade(),
        0.1 * jax.random.normal(jax.random.key(5), tiny_cascade().stages[1].conv_out.weight.shape),
    )
    save_model(folder / "cascade", cascade, image_shape=list(IMAGE_SHAPE))
    statistics = save_gaussian(tmp_path / "digits", fit_gaussian(load_digits("train").images))
    base = ["--checkpoints", str(folder), "--base", "gaussian", "--statistics", str(statistics)]
    small = ["--count", "2", "--steps", "4"]
    assert main(["calibrate", *base, *small]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:4]] == [
        "gaussian",
        "1",
        "2",
    ]
    assert main(["calibrate", *base, "--top-only", *small]) == 0
    stored = json.loads((folder / "calibration.json").read_text())
    assert sorted(stored) == ["sde+gaussian", "sde+gaussian_top"]
    assert len(stored["sde+gaussian"]["flops"]) == 3 and stored["sde+gaussian"]["shared"]
    assert len(stored["sde+gaussian_top"]["flops"]) == 2
    out = tmp_path / "s.npz"
    argv = ["sample", *base, "--top-only", "--schedule", "--draws", "stratified", *small]
    assert main([*argv, "--top-evaluations", "2", "--out", str(out)]) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (2, *IMAGE_SHAPE) and np.isfinite(samples).all()
    # The shipped statistics, of another shape: one line naming them.
    shipped = ["--checkpoints", str(folder), "--base", "gaussian", *small]
    _one_line_error(
        capsys,
        ["sample", *shipped, "--out", str(out)],
        "hold samples of shape (1, 32, 32), but the checkpoints' images are (1, 8, 8)",
    )


def test_levels_without_a_calibration_file_are_calibrated_on_the_spot(checkpoints, monkeypatch):
    measured = {"flops": [1.0, 4.0], "variances": [1.0], "profile": {}}
    calls = []
    monkeypatch.setattr(
        demo, "calibrate", lambda levels, *a, **k: calls.append(len(levels)) or measured
    )
    demo.prepare(checkpoints)  # the file's calibration
    assert calls == []
    (checkpoints / "calibration.json").unlink()
    levels, image_shape, calibration = demo.prepare(checkpoints)
    assert calibration is measured and calls == [2] and image_shape == IMAGE_SHAPE


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_tiny_demo_run(checkpoints, tmp_path, capsys):
    """`demo --quick` on tiny UNets: its table, the samples side by side and the
    frontier; then the shipped testbed ladder: EM and ML-EM against the exact score."""
    out = tmp_path / "out"
    assert (
        main(
            [
                "demo",
                "--checkpoints",
                str(checkpoints),
                "--count",
                "2",
                "--quick",
                "--out-dir",
                str(out),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    operating = read_manifest(TESTBED_FILES / LADDER)["operating"]
    for method in (
        "EM, top level, 4 steps",
        "ML-EM, 8 steps, m=2",
        "ML-EM p(t)",
        "ML-EM stratified",
        "T-Stitch",
        "cost-error frontier",
        "testbed pca16 (exact score known)",
        *(setting.label for setting, _ in demo_settings(operating)),
    ):
        assert method in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "demo_frontier.png",
        "demo_samples.png",
        "testbed_digits.png",
    ]
    width, height = _png_size(out / "demo_samples.png")
    assert width >= 1200 and height >= 400  # six panels, three to a row
    assert _png_size(out / "demo_frontier.png")[0] >= 600


def test_sample_panels_show_8x8_images_at_a_readable_size(tmp_path):
    """The demo's 64 images per method: an 8x8 grid of 32x32 images, each shown at 50
    pixels or more."""
    images = np.zeros((64, 1, 32, 32), np.float32)
    path = sample_panels(tmp_path / "panels.png", [images, images], ["EM", "ML-EM"], columns=2)
    width, height = _png_size(path)
    assert width / 2 / 8 >= 50 and height >= 8 * 50
    with pytest.raises(ValueError, match="one title per panel"):
        sample_panels(tmp_path / "x.png", [images], ["a", "b"])


def test_the_diffusion_extra_is_named_when_missing(tmp_path):
    """Without the `diffusion` extra the core imports, `mlem_jax.diffusion` stops with one
    line naming the extra, and so do the diffusion commands (exit status 2)."""
    hide = (
        "import importlib.util, sys; find = importlib.util.find_spec; "
        "importlib.util.find_spec = lambda name, *a: None if name in ('optax', 'tqdm') "
        "else find(name, *a); "
    )
    check = hide + textwrap.dedent("""
        import mlem_jax
        assert mlem_jax.solve and mlem_jax.__version__
        try:
            import mlem_jax.diffusion
        except ModuleNotFoundError as error:
            print(error)
        from mlem_jax.cli import main
        sys.exit(main(["sample", "--out", sys.argv[1]]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", check, str(tmp_path / "s.png")], capture_output=True, text=True
    )
    message = (
        "`mlem_jax.diffusion` needs the `diffusion` extra, which provides optax, "
        "tqdm: pip install 'mlem-jax[diffusion]'"
    )
    assert done.stdout.strip() == message
    assert done.returncode == 2 and done.stderr.strip() == f"mlem-jax: error: {message}"


def _files(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _tiny_shipped(folder: Path) -> None:
    """Tiny UNets in `folder` and a tiny cascade in `folder / "cascade"`, as shipped."""
    for model in tiny_unets():
        save_model(
            folder / f"unet_w{model.width}", model, image_shape=list(IMAGE_SHAPE), dataset="digits"
        )
    save_model(folder / "cascade" / "cascade", tiny_cascade(), image_shape=list(IMAGE_SHAPE))
    calibration = {"kind": "sde", "flops": [1e4, 4e4], "variances": [1.0], "gamma": None}
    for where in (folder, folder / "cascade"):
        (where / "calibration.json").write_text(json.dumps({"sde": calibration}))


WRITING_COMMANDS = [
    ["calibrate", "--count", "1", "--steps", "2"],
    ["distill", "--steps", "1", "--batch-size", "2", "--quiet"],
    [
        "train",
        "--steps",
        "1",
        "--batch-size",
        "2",
        "--widths",
        "3",
        "--dataset",
        "digits",
        "--quiet",
    ],
]


def _check_outputs(made: dict, shipped: dict) -> None:
    """What calibrate and distill made in the user cache directory."""
    assert {"calibration.json", "checkpoints/unet_w1.json", "checkpoints/unet_w2.eqx"} <= set(made)
    # The teacher is copied as it is; the student is the distilled one.
    assert made["checkpoints/unet_w2.eqx"] == shipped["unet_w2.eqx"]
    assert made["checkpoints/unet_w1.json"] != shipped["unet_w1.json"]


def test_writing_commands_default_to_the_user_cache(tmp_path, monkeypatch, capsys):
    """calibrate, distill and train with their default folders, the package's checkpoint
    folder standing in a temporary copy (the numerical work replaced by stubs): that
    folder stays byte-identical and the outputs go to the user cache directory. The
    slow test below runs the real commands from a read-only copy of the package."""
    from mlem_jax.diffusion import levels as family
    from mlem_jax.diffusion.train import TrainState

    package = tmp_path / "package"
    shipped = package / "checkpoints"
    _tiny_shipped(shipped)
    monkeypatch.setattr(family, "PACKAGE", package)
    monkeypatch.setattr(family, "CHECKPOINTS", shipped)
    monkeypatch.setattr(family, "CASCADE_CHECKPOINTS", shipped / "cascade")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "mlem-jax"

    def calibrate(levels, key, image_shape, **kw):
        return {
            "kind": "sde",
            "flops": [1.0, 4.0],
            "seconds": [1.0, 2.0],
            "errors": [1.0, 0.0],
            "variances": [1.0],
            "gamma": None,
            "gamma_seconds": None,
        }

    def train(models, images, config, *, on_save, **kw):
        n = len(models)
        state = TrainState(
            tuple(models), tuple(models), (), jnp.asarray(1), jnp.zeros(n), jnp.asarray(0.0)
        )
        on_save(state)
        return state

    trained = []

    def train_cascade(directory, **kw):
        trained.append(directory)
        return train([], None, None, on_save=id)

    monkeypatch.setattr(sys.modules["mlem_jax.diffusion.calibrate"], "calibrate", calibrate)
    monkeypatch.setattr(family, "train", train)
    monkeypatch.setattr(family, "train_cascade", train_cascade)
    before = _files(shipped)
    for argv in WRITING_COMMANDS:
        assert main(argv) == 0
    assert _files(shipped) == before
    _check_outputs(_files(cache), before)
    assert (
        json.loads((cache / "checkpoints" / "unet_w1.json").read_text())["objective"]
        == "distillation"
    )
    assert trained == [cache / "checkpoints"]
    assert f"use it with --calibration {cache / 'calibration.json'}" in capsys.readouterr().out


@pytest.mark.slow
def test_writing_commands_leave_the_installed_package_byte_identical(tmp_path):
    """calibrate, distill and train with their default folders, run from a read-only copy
    of the package whose shipped checkpoints are the tiny UNets: no file of the package
    changes or appears, and what they make goes to the user cache directory."""
    site = tmp_path / "site"
    package = site / "mlem_jax"
    shutil.copytree(
        Path(mlem_jax.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__")
    )
    shipped = package / "diffusion" / "checkpoints"
    shutil.rmtree(shipped)
    _tiny_shipped(shipped)
    for path in package.rglob("*"):
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    before = _files(package)
    script = (
        "import sys, mlem_jax; from mlem_jax.cli import main; "
        f"assert mlem_jax.__file__.startswith({str(site)!r}), mlem_jax.__file__; "
        f"sys.exit(max(main(argv) for argv in {WRITING_COMMANDS!r}))"
    )
    cache = tmp_path / "cache"
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={
            **os.environ,
            "PYTHONPATH": str(site),
            "XDG_CACHE_HOME": str(cache),
            "JAX_PLATFORMS": "cpu",
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _files(package) == before
    made = _files(cache / "mlem-jax")
    _check_outputs(made, _files(shipped))
    assert {"checkpoints/distill_state.eqx", "checkpoints/cascade_state.eqx"} <= set(made)
    assert {"checkpoints/cascade.eqx", "checkpoints/cascade.json"} <= set(made)
    assert f"use it with --calibration {cache / 'mlem-jax' / 'calibration.json'}" in done.stdout


def test_a_non_finite_sample_is_one_line_naming_the_step(checkpoints, tmp_path, capsys):
    """The samplers run with throw=True: a UNet with a NaN weight stops `sample` with one
    line naming the step, its time and the levels evaluated there."""
    small, large = tiny_unets()
    broken = jax.tree_util.tree_map(lambda x: x * np.nan if eqx.is_inexact_array(x) else x, large)
    save_model(checkpoints / f"unet_w{large.width}", broken, image_shape=list(IMAGE_SHAPE))
    _one_line_error(
        capsys,
        [
            "sample",
            "--checkpoints",
            str(checkpoints),
            "--method",
            "em",
            "--steps",
            "4",
            "--count",
            "2",
            "--out",
            str(tmp_path / "s.npz"),
        ],
        "throw=True: the state after step 0 (t = 1) is not finite",
    )


class _Stop(Exception):
    pass


def _sampled_setting(monkeypatch, argv):
    """The `Setting` that `mlem-jax sample argv` runs (on the shipped cascade)."""
    from mlem_jax.diffusion import runner

    seen = []

    def record(setting, *args, **kwargs):
        seen.append(setting)
        raise _Stop

    monkeypatch.setattr(runner, "run_setting", record)
    with pytest.raises(_Stop):
        main(["sample", "--count", "2", *argv])
    return seen[0]


def test_sample_defaults_are_the_measured_operating_point(monkeypatch):
    # ML-EM: stratified draws, 128 steps and the top exit drawn about 16 times (EM's
    # 64-step error at 2.46x fewer FLOPs on the shipped cascade); EM: 64 steps.
    mlem = _sampled_setting(monkeypatch, [])
    assert (mlem.method, mlem.num_steps, mlem.draws) == ("mlem", 128, "stratified")
    assert mlem.num_steps * mlem.probabilities[-1] == pytest.approx(16.0)
    em = _sampled_setting(monkeypatch, ["--method", "em"])
    assert (em.method, em.num_steps, em.probabilities) == ("em", 64, None)
    chosen = _sampled_setting(monkeypatch, ["--steps", "32", "--draws", "random"])
    assert (chosen.num_steps, chosen.draws) == (32, "random")
