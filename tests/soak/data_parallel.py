"""Soak: consecutive two-process runs of each framework's launcher, counting the runs that crash.

    .venv/bin/python -m tests.soak.data_parallel --runs 50                 # both frameworks, 50 runs each
    .venv/bin/python -m tests.soak.data_parallel --runs 5 --framework torch

Each run trains one tiny epoch (a 16-unit hidden layer) with two processes into a temporary folder. A run counts as
a crash when the launcher exits non-zero or any output line names a signal ("SIGABRT", "terminate called", a
worker "killed by"); its output is kept under the report folder. Prints one line per run and a summary, and exits
non-zero when a run crashed. Long: minutes per framework; it is not part of `make test` (tests/soak/test_soaks.py
runs it under the `long_soak` marker).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from experiment.processes import free_port

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
CRASH_MARKERS = ("SIGABRT", "terminate called", "killed by", "Aborted", "core dumped", "Segmentation fault")
TRAIN_FLAGS = ["--epochs", "1", "--hidden-sizes", "16", "--batch-size", "64"]


def command(framework: str, folder: Path) -> list[str]:
    """The launcher command of one two-process run writing into folder."""
    train = [*TRAIN_FLAGS, "--output-dir", str(folder / "models"), "--log-dir", str(folder / "runs")]
    if framework == "torch":
        launcher = ["-m", "torch_pipeline.launch", "--nproc-per-node", "2", "--master-port", str(free_port())]
        train.append("--no-progress")
    else:
        launcher = ["-m", "tf_pipeline.launch", "--nproc", "2"]
    return [sys.executable, *launcher, "--", *train]


def run_once(framework: str, timeout: float) -> tuple[bool, float, str]:
    """(crashed, seconds, output) of one two-process run."""
    with tempfile.TemporaryDirectory(prefix=f"soak-{framework}-") as folder:
        started = time.monotonic()
        try:
            completed = subprocess.run(
                command(framework, Path(folder)),
                cwd=REPOSITORY_ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={
                    "PYTHONPATH": str(REPOSITORY_ROOT),
                    "PATH": "/usr/bin:/bin",
                    "TF_CPP_MIN_LOG_LEVEL": "3",
                    "PYTHONFAULTHANDLER": "1",  # a crashed worker prints every thread's Python stack
                },
            )
        except subprocess.TimeoutExpired as expired:
            output = (expired.stdout or b"").decode(errors="replace") + (expired.stderr or b"").decode(errors="replace")
            return True, time.monotonic() - started, f"timed out after {timeout:g} s\n{output}"
        output = completed.stdout + completed.stderr
        crashed = completed.returncode != 0 or any(marker in output for marker in CRASH_MARKERS)
        return crashed, time.monotonic() - started, f"exit status {completed.returncode}\n{output}"


def soak(framework: str, runs: int, timeout: float, report_dir: Path) -> int:
    """Run the launcher runs times in a row; the number of crashed runs."""
    crashes = 0
    for index in range(1, runs + 1):
        crashed, seconds, output = run_once(framework, timeout)
        if crashed:
            crashes += 1
            (report_dir / f"{framework}-run{index:03d}.log").write_text(output)
        print(f"{framework} run {index}/{runs}: {'CRASH' if crashed else 'ok'} in {seconds:.1f} s", flush=True)
    print(f"{framework}: {crashes} crashed of {runs} two-process runs", flush=True)
    return crashes


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak.data_parallel", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="consecutive runs per framework (default: 50)")
    parser.add_argument("--framework", choices=["torch", "tf", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one run may take (default: 300)")
    parser.add_argument("--report-dir", type=Path, default=Path("reports/soak"), help="logs of crashed runs")
    arguments = parser.parse_args(argv)
    arguments.report_dir.mkdir(parents=True, exist_ok=True)
    frameworks = ["torch", "tf"] if arguments.framework == "both" else [arguments.framework]
    crashes = sum(soak(framework, arguments.runs, arguments.timeout, arguments.report_dir) for framework in frameworks)
    return 1 if crashes else 0


if __name__ == "__main__":
    raise SystemExit(main())
