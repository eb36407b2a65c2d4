"""Training measurements: each repeat of each pipeline in its own process, epoch times read from TensorBoard events.

The parent runs `python -m benchmarks.training_worker --framework tf|torch --mode pipeline|bare ...` once per
repeat. Epoch boundaries come from the wall times of the `epoch_loss` events each pipeline writes at the end of
every epoch, so no pipeline code is edited to time it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks import stats
from benchmarks.training_worker import FRAMEWORKS, RESULT_MARKER
from experiment import metrics

WORKER_TIMEOUT_SECONDS = 900
# (epoch, value) points of one scalar, keyed "train/epoch_loss" etc.
Curves = dict[str, list[tuple[int, float]]]


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How many repeats and epochs; the hyperparameters themselves are the pipelines' shared defaults."""

    repeats: int = 3
    epochs: int = 40
    bare_epochs: int = 8  # 0: skip the bare-loop overhead check
    seed: int = 0
    batch_size: int | None = None  # None: TrainConfig's default, the same on both sides
    threads: int = 0  # 0: each framework's default thread pools
    bare_thread_counts: tuple[int, ...] = (0, 1)  # the overhead check at default threads and at one thread


QUICK_TRAINING = TrainingSettings(repeats=1, epochs=2, bare_epochs=0)


@dataclasses.dataclass(frozen=True)
class PipelineRun:
    """One repeat of one pipeline's `train(config, dataset)`, in its own process."""

    framework: str
    train_call_seconds: float  # train() as a user calls it: training, evaluation, logging, export
    training_seconds: float  # the pipeline's own timer around its epoch loop
    process_seconds: float  # the whole process, imports included
    first_epoch_seconds: float
    steady_samples_per_second: float | None  # epochs 2..E; None with a single epoch
    peak_rss_mib: float
    test_accuracy: float
    test_loss: float
    train_examples: int
    batch_size: int
    epochs: int
    threads: dict[str, int]
    run_dir: str
    export_path: str


@dataclasses.dataclass(frozen=True)
class PipelineSummary:
    """Medians over one pipeline's repeats, with the spread of the training rate."""

    framework: str
    repeats: int
    train_call_seconds: float
    training_seconds: float
    process_seconds: float
    first_epoch_seconds: float
    steady_samples_per_second: float | None
    steady_samples_per_second_range: tuple[float, float] | None  # lowest and highest repeat
    peak_rss_mib: float
    test_accuracy: float
    batch_size: int
    epochs: int
    train_examples: int
    run_dir: str  # the first repeat's TensorBoard run
    export_path: str  # the last repeat's export, which the servers load


@dataclasses.dataclass(frozen=True)
class BareRun:
    """The network trained with no validation, logging or export: framework cost without the pipeline's."""

    framework: str
    threads: int  # 0: framework default
    loops: dict[str, dict[str, float]]  # loop name → first_epoch_seconds and steady_samples_per_second
    peak_rss_mib: float

    @property
    def process(self) -> str:
        """'tf_threads_default', 'torch_threads_1', ..."""
        return f"{self.framework}_threads_{self.threads or 'default'}"


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """Every repeat, the medians, the bare loops and the learning curves of every repeat."""

    settings: TrainingSettings
    repeats: dict[str, list[PipelineRun]]
    pipelines: dict[str, PipelineSummary]
    bare: list[BareRun]
    curves: dict[str, list[Curves]]  # framework → one Curves per repeat

    def best_bare_rate(self, framework: str) -> float | None:
        """The fastest steady rate of any bare loop of this framework, or None when none ran."""
        rates = [
            rate["steady_samples_per_second"]
            for run in self.bare
            if run.framework == framework
            for rate in run.loops.values()
            if "steady_samples_per_second" in rate
        ]
        return max(rates, default=None)


def run_worker(arguments: Sequence[str], threads: int = 0) -> dict[str, Any]:
    """Run one worker process; returns its JSON result plus the process's wall time (imports included)."""
    command = [sys.executable, "-m", "benchmarks.training_worker", *arguments, "--threads", str(threads)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_SECONDS, env=environment)
    process_seconds = time.perf_counter() - started
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {completed.returncode}): " + " | ".join(tail))
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["process_seconds"] = process_seconds
    return result


