"""Checkpoints of the torch loop: a run interrupted and resumed ends with bitwise the weights of an uninterrupted one."""

from __future__ import annotations

import json

import pytest

from experiment.errors import UsageError

pytestmark = pytest.mark.slow

# Epochs of 37 steps, a checkpoint every 10: a crash at the end of the first epoch (step 37) resumes from step 30,
# so the resumed run replays steps, restores a mid-epoch position and the epoch's running totals.
SETTINGS = {"epochs": 3, "checkpoint_every": 10, "progress": False, "run_name": "resume"}


class SimulatedCrash(Exception):
    """Raised inside training to stand for a process that dies."""


def _config(root, checkpoints, **overrides):
    from torch_pipeline.train import TorchTrainConfig

    values = {**SETTINGS, "output_dir": root / "models", "log_dir": root / "runs", "checkpoint_dir": checkpoints}
    return TorchTrainConfig(**{**values, **overrides})


def _weights(result):
    import torch

    return torch.jit.load(str(result.export_path / "model.pt")).state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    from torch_pipeline.train import train

    root = tmp_path_factory.mktemp("torch_uninterrupted")
    return train(_config(root, root / "checkpoints"), digits)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, digits):
    """The same run, crashed at the end of its first epoch, then started again with the same command."""
    from torch_pipeline import train as training

    root = tmp_path_factory.mktemp("torch_resumed")
    original_evaluate = training.evaluate

    def crash(*arguments, **keywords):
        raise SimulatedCrash

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "evaluate", crash)  # first called after the last step of epoch 1
        with pytest.raises(SimulatedCrash):
            training.train(_config(root, root / "checkpoints", run_name=None), digits)
    assert training.evaluate is original_evaluate
    saved = sorted(path.name for path in (root / "checkpoints").glob("step-*.pt"))
    assert saved == ["step-000000020.pt", "step-000000030.pt"], "the crash should come 7 steps after a checkpoint"
    # No --run-name either time: the restart must find its run's timestamped name in the checkpoint folder.
    return root, training.train(_config(root, root / "checkpoints", run_name=None), digits)


def test_resumed_run_has_bitwise_the_weights_of_an_uninterrupted_run(uninterrupted, resumed):
    import torch

    _, result = resumed
    expected, actual = _weights(uninterrupted), _weights(result)
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"
    assert result.test_accuracy == uninterrupted.test_accuracy


def test_resumed_run_logs_into_the_same_tensorboard_run_and_exports_once(resumed):
    root, result = resumed
    run_name = json.loads((root / "checkpoints" / "run.json").read_text())["run_name"]
    assert [path.name for path in (root / "runs" / "torch").iterdir()] == [run_name] == [result.run_dir.name]
    assert [path.name for path in (root / "models" / "torch" / "digits").iterdir()] == ["1"]


def test_checkpointing_leaves_training_unchanged_and_keeps_the_two_newest(tmp_path, digits, uninterrupted):
    import torch

    from torch_pipeline.train import train

    plain = train(_config(tmp_path, None), digits)
    expected, actual = _weights(uninterrupted), _weights(plain)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    # 111 steps: checkpoints at 10, ..., 110 and the finished weights at 111; the two newest stay.
    kept = sorted(path.name for path in (uninterrupted.run_dir.parents[2] / "checkpoints").glob("step-*.pt"))
    assert kept == ["step-000000110.pt", "step-000000111.pt"]


def test_a_folder_of_another_runs_checkpoints_is_refused(uninterrupted, digits):
    from torch_pipeline.train import train

    checkpoints = uninterrupted.run_dir.parents[2] / "checkpoints"
    with pytest.raises(UsageError, match=r"batch_size 32, not 64"):
        train(_config(uninterrupted.run_dir.parents[2] / "other", checkpoints, batch_size=64), digits)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_checkpoint_every_must_be_positive(value, capsys):
    from torch_pipeline.train import main

    assert main(["--checkpoint-every", value]) == 2
    assert capsys.readouterr().err.strip().endswith(f"--checkpoint-every must be a positive integer, got {value}.")


def test_the_launcher_refuses_another_runs_checkpoints_before_starting_workers(tmp_path, capsys):
    from experiment.checkpoints import write_run_record
    from torch_pipeline.launch import main
    from torch_pipeline.train import TorchTrainConfig

    write_run_record(tmp_path / "checkpoints", "old", TorchTrainConfig(batch_size=64).resume_settings("digits"))
    places = ["--output-dir", str(tmp_path / "models"), "--log-dir", str(tmp_path / "runs")]
    assert main(["--nproc-per-node", "2", "--", "--checkpoint-dir", str(tmp_path / "checkpoints"), *places]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "batch_size 64, not 32" in error and "Traceback" not in error
