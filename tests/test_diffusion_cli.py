"""The `mlem-jax` command: help of every subcommand, one-line errors, a tiny `sample`."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mlem_jax.cli import main
from mlem_jax.diffusion.checkpoint import save_model

from diffusion_helpers import IMAGE_SHAPE, tiny_unets

COMMANDS = ("train", "distill", "calibrate", "sample", "demo", "bench", "sde-demo")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_each_command(command, capsys):
    with pytest.raises(SystemExit) as exit:
        main([command, "--help"])
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: mlem-jax {command}") and "--seed" in text


def test_console_script_lists_the_commands():
    done = subprocess.run([sys.executable, "-m", "mlem_jax.cli", "--help"],
                          capture_output=True, text=True, check=True)
    assert all(command in done.stdout for command in COMMANDS)


@pytest.fixture
def checkpoints(tmp_path):
    for model in tiny_unets():
        save_model(tmp_path / f"unet_w{model.width}", model, image_shape=list(IMAGE_SHAPE))
    calibration = {"kind": "sde", "flops": [1e4, 4e4], "variances": [1.0], "gamma": None}
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
    _one_line_error(capsys, ["sample", "--checkpoints", str(tmp_path / "none")],
                    "no UNet checkpoints")
    (checkpoints / "unet_w2.eqx").write_bytes(b"garbage")
    _one_line_error(capsys, ["sample", "--checkpoints", str(checkpoints)], "corrupted")


def test_tiny_sample_run(checkpoints, tmp_path, capsys):
    out = tmp_path / "s.npz"
    argv = ["sample", "--checkpoints", str(checkpoints), "--method", "mlem", "--steps", "4",
            "--count", "3", "--seed", "1", "--out", str(out)]
    assert main(argv) == 0
    samples = np.load(out)["samples"]
    assert samples.shape == (3, *IMAGE_SHAPE) and np.isfinite(samples).all()
    assert "3 samples by mlem" in capsys.readouterr().out
    png = tmp_path / "s.png"
    assert main(argv[:-1] + [str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(argv + ["--draws", "stratified"]) == 0
    assert "3 samples by mlem" in capsys.readouterr().out


def test_tiny_demo_run(tmp_path, capsys):
    """`demo` on tiny UNets, with the calibration measured on the spot (no file)."""
    for model in tiny_unets():
        save_model(tmp_path / f"unet_w{model.width}", model, image_shape=list(IMAGE_SHAPE))
    out = tmp_path / "out"
    out.mkdir()
    assert main(["demo", "--checkpoints", str(tmp_path), "--count", "2",
                 "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("EM, largest UNet", "ML-EM, 64", "ML-EM p(t)", "ML-EM stratified",
                   "T-Stitch"):
        assert method in printed
    names = sorted(p.name for p in out.iterdir())
    assert names == ["demo_em.png", "demo_mlem.png", "demo_mlem_schedule.png",
                     "demo_mlem_stratified.png", "demo_tstitch.png"]
