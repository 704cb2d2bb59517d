"""The `mlem-jax` command: help of every subcommand, one-line errors, a tiny `sample`."""

import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from mlem_jax.cli import main
from mlem_jax.diffusion import demo
from mlem_jax.diffusion.checkpoint import save_model
from mlem_jax.diffusion.figures import sample_panels

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
    calibration = {"kind": "sde", "flops": [1e4, 4e4], "variances": [1.0], "gamma": None,
                   "profile": {"edges": [1e-3, 1.0], "variances": [[1.0]], "counts": [1]},
                   "sensitivity": {"times": [1e-3, 1.0], "gains": [1.0, 1.0]}}
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


def test_levels_without_a_calibration_file_are_calibrated_on_the_spot(checkpoints,
                                                                     monkeypatch):
    measured = {"flops": [1.0, 4.0], "variances": [1.0], "profile": {}}
    calls = []
    monkeypatch.setattr(demo, "calibrate",
                        lambda levels, *a, **k: calls.append(len(levels)) or measured)
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
    frontier."""
    out = tmp_path / "out"
    assert main(["demo", "--checkpoints", str(checkpoints), "--count", "2", "--quick",
                 "--out-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    for method in ("EM, largest UNet, 4 steps", "ML-EM, 8 steps, m=2", "ML-EM p(t)",
                   "ML-EM stratified", "T-Stitch", "cost-error frontier"):
        assert method in printed
    assert sorted(p.name for p in out.iterdir()) == ["demo_frontier.png", "demo_samples.png"]
    width, height = _png_size(out / "demo_samples.png")
    assert width >= 1200 and height >= 400  # six panels, three to a row
    assert _png_size(out / "demo_frontier.png")[0] >= 600


def test_sample_panels_show_8x8_images_at_a_readable_size(tmp_path):
    """The demo's 64 images per method: an 8x8 grid of 32x32 images, each shown at 50
    pixels or more."""
    images = np.zeros((64, 1, 32, 32), np.float32)
    path = sample_panels(tmp_path / "panels.png", [images, images], ["EM", "ML-EM"],
                         columns=2)
    width, height = _png_size(path)
    assert width / 2 / 8 >= 50 and height >= 8 * 50
    with pytest.raises(ValueError, match="one title per panel"):
        sample_panels(tmp_path / "x.png", [images], ["a", "b"])


def test_the_diffusion_extra_is_named_when_missing(tmp_path):
    """Without the `diffusion` extra the core imports, `mlem_jax.diffusion` stops with one
    line naming the extra, and so do the diffusion commands (exit status 2)."""
    hide = ("import importlib.util, sys; find = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda name, *a: None if name in ('optax', 'tqdm') "
            "else find(name, *a); ")
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
    done = subprocess.run([sys.executable, "-c", check, str(tmp_path / "s.png")],
                          capture_output=True, text=True)
    message = ("`mlem_jax.diffusion` needs the `diffusion` extra, which provides optax, "
               "tqdm: pip install 'mlem-jax[diffusion]'")
    assert done.stdout.strip() == message
    assert done.returncode == 2 and done.stderr.strip() == f"mlem-jax: error: {message}"
