"""Checks both pipelines' tests make in the same words: TensorBoard layout, checkpoint resumption, one-sentence errors.

Each pipeline keeps its own test files (tests mirror the source tree); what differs between the two (how weights
are read back, the checkpoint file names, the launcher's flags) stays there, and the checks themselves live here.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import psutil
import pytest

from experiment import artifacts, metrics
from experiment.checkpoints import write_run_record
from experiment.config import TrainConfig
from experiment.errors import UsageError
from tests.distributed_runs import run_module, version_folders, wait_for_descendant, wait_for_file
from tests.event_files import tags_by_plugin


def assert_keras_tensorboard_layout(run_dir: Path) -> None:
    """The run holds what Keras's TensorBoard callback writes: epoch scalars, weight histograms, graphs, test
    metrics, the confusion matrix and a finished HParams trial."""
    for subdir in (metrics.TRAIN_SUBDIR, metrics.VALIDATION_SUBDIR):
        assert tags_by_plugin(run_dir / subdir)["scalars"] == set(metrics.SCALAR_TAGS)
    train_tags = tags_by_plugin(run_dir / metrics.TRAIN_SUBDIR)
    assert {"hidden_0/kernel/histogram", "logits/bias/histogram"} <= train_tags["histograms"]
    assert train_tags["graph"], "the op graph is missing"
    assert train_tags["conceptual_graph"] == {metrics.CONCEPTUAL_GRAPH}
    root_tags = tags_by_plugin(run_dir)
    assert {metrics.TEST_ACCURACY, metrics.TEST_LOSS} <= root_tags["scalars"]
    assert metrics.CONFUSION_MATRIX in root_tags["images"]
    assert root_tags["hparams"] == {"_hparams_/session_start_info", "_hparams_/session_end_info"}


# ---- checkpoints -------------------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    """Raised inside training to stand for a process that dies."""


def checkpoint_config(
    config_class: type[TrainConfig], settings: dict[str, Any], root: Path, checkpoints: Path | None, **overrides: Any
) -> TrainConfig:
    """settings plus overrides, exporting and logging under root, checkpointing into checkpoints."""
    values = {**settings, "output_dir": root / "models", "log_dir": root / "runs", "checkpoint_dir": checkpoints}
    return config_class(**{**values, **overrides})


def crash_and_restart(
    training: ModuleType, config: TrainConfig, dataset: Any, checkpoint_pattern: str, expected_saved: list[str]
) -> Any:
    """Run training.train(config) until it first evaluates (after the last step of epoch 1), where it dies; check
    which checkpoint files it left (names matching checkpoint_pattern), then start it again with the same config."""
    original_evaluate = training.evaluate

    def crash(*arguments: Any, **keywords: Any) -> None:
        raise SimulatedCrash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "evaluate", crash)
        with pytest.raises(SimulatedCrash):
            training.train(config, dataset)
    assert training.evaluate is original_evaluate
    assert checkpoint_files(config.checkpoint_dir, checkpoint_pattern) == expected_saved, (
        "the crash should come 7 steps after a checkpoint"
    )
    return training.train(config, dataset)


def checkpoint_files(directory: Path, pattern: str) -> list[str]:
    """The names of the checkpoint files in directory matching pattern, sorted."""
    return sorted(path.name for path in Path(directory).glob(pattern))


def assert_another_runs_checkpoints_refused(train: Callable[..., Any], config: TrainConfig, dataset: Any) -> None:
    """config (batch size 64) pointed at the checkpoints of a batch-size-32 run: refused in one sentence."""
    with pytest.raises(UsageError, match=r"batch_size 32, not 64"):
        train(config, dataset)


def assert_one_run_and_one_export(root: Path, result: Any, framework: str) -> None:
    """The resumed run logged into the run named in run.json, the only run, and exported exactly one version."""
    run_name = json.loads((root / "checkpoints" / "run.json").read_text())["run_name"]
    assert [path.name for path in (root / "runs" / framework).iterdir()] == [run_name] == [result.run_dir.name]
    exported = (root / "models" / framework / "digits").iterdir()
    assert [path.name for path in exported if path.name != artifacts.PUBLISH_LOCK] == ["1"]  # no stray staging folder


def assert_checkpoint_every_must_be_positive(main: Callable[[list[str]], int], value: str, capsys: Any) -> None:
    """--checkpoint-every 0 or negative: exit 2 with one sentence."""
    assert main(["--checkpoint-every", value]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--checkpoint-every must be a positive integer, got {value}.")


def assert_launcher_refuses_another_runs_checkpoints(
    launcher_main: Callable[[list[str]], int],
    launcher_flags: list[str],
    config_class: type[TrainConfig],
    root: Path,
    capsys: Any,
) -> None:
    """A checkpoint folder of a run with another batch size: the launcher says so in one line, before any worker."""
    write_run_record(root / "checkpoints", "old", config_class(batch_size=64).resume_settings("digits"))
    places = ["--output-dir", str(root / "models"), "--log-dir", str(root / "runs")]
    assert launcher_main([*launcher_flags, "--", "--checkpoint-dir", str(root / "checkpoints"), *places]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "batch_size 64, not 32" in error and "Traceback" not in error


# ---- distributed runs -----------------------------------------------------------------------------------------


def places(root: Path) -> list[str]:
    """The training flags that keep a run's exports and logs under root."""
    return ["--output-dir", str(root / "models"), "--log-dir", str(root / "runs")]


