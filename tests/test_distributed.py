"""Multi-process sampling: two processes on 127.0.0.1 with gloo CPU collectives give the
samples of a single-process run with the same seeds; the launcher's arguments."""

import os
import socket
import subprocess
import sys
from typing import Any

import jax
import numpy as np
import pytest

from mlem_jax import distributed
from mlem_jax.cli import main
from mlem_jax.diffusion.checkpoint import save_model
from mlem_jax.diffusion.levels import level_name, load_levels
from mlem_jax.diffusion.sample import score_levels

from diffusion_helpers import IMAGE_SHAPE, tiny_unets


TIMEOUT = 120  # seconds for the whole two-process run, start-up and compilation included
RUN: dict[str, Any] = dict(count=4, steps=4, probabilities=(1.0, 0.5), draws="stratified", seed=3)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_checkpoints(directory) -> None:
    for model in tiny_unets():
        save_model(directory / level_name(model.width), model, image_shape=list(IMAGE_SHAPE))


def _launcher(
    process_id: int, port: int, checkpoints: str, out: str, local_devices: int
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlem_jax.cli",
        "distributed-sample",
        "--coordinator",
        f"127.0.0.1:{port}",
        "--num-processes",
        "2",
        "--process-id",
        str(process_id),
        "--local-devices",
        str(local_devices),
        "--timeout",
        "60",
        "--checkpoints",
        checkpoints,
        "--count",
        str(RUN["count"]),
        "--steps",
        str(RUN["steps"]),
        "--method",
        "mlem",
        "--probabilities",
        ",".join(map(str, RUN["probabilities"])),
        "--draws",
        RUN["draws"],
        "--seed",
        str(RUN["seed"]),
        "--out",
        out,
    ]


def _run_two_processes(tmp_path, local_devices: int) -> tuple[dict, list[str]]:
    out, port = str(tmp_path / "samples.npz"), _free_port()
    _tiny_checkpoints(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["JAX_PLATFORMS"] = "cpu"
    processes = []
    try:
        for i in range(2):
            processes.append(
                subprocess.Popen(
                    _launcher(i, port, str(tmp_path), out, local_devices),
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                )
            )
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(processes, logs):
        assert p.returncode == 0, log[-3000:]
    with np.load(out) as data:
        return dict(data), logs


def test_two_processes_equal_one_process(tmp_path):
    # 2 processes x 2 CPU devices each: a global batch of 4 over 4 devices.
    gathered, logs = _run_two_processes(tmp_path, local_devices=2)
    assert all("on 4 devices, 2 here" in log for log in logs), logs
    levels = score_levels(load_levels(tmp_path)[0])
    shape = IMAGE_SHAPE
    samples, evaluations = distributed.sample_sharded(
        "mlem",
        levels,
        jax.random.key(RUN["seed"]),
        RUN["count"],
        shape,
        RUN["steps"],
        probabilities=RUN["probabilities"],
        draws=RUN["draws"],
    )
    assert jax.device_count() == 1  # the reference is a plain single-device run
    assert gathered["samples"].shape == samples.shape == (RUN["count"], *shape)
    assert np.isfinite(samples).all()
    np.testing.assert_array_equal(gathered["evaluations"], evaluations)
    scale = float(np.abs(samples).max())
    np.testing.assert_allclose(gathered["samples"], samples, rtol=1e-5, atol=1e-5 * scale)


def test_launcher_help_and_bad_arguments(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["distributed-sample", "--help"])
    assert exit_.value.code == 0 and "--coordinator" in capsys.readouterr().out
    base = ["distributed-sample", "--num-processes", "2"]
    cases = [
        (["--coordinator", "localhost", "--process-id", "0"], "--coordinator must be host:port"),
        (["--coordinator", "127.0.0.1:1", "--process-id", "2"], "--process-id must be in [0, 2)"),
        (
            ["--coordinator", "127.0.0.1:1", "--process-id", "0", "--count", "3"],
            "--count must be a multiple of the 2 devices",
        ),
        (
            ["--coordinator", "127.0.0.1:1", "--process-id", "0", "--out", "x.png"],
            "--out must end in .npz",
        ),
    ]
    for extra, message in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    with pytest.raises(SystemExit):
        main(base + ["--coordinator", "127.0.0.1:1", "--process-id", "-1"])
    assert "expected an integer >= 0" in capsys.readouterr().err


def test_initialize_checks_its_arguments():
    with pytest.raises(ValueError, match="`process_id` must be an int in \\[0, 2\\)"):
        distributed.initialize("127.0.0.1:1234", 2, 2)
    with pytest.raises(ValueError, match="`num_processes`"):
        distributed.initialize("127.0.0.1:1234", 0, 0)
    with pytest.raises(ValueError, match="`coordinator_address` must be host:port"):
        distributed.initialize("127.0.0.1", 2, 0)
    with pytest.raises(ValueError, match="`count` must be a positive multiple"):
        distributed.global_noise(jax.random.key(0), 0, (1, 2, 2))
