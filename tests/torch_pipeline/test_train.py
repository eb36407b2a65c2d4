"""Smoke run of the torch pipeline: every artifact of a one-epoch run, and the full run's accuracy."""

from __future__ import annotations

import json
import zipfile

import pytest

from experiment import artifacts
from tests.pipeline_checks import assert_keras_tensorboard_layout


def test_smoke_run_writes_the_same_tensorboard_tags_as_keras(torch_smoke_run):
    assert_keras_tensorboard_layout(torch_smoke_run.run_dir)


def test_smoke_run_exports_torchscript_and_metadata(torch_smoke_run):
    assert torch_smoke_run.version == 1
    assert (torch_smoke_run.export_path / artifacts.TORCHSCRIPT_FILE).is_file()
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
    assert {"model.pt", "handler.py", "metadata.json", "model-config.yaml"} <= names
    assert manifest["model"]["modelName"] == "digits" and manifest["model"]["modelVersion"] == "1"
    # One archive per version for the live roll-out, and the latest under the name TorchServe loads at start.
    assert (archive.parent / "digits-1.mar").read_bytes() == archive.read_bytes()
    leftovers = [entry.name for entry in archive.parent.iterdir() if entry.name not in ("digits.mar", "digits-1.mar")]
    assert leftovers == []


def test_torchscript_outputs_match_design(torch_smoke_run, digits):
    import torch

    module = torch.jit.load(str(torch_smoke_run.export_path / artifacts.TORCHSCRIPT_FILE))
    outputs = module(torch.from_numpy(digits.test.images[:5]))
    assert set(outputs) == {"probabilities", "classes"}
    assert outputs["probabilities"].dtype == torch.float32 and tuple(outputs["probabilities"].shape) == (5, 10)
    assert outputs["classes"].dtype == torch.int64 and tuple(outputs["classes"].shape) == (5,)


def test_default_training_reaches_095(torch_trained):
    assert torch_trained.test_accuracy >= 0.95
