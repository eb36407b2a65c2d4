"""Smoke run of the Keras pipeline: every artifact of a one-epoch run, and the full run's accuracy."""

from __future__ import annotations

import json

import pytest

from experiment import artifacts
from tests.pipeline_checks import assert_keras_tensorboard_layout


def test_smoke_run_writes_tensorboard_tags(tf_smoke_run):
    assert_keras_tensorboard_layout(tf_smoke_run.run_dir)


def test_smoke_run_exports_a_versioned_saved_model(tf_smoke_run):
    assert tf_smoke_run.version == 1 and tf_smoke_run.export_path.name == "1"
    assert (tf_smoke_run.export_path / "saved_model.pb").is_file()
    assert not [entry for entry in tf_smoke_run.export_path.parent.iterdir() if entry.name.startswith(".")]
    metadata = json.loads((tf_smoke_run.export_path / artifacts.METADATA_FILE).read_text())
    assert metadata["framework"] == "tensorflow" and metadata["dataset"] == "digits"
    assert metadata["network"]["input_shape"] == [8, 8] and metadata["hyperparameters"]["epochs"] == 1
    assert metadata["test_accuracy"] == pytest.approx(tf_smoke_run.test_accuracy, abs=1e-6)
    for key in ("framework_version", "training_seconds", "created_at", "git_commit"):
        assert key in metadata


def test_saved_model_signature_matches_design(tf_smoke_run):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(tf_smoke_run.export_path))
    signature = loaded.signatures["serving_default"]
    (input_spec,) = signature.structured_input_signature[1].values()
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert input_spec.dtype == tf.float32 and input_spec.shape.as_list() == [None, 8, 8]
    outputs = signature.structured_outputs
    assert set(outputs) == {"probabilities", "classes"}
    assert outputs["probabilities"].dtype == tf.float32 and outputs["probabilities"].shape.as_list() == [None, 10]
    assert outputs["classes"].dtype == tf.int64 and outputs["classes"].shape.as_list() == [None]


def test_second_export_takes_the_next_version(tf_smoke_run, digits):
    from tf_pipeline.train import TFTrainConfig, train

    root = tf_smoke_run.export_path.parent.parent.parent.parent
    config = TFTrainConfig(epochs=1, output_dir=root / "models", log_dir=root / "runs", verbose=0, run_name="again")
    second = train(config, digits)
    assert second.version == 2
    assert artifacts.list_versions(tf_smoke_run.export_path.parent) == [1, 2]


def test_default_training_reaches_095(tf_trained):
    assert tf_trained.test_accuracy >= 0.95


def test_exported_accuracy_matches_metadata(tf_trained, digits):
    import tensorflow as tf

    signature = tf.saved_model.load(str(tf_trained.export_path)).signatures["serving_default"]
    classes = signature(images=tf.constant(digits.test.images))["classes"].numpy()
    metadata = artifacts.read_metadata(tf_trained.export_path)
    assert (classes == digits.test.labels).mean() == pytest.approx(metadata["test_accuracy"], abs=1e-6)