def checksummed_run(launcher: str, launcher_flags: list[str], flags: list[str], root: Path) -> Path:
    """Run `python -m launcher launcher_flags -- flags` to success as run 'two', writing per-step weight checksums,
    exports and logs under root; return root."""
    run_flags = [*flags, *places(root), "--run-name", "two", "--weight-checksums", str(root / "checksums")]
    completed = run_module(launcher, [*launcher_flags, "--", *run_flags], timeout=200)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return root


def assert_identical_replicas(first: Path, second: Path, steps: int) -> None:
    """Two processes' per-step weight checksum files: one line per step, equal, and changing at every step."""
    first_lines, second_lines = first.read_text().splitlines(), second.read_text().splitlines()
    assert len(first_lines) == steps, "one checksum per optimizer step"
    assert first_lines == second_lines, "the two processes' weights differ after some step"
    assert len({line.split()[-1] for line in first_lines}) == steps, "the weights should change at every step"


def file_layout(path: Path) -> list[str]:
    """Every file and folder under path, relative to it, sorted."""
    return sorted(str(entry.relative_to(path)) for entry in path.rglob("*"))


def kill_once_started(
    launcher: subprocess.Popen,
    is_victim: Callable[[psutil.Process], bool],
    started: tuple[Path, str],
    timeout: float,
) -> tuple[str, str]:
    """SIGKILL the launcher's first child for which is_victim holds, once a file matching started appears;
    return the launcher's (stdout, stderr) when it exits within timeout (it is killed otherwise)."""
    try:
        victim = wait_for_descendant(launcher, is_victim, timeout=60)
        wait_for_file(*started, timeout=90)
        victim.send_signal(signal.SIGKILL)
        return launcher.communicate(timeout=timeout)
    finally:
        if launcher.poll() is None:
            launcher.kill()


def assert_resumed_mid_run(stdout: str, models: Path, total_steps: int, accuracy: float) -> None:
    """The second attempt resumed from a checkpoint strictly inside the run and exported one well-trained version."""
    resumed_at = int(re.search(r"from the checkpoint of step (\d+)", stdout).group(1))
    assert 0 < resumed_at < total_steps, "the second attempt should resume mid-run, not start over or at the end"
    [export] = version_folders(models)
    assert artifacts.read_metadata(export)["test_accuracy"] >= accuracy


def assert_one_sentence_error(completed: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit status 2 and a single line on stderr holding every fragment."""
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and all(fragment in completed.stderr for fragment in fragments)
