"""Smoke run of the torch pipeline: every artifact of a one-epoch run, and the full run's accuracy."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from experiment import artifacts
from tests import torch_exports
from tests.pipeline_checks import assert_keras_tensorboard_layout


def test_smoke_run_writes_the_same_tensorboard_tags_as_keras(torch_smoke_run):
    assert_keras_tensorboard_layout(torch_smoke_run.run_dir)


def test_smoke_run_exports_onnx_alone_and_metadata(torch_smoke_run):
    assert torch_smoke_run.version == 1
    # The default formats: ONNX only (the .pt2 and the deprecated TorchScript are asked for with --formats).
    assert sorted(path.name for path in torch_smoke_run.export_path.iterdir()) == ["metadata.json", "model.onnx"]
    metadata = json.loads((torch_smoke_run.export_path / artifacts.METADATA_FILE).read_text())
    assert metadata["framework"] == "torch" and metadata["dataset"] == "digits"
    assert metadata["framework_version"].startswith("2.13")
    assert metadata["test_accuracy"] == pytest.approx(torch_smoke_run.test_accuracy, abs=1e-6)
    for key in ("network", "hyperparameters", "training_seconds", "created_at", "git_commit"):
        assert key in metadata


def test_smoke_run_builds_the_model_archive(torch_smoke_run):
    archive = torch_smoke_run.export_path.parent.parent / artifacts.MODEL_STORE / "digits.mar"
    with zipfile.ZipFile(archive) as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
    assert {"model.onnx", "handler.py", "metadata.json", "model-config.yaml"} <= names
    assert manifest["model"]["modelName"] == "digits" and manifest["model"]["modelVersion"] == "1"
    # One archive per version for the live roll-out, and the latest under the name TorchServe loads at start.
    assert (archive.parent / "digits-1.mar").read_bytes() == archive.read_bytes()
    leftovers = [entry.name for entry in archive.parent.iterdir() if entry.name not in ("digits.mar", "digits-1.mar")]
    assert leftovers == []


def test_onnx_signature_matches_design(torch_smoke_run, digits):
    import onnx

    model = onnx.load(str(torch_smoke_run.export_path / artifacts.ONNX_FILE))
    onnx.checker.check_model(model, full_check=True)
    assert [value.name for value in model.graph.input] == ["images"]
    assert [value.name for value in model.graph.output] == ["probabilities", "classes"]
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.HasField("dim_value")  # a dynamic batch dimension
    probabilities, classes = torch_exports.onnx_outputs(torch_smoke_run.export_path, digits.test.images[:5])
    assert probabilities.dtype == np.float32 and probabilities.shape == (5, 10)
    assert classes.dtype == np.int64 and classes.shape == (5,)


def test_default_training_reaches_095(torch_trained):
    assert torch_trained.test_accuracy >= 0.95
