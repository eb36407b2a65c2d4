"""Training samples/s of one process against N data-parallel processes, for each framework.

Each run is the command a user types (`python -m <framework>_pipeline.train`, or the framework's launcher for
several processes) in a fresh temporary folder, with the same seed and global batch. The rate is the steady state
over epochs 2..E, read from the wall times of the chief's `train/epoch_loss` events, so start-up, tracing and the
export do not count. On a machine with few cores the processes compete for the same cores (and, for this small
network, communication outweighs the arithmetic it splits), so the speed-up is bounded by the core count.

    python -m benchmarks.distributed --epochs 8 --processes 1,2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.training import epoch_rate_from_events
from experiment import artifacts
from experiment.data import load_dataset

FRAMEWORKS = ("tf", "torch")
RUN_TIMEOUT_SECONDS = 900
NOTE = (
    "Processes share this machine's {cores} cores: on a 2-core machine two processes can at best double the rate, "
    "and for this small network the per-step gradient all-reduce costs more than the halved arithmetic saves."
)


@dataclasses.dataclass(frozen=True)
class DistributedRun:
    """One training command with `processes` processes."""

    framework: str
    processes: int
    samples_per_second: float | None  # steady state, epochs 2..E
    training_seconds: float
    wall_seconds: float  # the whole command, start-up and export included
    test_accuracy: float
    epochs: int


@dataclasses.dataclass(frozen=True)
class DistributedResult:
    """Every run, with the speed-up of N processes over one."""

    cpu_count: int
    runs: list[DistributedRun]

    def speedup(self, run: DistributedRun) -> float | None:
        """The run's rate over the same framework's one-process rate."""
        base = next((other for other in self.runs if other.framework == run.framework and other.processes == 1), None)
        if base is None or not base.samples_per_second or not run.samples_per_second:
            return None
        return run.samples_per_second / base.samples_per_second

    @property
    def note(self) -> str:
        """Why more processes need not be faster here."""
        return NOTE.format(cores=self.cpu_count)


def training_command(framework: str, processes: int, train_flags: list[str]) -> list[str]:
    """The command line for one run: the plain pipeline for one process, its launcher for several."""
    if processes == 1:
        return [sys.executable, "-m", f"{framework}_pipeline.train", *train_flags]
    if framework == "tf":
        return [sys.executable, "-m", "tf_pipeline.launch", "--nproc", str(processes), "--", *train_flags]
    return [sys.executable, "-m", "torch_pipeline.launch", "--nproc-per-node", str(processes), "--", *train_flags]


def measure_run(framework: str, processes: int, epochs: int, work_dir: Path, seed: int = 0) -> DistributedRun:
    """Train once with `processes` processes into work_dir; samples/s, accuracy and times of that run."""
    run_name = f"{framework}-{processes}-processes"
    quiet = ["--verbose", "0"] if framework == "tf" else ["--no-progress"]
    flags = [
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--run-name",
        run_name,
        "--output-dir",
        str(work_dir / "models"),
        "--log-dir",
        str(work_dir / "runs"),
        *quiet,
    ]
    started = time.perf_counter()
    completed = subprocess.run(
        training_command(framework, processes, flags),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    wall_seconds = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"{framework} with {processes} processes failed: {completed.stderr.strip()[-2000:]}")
    base_path = artifacts.model_base_path(work_dir / "models", framework, "digits")
    metadata = artifacts.read_metadata(base_path / str(artifacts.latest_version(base_path)))
    train_examples = len(load_dataset(seed=seed).train)
    run_dir = work_dir / "runs" / framework / run_name
    rate = epoch_rate_from_events(run_dir, train_examples, metadata["training_seconds"])
    return DistributedRun(
        framework=framework,
        processes=processes,
        samples_per_second=rate.get("steady_samples_per_second"),
        training_seconds=metadata["training_seconds"],
        wall_seconds=wall_seconds,
        test_accuracy=metadata["test_accuracy"],
        epochs=epochs,
    )


def compare_processes(
    epochs: int = 8,
    process_counts: Sequence[int] = (1, 2),
    frameworks: Sequence[str] = FRAMEWORKS,
    work_dir: Path | None = None,
) -> DistributedResult:
    """Every framework at every process count, interleaved, each in a fresh folder."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="distributed-benchmark-") as temporary:
        root = Path(work_dir or temporary)
        for processes in process_counts:
            for framework in frameworks:  # interleaved, so drifting machine load hits both frameworks alike
                runs.append(measure_run(framework, processes, epochs, root / f"{framework}-{processes}"))
    return DistributedResult(os.cpu_count() or 1, runs)


def format_table(result: DistributedResult) -> str:
    """A plain-text table of the comparison, one row per framework and process count."""
    lines = [f"{'framework':<10}{'processes':>10}{'samples/s':>12}{'speed-up':>10}{'test acc':>10}"]
    for run in sorted(result.runs, key=lambda run: (run.framework, run.processes)):
        speedup = result.speedup(run)
        lines.append(
            f"{run.framework:<10}{run.processes:>10}{(run.samples_per_second or float('nan')):>12.0f}"
            f"{(speedup if speedup is not None else float('nan')):>10.2f}{run.test_accuracy:>10.4f}"
        )
    return "\n".join(lines + [result.note])


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: print the table, optionally write the JSON."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="epochs per run; the first is excluded (default: 8)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts (default: 1,2)")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated (default: tf,torch)")
    parser.add_argument("--output", type=Path, default=None, help="also write the result as JSON here")
    arguments = parser.parse_args(argv)
    if arguments.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is left out of the rate")
    result = compare_processes(
        epochs=arguments.epochs,
        process_counts=[int(count) for count in arguments.processes.split(",")],
        frameworks=arguments.frameworks.split(","),
    )
    print(format_table(result))
    if arguments.output:
        arguments.output.parent.mkdir(parents=True, exist_ok=True)
        arguments.output.write_text(json.dumps(dataclasses.asdict(result), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
