"""Checkpoints of the Keras loop: a run interrupted and resumed ends with the weights of an uninterrupted one.

Measured here: identical to the bit (the seeded tf.data stream, the dropout seed generators' state and Adam's
moments are all restored). The assertion allows the 1e-6 a different op scheduling could introduce.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests import pipeline_checks

pytestmark = pytest.mark.slow

# Epochs of 37 steps, a checkpoint every 10: a crash at the end of the first epoch (step 37) resumes from step 30,
# so the resumed run replays steps, restores a mid-epoch position and the epoch's running totals.
SETTINGS = {"epochs": 3, "checkpoint_every": 10, "verbose": 0, "run_name": "resume"}
TOLERANCE = 1e-6
CHECKPOINTS = "ckpt-*.index"  # one file per saved checkpoint


def _config(root, checkpoints, **overrides):
    from tf_pipeline.train import TFTrainConfig

    return pipeline_checks.checkpoint_config(TFTrainConfig, SETTINGS, root, checkpoints, **overrides)


def _weights(result) -> dict[str, np.ndarray]:
    """The exported dense layers' kernels and biases by name (the export also holds dropout seed generators,
    whose names Keras numbers per process)."""
    import tensorflow as tf

    variables = tf.saved_model.load(str(result.export_path)).variables
    return {variable.name: variable.numpy() for variable in variables if not variable.name.startswith("seed_")}


def _assert_same_weights(expected, actual):
    assert sorted(expected) == sorted(actual) and len(expected) == 6, "three dense layers' kernels and biases"
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=0, atol=TOLERANCE, err_msg=name)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits):
    from tf_pipeline.train import train

    root = tmp_path_factory.mktemp("tf_uninterrupted")
    return train(_config(root, root / "checkpoints"), digits)


@pytest.fixture(scope="module")
def resumed(tmp_path_factory, digits):
    """The same run, crashed at the end of its first epoch, then started again with the same command."""
    from tf_pipeline import train as training

    root = tmp_path_factory.mktemp("tf_resumed")
    # No --run-name either time: the restart must find its run's timestamped name in the checkpoint folder.
    config = _config(root, root / "checkpoints", run_name=None)
    expected_saved = ["ckpt-20.index", "ckpt-30.index"]
    return root, pipeline_checks.crash_and_restart(training, config, digits, CHECKPOINTS, expected_saved)


def test_resumed_run_has_the_weights_of_an_uninterrupted_run(uninterrupted, resumed):
    _, result = resumed
    _assert_same_weights(_weights(uninterrupted), _weights(result))
    assert result.test_accuracy == uninterrupted.test_accuracy


def test_resumed_run_logs_into_the_same_tensorboard_run_and_exports_once(resumed):
    pipeline_checks.assert_one_run_and_one_export(*resumed, framework="tf")


def test_checkpointing_leaves_training_unchanged_and_keeps_the_two_newest(tmp_path, digits, uninterrupted):
    from tf_pipeline.train import train

    plain = train(_config(tmp_path, None), digits)
    _assert_same_weights(_weights(uninterrupted), _weights(plain))
    # 111 steps: checkpoints at 10, ..., 110 and the finished weights at 111; the two newest stay.
    kept = pipeline_checks.checkpoint_files(uninterrupted.run_dir.parents[2] / "checkpoints", CHECKPOINTS)
    assert kept == ["ckpt-110.index", "ckpt-111.index"]


def test_a_folder_of_another_runs_checkpoints_is_refused(uninterrupted, digits):
    from tf_pipeline.train import train

    root = uninterrupted.run_dir.parents[2]
    config = _config(root / "other", root / "checkpoints", batch_size=64)
    pipeline_checks.assert_another_runs_checkpoints_refused(train, config, digits)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_checkpoint_every_must_be_positive(value, capsys):
    from tf_pipeline.train import main

    pipeline_checks.assert_checkpoint_every_must_be_positive(main, value, capsys)


def test_the_launcher_refuses_another_runs_checkpoints_before_starting_workers(tmp_path, capsys):
    from tf_pipeline.launch import main
    from tf_pipeline.train import TFTrainConfig

    pipeline_checks.assert_launcher_refuses_another_runs_checkpoints(
        main, ["--nproc", "2"], TFTrainConfig, tmp_path, capsys
    )
