"""Checkpoints of the torch loop: a run interrupted and resumed ends with bitwise the weights of an uninterrupted one."""

from __future__ import annotations

import pytest

from tests import pipeline_checks, torch_exports

pytestmark = pytest.mark.slow

# Epochs of 37 steps, a checkpoint every 10: a crash at the end of the first epoch (step 37) resumes from step 30,
# so the resumed run replays steps, restores a mid-epoch position and the epoch's running totals.
SETTINGS = {"epochs": 3, "checkpoint_every": 10, "progress": False, "run_name": "resume"}
CHECKPOINTS = "step-*.pt"  # one file per saved checkpoint


def _config(root, checkpoints, **overrides):
    from torch_pipeline.train import TorchTrainConfig

    return pipeline_checks.checkpoint_config(TorchTrainConfig, SETTINGS, root, checkpoints, **overrides)


def _weights(result):
    import torch

    # torch.tensor copies: the arrays read from model.onnx are read-only, which torch.from_numpy warns about.
    return {name: torch.tensor(array) for name, array in torch_exports.onnx_weights(result.export_path).items()}


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
    # No --run-name either time: the restart must find its run's timestamped name in the checkpoint folder.
    config = _config(root, root / "checkpoints", run_name=None)
    expected_saved = ["step-000000020.pt", "step-000000030.pt"]
    return root, pipeline_checks.crash_and_restart(training, config, digits, CHECKPOINTS, expected_saved)


def test_resumed_run_has_bitwise_the_weights_of_an_uninterrupted_run(uninterrupted, resumed):
    import torch

    _, result = resumed
    expected, actual = _weights(uninterrupted), _weights(result)
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), f"{name} differs after resuming"
    assert result.test_accuracy == uninterrupted.test_accuracy


def test_resumed_run_logs_into_the_same_tensorboard_run_and_exports_once(resumed):
    pipeline_checks.assert_one_run_and_one_export(*resumed, framework="torch")


def test_checkpointing_leaves_training_unchanged_and_keeps_the_two_newest(tmp_path, digits, uninterrupted):
    import torch

    from torch_pipeline.train import train

    plain = train(_config(tmp_path, None), digits)
    expected, actual = _weights(uninterrupted), _weights(plain)
    assert all(torch.equal(expected[name], actual[name]) for name in expected)
    # 111 steps: checkpoints at 10, ..., 110 and the finished weights at 111; the two newest stay.
    kept = pipeline_checks.checkpoint_files(uninterrupted.run_dir.parents[2] / "checkpoints", CHECKPOINTS)
    assert kept == ["step-000000110.pt", "step-000000111.pt"]


def test_a_folder_of_another_runs_checkpoints_is_refused(uninterrupted, digits):
    from torch_pipeline.train import train

    root = uninterrupted.run_dir.parents[2]
    config = _config(root / "other", root / "checkpoints", batch_size=64)
    pipeline_checks.assert_another_runs_checkpoints_refused(train, config, digits)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_checkpoint_every_must_be_positive(value, capsys):
    from torch_pipeline.train import main

    pipeline_checks.assert_checkpoint_every_must_be_positive(main, value, capsys)


def test_the_launcher_refuses_another_runs_checkpoints_before_starting_workers(tmp_path, capsys):
    from torch_pipeline.launch import main
    from torch_pipeline.train import TorchTrainConfig

    pipeline_checks.assert_launcher_refuses_another_runs_checkpoints(
        main, ["--nproc-per-node", "2"], TorchTrainConfig, tmp_path, capsys
    )
