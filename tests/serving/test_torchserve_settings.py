"""Overrides of an archive's workers and batching: written where TorchServe 0.12 honours them (a model_snapshot, fast)
and described by a real TorchServe as given, though the archive's own model-config.yaml says otherwise (slow)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

from serving.torchserve import config
from serving.torchserve.config import TorchServePorts

MODEL_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "torchserve" / "model-config.yaml"


def write_archive(store: Path, version: int, model_config: str | None) -> Path:
    """A minimal digits.mar of this version, carrying model_config as its model-config.yaml when given."""
    store.mkdir(parents=True, exist_ok=True)
    path = store / "digits.mar"
    manifest: dict = {"model": {"modelName": "digits", "modelVersion": str(version)}}
    with zipfile.ZipFile(path, "w") as archive:
        if model_config is not None:
            manifest["model"]["configFile"] = "model-config.yaml"
            archive.writestr("model-config.yaml", model_config)
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


def snapshot_settings(path: Path) -> dict:
    """The settings of the one model version a written config.properties' model_snapshot names."""
    properties = config.read_properties(path)
    assert "models" not in properties  # the archive's model-config.yaml would win over it at start
    snapshot = json.loads(properties["model_snapshot"])
    [(version, settings)] = snapshot["models"]["digits"].items()
    assert snapshot["modelCount"] == 1
    return {"version": version, **settings}


def test_overrides_go_into_a_snapshot_beside_the_archives_other_settings(tmp_path):
    store = tmp_path / "store"
    archive = write_archive(store, 7, MODEL_CONFIG.read_text())
    carried = yaml.safe_load(MODEL_CONFIG.read_text())
    assert config.archive_settings(archive) == {
        key: carried[key] for key in ("minWorkers", "maxWorkers", "batchSize", "maxBatchDelay")
    }
    path = config.write_config(tmp_path / "run" / "config.properties", store, TorchServePorts(), batch_size=1)
    settings = snapshot_settings(path)
    assert settings["version"] == "7" and settings["marName"] == "digits.mar" and settings["defaultVersion"] is True
    assert settings["batchSize"] == 1 != carried["batchSize"]
    # What was not overridden keeps the archive's value: the snapshot sets every setting it names.
    assert settings["maxBatchDelay"] == carried["maxBatchDelay"]
    assert settings["minWorkers"] == settings["maxWorkers"] == carried["minWorkers"]

    path = config.write_config(tmp_path / "run2" / "config.properties", store, TorchServePorts(), workers=1)
    settings = snapshot_settings(path)
    assert settings["minWorkers"] == settings["maxWorkers"] == 1 and settings["batchSize"] == carried["batchSize"]


def test_an_archive_without_a_model_config_gets_torchserves_defaults_for_the_rest(tmp_path):
    store = tmp_path / "store"
    write_archive(store, 3, None)
    path = config.write_config(tmp_path / "config.properties", store, TorchServePorts(), max_batch_delay_ms=5)
    settings = snapshot_settings(path)
    assert settings["maxBatchDelay"] == 5 and settings["batchSize"] == config.DEFAULT_BATCH_SIZE


def test_without_overrides_the_archive_alone_decides(tmp_path):
    store = tmp_path / "store"
    write_archive(store, 1, MODEL_CONFIG.read_text())
    properties = config.read_properties(config.write_config(tmp_path / "config.properties", store, TorchServePorts()))
    assert "model_snapshot" not in properties and "models" not in properties
    assert properties["load_models"] == "digits.mar"


# ---- a real TorchServe ----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.server
def test_torchserve_describes_the_overridden_batch_size_and_workers(torch_smoke_run, tmp_path):
    from serving import runtime
    from serving.runtime import torchserve

    store = torch_smoke_run.export_path.parent.parent / "model-store"
    carried = config.archive_settings(store / "digits.mar")
    assert carried["batchSize"] > 1 and carried["minWorkers"] > 1  # else the overrides below would prove nothing
    instance = torchserve.TorchServeInstance.on_free_ports(tmp_path / "run")
    spec = torchserve.spec(instance, store, batch_size=1, max_batch_delay_ms=5, workers=1)
    with (
        runtime.start(spec, tmp_path / "torchserve.log", timeout=240),
        spec.endpoint("torchserve-rest").client(timeout=30) as client,
    ):
        described = client.describe()
        probabilities, _ = client.predict(np.zeros((3, 8, 8), dtype=np.float32))
    assert (described["batchSize"], described["maxBatchDelay"]) == (1, 5)
    assert described["minWorkers"] == described["maxWorkers"] == len(described["workers"]) == 1
    assert np.asarray(probabilities).shape == (3, 10)
