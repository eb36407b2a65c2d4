"""`python -m serving.demo` (`make demo`) beside a running stack: it refuses before any work and names both ways out."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from serving.runtime import Stack

ROOT = Path(__file__).resolve().parents[2]


def test_demo_beside_a_running_stack_refuses_before_training_and_leaves_its_versions_alone(tmp_path, make_stub):
    # A stack as `make serve` leaves it, in the .run/ of the folder the demo runs in; its models folder has version 1.
    stack = Stack(
        run_dir=tmp_path / ".run", models_dir=tmp_path / "models", specs=[make_stub("tfserving"), make_stub("flask")]
    )
    version = tmp_path / "models" / "tf" / "digits" / "1"
    version.mkdir(parents=True)
    stack.start(timeout=30, report=lambda line: None)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "serving.demo"],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        stack.stop(report=lambda line: None)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith("python -m serving.demo: error: The servers of `make serve` are running"), (
        result.stderr
    )
    assert "`make stop`" in result.stderr and "`make demo ARGS=--free-ports`" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Training" not in result.stdout  # refused before any work
    assert sorted(path.name for path in version.parent.iterdir()) == ["1"]
    assert not (tmp_path / "runs").exists()
