"""experiment.processes.exit_status: a data-parallel worker leaves at once after flushing, a lone process normally."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# A process that prints without a newline (buffered), registers a teardown step, then ends through exit_status.
SCRIPT = (
    "import atexit, sys\n"
    "from experiment import processes\n"
    "atexit.register(lambda: print('teardown ran', file=sys.stderr))\n"
    "print('trained', end='')\n"
    "raise SystemExit(processes.exit_status(int(sys.argv[1])))\n"
)


def _run(environment: dict[str, str], status: int = 0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(status)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **environment},
    )


@pytest.mark.parametrize(
    "environment",
    [
        {"WORLD_SIZE": "2", "RANK": "1"},
        {"TF_CONFIG": '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}'},
    ],
    ids=["torchrun worker", "TF_CONFIG worker"],
)
def test_a_data_parallel_worker_that_succeeded_flushes_and_leaves_without_teardown(environment):
    result = _run(environment)
    assert (result.returncode, result.stdout) == (0, "trained")
    assert "teardown ran" not in result.stderr  # no interpreter teardown, so no C++ destructors of live threads
    failed = _run(environment, status=1)  # a failed worker exits as before: the launcher's first failure stays first
    assert (failed.returncode, failed.stdout) == (1, "trained") and "teardown ran" in failed.stderr


def test_a_lone_process_exits_normally():
    result = _run({"WORLD_SIZE": "1"})
    assert (result.returncode, result.stdout) == (0, "trained")
    assert "teardown ran" in result.stderr
