"""Both training commands refuse bad input with one sentence, a non-zero exit, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = ["tf_pipeline.train", "torch_pipeline.train"]


def _run(module: str, *arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _case_arguments(case: str, tmp_path: Path) -> list[str]:
    if case == "data-dir without IDX files":
        (tmp_path / "empty").mkdir()
        return ["--data-dir", str(tmp_path / "empty")]
    if case == "output dir is a file":
        (tmp_path / "blocked").write_text("a file where a folder should be")
        return ["--output-dir", str(tmp_path / "blocked")]
    return {
        "unknown flag": ["--no-such-flag"],
        "zero epochs": ["--epochs", "0"],
        "negative batch size": ["--batch-size", "-1"],
        "bad hidden sizes": ["--hidden-sizes", "64;32"],
    }[case]


@pytest.mark.parametrize("module", PIPELINES)
@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown flag", "unrecognized arguments: --no-such-flag"),
        ("zero epochs", "--epochs must be a positive integer"),
        ("negative batch size", "--batch-size must be a positive integer"),
        ("bad hidden sizes", "not a comma-separated list of integers"),
        ("data-dir without IDX files", "no train-images-idx3-ubyte file"),
        ("output dir is a file", "Cannot write to"),
    ],
)
def test_bad_input_is_one_sentence(module, case, message, tmp_path):
    defaults = ["--epochs", "1", "--output-dir", str(tmp_path / "models"), "--log-dir", str(tmp_path / "runs")]
    # The case's own flags come last: argparse keeps the last value of a repeated flag.
    result = _run(module, *defaults, *_case_arguments(case, tmp_path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr  # exactly one line
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("model.*"))
    assert not any(tmp_path.rglob("saved_model.pb"))