def read_scalars(run_subdir: Path, tag: str) -> list[tuple[int, float, float]]:
    """(step, value, wall time) of a scalar tag in a TensorBoard run folder, from either writer's encoding."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        str(run_subdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    if tag in tags.get(event_accumulator.SCALARS, []):  # torch.utils.tensorboard: simple_value
        points = [(event.step, float(event.value), event.wall_time) for event in accumulator.Scalars(tag)]
    elif tag in tags.get(event_accumulator.TENSORS, []):  # tf.summary (Keras): a scalar tensor
        points = [
            (event.step, float(tensor_util.make_ndarray(event.tensor_proto)), event.wall_time)
            for event in accumulator.Tensors(tag)
        ]
    else:
        raise LookupError(f"the run has no scalar {tag!r}.")
    return sorted(points)


def learning_curves(run_dir: Path) -> Curves:
    """'train/epoch_loss' etc. → [(epoch, value)], read back from a run's event files."""
    curves = {}
    for subdir in (metrics.TRAIN_SUBDIR, metrics.VALIDATION_SUBDIR):
        for tag in metrics.SCALAR_TAGS:
            curves[f"{subdir}/{tag}"] = [(step, value) for step, value, _ in read_scalars(Path(run_dir) / subdir, tag)]
    return curves


def epoch_rate_from_events(run_dir: Path, train_examples: int, training_seconds: float) -> dict[str, float]:
    """Steady-state examples/s over epochs 2..E from the wall times of the train/epoch_loss events."""
    times = [wall_time for _, _, wall_time in read_scalars(Path(run_dir) / metrics.TRAIN_SUBDIR, metrics.EPOCH_LOSS)]
    result = {"first_epoch_seconds": training_seconds - (times[-1] - times[0])}
    if len(times) >= 2:
        result["steady_samples_per_second"] = train_examples * (len(times) - 1) / (times[-1] - times[0])
    return result


def _pipeline_run(worker_result: dict[str, Any]) -> PipelineRun:
    rate = epoch_rate_from_events(
        Path(worker_result["run_dir"]), worker_result["train_examples"], worker_result["training_seconds"]
    )
    fields = {field.name for field in dataclasses.fields(PipelineRun)}
    values = {key: value for key, value in worker_result.items() if key in fields}
    return PipelineRun(
        **values,
        steady_samples_per_second=rate.get("steady_samples_per_second"),
        first_epoch_seconds=rate["first_epoch_seconds"],
    )


def summarise(framework: str, runs: Sequence[PipelineRun]) -> PipelineSummary:
    """Medians of one framework's repeats."""
    rates = [run.steady_samples_per_second for run in runs if run.steady_samples_per_second is not None]

    def middle(name: str) -> float:
        return stats.median([getattr(run, name) for run in runs])

    return PipelineSummary(
        framework=framework,
        repeats=len(runs),
        train_call_seconds=middle("train_call_seconds"),
        training_seconds=middle("training_seconds"),
        process_seconds=middle("process_seconds"),
        first_epoch_seconds=middle("first_epoch_seconds"),
        steady_samples_per_second=stats.median(rates) if len(rates) == len(runs) else None,
        steady_samples_per_second_range=(min(rates), max(rates)) if len(rates) == len(runs) else None,
        peak_rss_mib=middle("peak_rss_mib"),
        test_accuracy=middle("test_accuracy"),
        batch_size=runs[0].batch_size,
        epochs=runs[0].epochs,
        train_examples=runs[0].train_examples,
        run_dir=runs[0].run_dir,
        export_path=runs[-1].export_path,
    )


def measure_training(settings: TrainingSettings, work_dir: Path) -> TrainingResult:
    """Repeats of both pipelines (interleaved, each in a fresh process) and the bare loops; medians."""
    common = ["--epochs", str(settings.epochs), "--seed", str(settings.seed), "--work-dir", str(work_dir)]
    if settings.batch_size:
        common += ["--batch-size", str(settings.batch_size)]
    repeats: dict[str, list[PipelineRun]] = {framework: [] for framework in FRAMEWORKS}
    for repeat in range(settings.repeats):
        for framework in FRAMEWORKS:  # interleaved, so slow drift in machine load hits both alike
            arguments = ["--framework", framework, "--mode", "pipeline", "--run-name", f"repeat-{repeat}", *common]
            repeats[framework].append(_pipeline_run(run_worker(arguments, settings.threads)))

    bare_arguments = ["--mode", "bare", "--epochs", str(settings.bare_epochs), "--seed", str(settings.seed)]
    if settings.batch_size:
        bare_arguments += ["--batch-size", str(settings.batch_size)]
    bare = []
    for threads in settings.bare_thread_counts if settings.bare_epochs else ():
        for framework in FRAMEWORKS:
            result = run_worker(["--framework", framework, *bare_arguments], threads)
            bare.append(BareRun(framework, threads, result["loops"], result["peak_rss_mib"]))
    return TrainingResult(
        settings=settings,
        repeats=repeats,
        pipelines={framework: summarise(framework, runs) for framework, runs in repeats.items()},
        bare=bare,
        curves={framework: [learning_curves(Path(run.run_dir)) for run in runs] for framework, runs in repeats.items()},
    )
