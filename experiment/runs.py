"""The framework-free bookkeeping of a training run, the same in both pipelines: its folders, its result, its record.

Each pipeline's train.py keeps its own loop, evaluation and export; what it does before the first step (naming the
run, claiming its checkpoint folder) and after evaluating the test split (the end-of-run summaries, metadata.json)
is written here once.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from experiment import artifacts, metrics
from experiment import checkpoints as run_checkpoints
from experiment.config import TrainConfig
from experiment.data import Dataset
from experiment.json_types import JSONScalar, JSONValue
from experiment.spec import NetworkSpec


class WorkerLost(RuntimeError):
    """A collective with the other processes failed (one of them died or became unreachable); nothing is exported."""


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced; a process other than the chief of a distributed run exports nothing (None)."""

    version: int | None
    export_path: Path | None
    run_dir: Path
    test_accuracy: float
    test_loss: float
    training_seconds: float


class ResumedState(Protocol):
    """What a pipeline's checkpoints.LoopState tells the loop: the step, the epoch's totals so far, earlier seconds."""

    @property
    def step(self) -> int: ...

    @property
    def epoch_totals(self) -> tuple[float, float, float]: ...

    @property
    def training_seconds(self) -> float: ...


@dataclasses.dataclass
class Position:
    """Where a training loop stands: its global step and the checkpoint it resumed from (None for a fresh run)."""

    step: int
    resumed: ResumedState | None
    started: float = dataclasses.field(default_factory=time.perf_counter)

    @classmethod
    def resuming(cls, resumed: ResumedState | None) -> Position:
        """At the checkpoint's step, or at step 0."""
        return cls(resumed.step if resumed else 0, resumed)

    def training_seconds(self) -> float:
        """Seconds of training, those of the attempts before a resume included."""
        before = self.resumed.training_seconds if self.resumed else 0.0
        return before + time.perf_counter() - self.started


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """The trained network on the test split: mean loss, accuracy and the class predicted for every example."""

    loss: float
    accuracy: float
    predictions: npt.NDArray[np.int64]  # (N,)


class FinalSummaryWriter(Protocol):
    """What each pipeline's summaries.RunWriters offers for the end of a run."""

    def write_final_summaries(
        self,
        *,
        hparams: Mapping[str, JSONScalar],
        test_accuracy: float,
        test_loss: float,
        confusion: npt.NDArray[np.int64],
        step: int,
    ) -> None: ...

    def close(self) -> None: ...


def start_run(config: TrainConfig, dataset_name: str, is_chief: bool) -> tuple[str, Path]:
    """The run's name and TensorBoard folder (<log dir>/<framework>/<run>), resuming the name a checkpoint folder holds.

    The chief claims --checkpoint-dir: a restarted run keeps its TensorBoard run, a folder of another run's
    checkpoints is refused in one sentence (UsageError).
    """
    run_name = config.resolved_run_name(dataset_name)
    if config.checkpoint_dir is not None and is_chief:
        artifacts.check_writable(config.checkpoint_dir)
        run_name = run_checkpoints.prepare_run(
            config.checkpoint_dir, config.run_name, run_name, config.resume_settings(dataset_name)
        )
    return run_name, Path(config.log_dir) / config.framework / run_name


def finish_summaries(
    writers: FinalSummaryWriter, config: TrainConfig, dataset: Dataset, evaluation: Evaluation
) -> None:
    """The HParams trial, the test metrics and the test confusion matrix at step = epochs; then close the writers."""
    writers.write_final_summaries(
        hparams=config.tensorboard_hparams(),
        test_accuracy=evaluation.accuracy,
        test_loss=evaluation.loss,
        confusion=metrics.confusion_matrix(dataset.test.labels, evaluation.predictions, dataset.num_classes),
        step=config.epochs,
    )
    writers.close()


def export_metadata(
    *,
    framework: str,
    framework_version: str,
    dataset: Dataset,
    spec: NetworkSpec,
    hyperparameters: Mapping[str, JSONScalar],
    evaluation: Evaluation,
    training_seconds: float,
    run_name: str,
    extra: Mapping[str, JSONValue],
) -> dict[str, object]:
    """The metadata.json of a run's export: the shared fields from the run, the framework's own in extra."""
    return artifacts.build_metadata(
        framework=framework,
        framework_version=framework_version,
        dataset=dataset.name,
        network=spec.to_dict(),
        hyperparameters=hyperparameters,
        test_accuracy=evaluation.accuracy,
        test_loss=evaluation.loss,
        training_seconds=training_seconds,
        run_name=run_name,
        extra=extra,
    )
