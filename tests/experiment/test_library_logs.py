"""The project's commands keep TensorFlow's and absl's C++ logging below warning off stderr; SHOW_LIBRARY_LOGS=1 shows it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from experiment import library_logs

ROOT = Path(__file__).resolve().parents[2]
# A C++ log line below warning, absl's banner, or the failed cuInit of a machine without a GPU.
NOISE = re.compile(r"^(I\d{4} |E\d{4} .*cuInit|WARNING: All log messages before absl)", re.MULTILINE)


def _run(arguments: list[str], **environment: str) -> subprocess.CompletedProcess:
    base = {
        name: value for name, value in os.environ.items() if name not in ("TF_CPP_MIN_LOG_LEVEL", "SHOW_LIBRARY_LOGS")
    }
    return subprocess.run(
        [sys.executable, *arguments],
        cwd=ROOT,
        env={**base, "PYTHONPATH": str(ROOT), **environment},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_worth_showing_drops_info_lines_the_banner_and_a_failed_cuinit_and_keeps_the_rest():
    lines = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        "I0000 00:00:1796549686.299064    4448 port.cc:153] oneDNN custom operations are on.\n",
        "I0000 00:00:1796549686.475799    4448 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow.\n",
        "E0000 00:00:1796549691.767259    4448 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n",
        "W0000 00:00:1796549691.767259    4448 loader.cc:12] a real warning\n",
        "E0000 00:00:1796549691.767259    4448 loader.cc:13] a real error\n",
        "Traceback (most recent call last):\n",
    ]
    assert library_logs.worth_showing(lines) == lines[5:]


@pytest.mark.training
@pytest.mark.training
def test_training_prints_no_cpp_log_line_and_says_once_that_there_is_no_gpu(tmp_path):
    result = _run(
        [
            "-m",
            "tf_pipeline.train",
            "--epochs",
            "1",
            "--verbose",
            "0",
            "--output-dir",
            str(tmp_path / "models"),
            "--log-dir",
            str(tmp_path / "runs"),
        ]
    )
    assert result.returncode == 0, result.stderr
    assert not NOISE.search(result.stderr + result.stdout), result.stderr
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        summary = [line for line in result.stdout.splitlines() if "GPU" in line]
        assert summary == [line for line in result.stdout.splitlines() if line.startswith("test accuracy")], (
            result.stdout
        )
        assert "the CPU (TensorFlow found no GPU on this machine)" in summary[0]


def test_client_is_quiet_by_default_and_shows_library_logs_when_asked(tmp_path):
    # A port nobody listens on: the client imports TensorFlow's protos, fails to connect and says so in one sentence.
    arguments = ["-m", "serving.client", "tf", "--grpc", "127.0.0.1:1", "--sample", "1", "--timeout", "5"]
    quiet = _run(arguments)
    assert quiet.returncode == 1
    assert not NOISE.search(quiet.stderr), quiet.stderr
    assert "Cannot reach" in quiet.stderr
    loud = _run(arguments, SHOW_LIBRARY_LOGS="1")
    assert loud.returncode == 1
    assert "Cannot reach" in loud.stderr
    # This TensorFlow logs while it loads (absl's banner at least); SHOW_LIBRARY_LOGS=1 lets it through.
    assert NOISE.search(loud.stderr), loud.stderr
