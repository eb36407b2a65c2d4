"""TorchServe's live roll-out: its decisions against a fake management API (fast), then a real TorchServe under load
while a new version is trained, and a corrupt archive dropped into its model store (slow)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from serving.clients import ServingError, TorchServeClient, TorchServeError
from serving.torchserve import rollout
from serving.torchserve.rollout import Rollout, RolloutSettings
from tests.serving.load_recorder import LoadRecorder

MODEL_CONFIG = Path(__file__).resolve().parents[2] / "serving" / "torchserve" / "model-config.yaml"


def write_archive(store: Path, version: int, manifest_version: int | None = None) -> Path:
    """A minimal digits-<version>.mar whose manifest names manifest_version (default: version)."""
    path = store / f"digits-{version}.mar"
    with zipfile.ZipFile(path, "w") as archive:
        manifest = {"model": {"modelName": "digits", "modelVersion": str(manifest_version or version)}}
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
    return path


class FakeManagement:
    """The management calls Rollout makes, against an in-memory TorchServe; records every change in order."""

    model_name = "digits"

    def __init__(self, default: int = 1, workers_become_ready: bool = True, refuse_register: bool = False) -> None:
        self.versions = {str(default): "READY"}
        self.workers: dict[str, int] = {}  # version → workers, once scaled
        self.default = str(default)
        self.workers_become_ready = workers_become_ready
        self.refuse_register = refuse_register
        self.calls: list[tuple] = []

    def describe(self, customized: bool = False, version=None) -> dict:
        version = self.default if version is None else str(version)
        if version not in self.versions:
            raise TorchServeError(f"Model version: {version} does not exist for model: digits", 404)
        status = self.versions[version]
        workers = [{"status": status}] * self.workers.get(version, 2)
        return {"modelVersion": version, "minWorkers": 2, "workers": workers}

    def list_versions(self) -> list[dict]:
        return [{"modelVersion": version} for version in self.versions]

    def register(self, archive: str, batch_size=None, max_batch_delay_ms=None) -> None:
        self.calls.append(("register", archive, batch_size, max_batch_delay_ms))
        if self.refuse_register:
            raise TorchServeError(f"Failed to save model: {archive}", 500)
        version = archive.removeprefix("digits-").removesuffix(".mar")
        self.versions[version] = "READY" if self.workers_become_ready else "UNLOADING"
        self.workers.pop(version, None)

    def scale_workers(self, version, workers: int) -> None:
        self.calls.append(("scale", str(version), workers))
        self.workers[str(version)] = workers

    def set_default(self, version) -> None:
        self.calls.append(("set-default", str(version)))
        self.default = str(version)

    def unregister(self, version) -> None:
        self.calls.append(("unregister", str(version)))
        if str(version) not in self.versions:
            raise TorchServeError(f"Model version: {version} does not exist for model: digits", 404)
        del self.versions[str(version)]


FAST = RolloutSettings(
    ready_timeout_seconds=0.5,
    drain_seconds=0.0,
    retire_timeout_seconds=0.5,
    unregister_retry_seconds=0.0,
    check_model=False,
)


def test_a_newer_archive_is_registered_made_default_then_the_old_version_unregistered(tmp_path):
    write_archive(tmp_path, 1)
    write_archive(tmp_path, 2)
    management = FakeManagement(default=1)
    assert Rollout(management, tmp_path, FAST).poll_once() == 2
    assert management.calls == [
        ("register", "digits-2.mar", None, None),
        ("set-default", "2"),
        ("scale", "1", 0),
        ("unregister", "1"),
    ]
    assert management.versions == {"2": "READY"} and management.default == "2"


def test_nothing_happens_while_the_newest_archive_is_the_default_version(tmp_path):
    write_archive(tmp_path, 1)
    (tmp_path / "digits.mar").write_bytes(b"the latest, under the name TorchServe loads at start")
    (tmp_path / "other-5.mar").write_bytes(b"another model's archive")
    management = FakeManagement(default=1)
    assert Rollout(management, tmp_path, FAST).poll_once() is None
    assert management.calls == []


def test_polls_ask_torchserve_only_for_a_newer_archive_or_every_check_seconds(tmp_path):
    # Each question is a line in TorchServe's access log: a poll with nothing new on disk asks nothing.
    write_archive(tmp_path, 1)
    asked = []

    class Counting(FakeManagement):
        def describe(self, customized=False, version=None):
            asked.append(version)
            return super().describe(customized, version)

    management = Counting(default=1)
    watcher = Rollout(management, tmp_path, FAST)
    for _ in range(5):
        assert watcher.poll_once() is None
    assert asked == [None]  # the first poll learns the default version; the next four only scan the model store
    write_archive(tmp_path, 2)
    assert watcher.poll_once() == 2 and management.default == "2"
    asked.clear()
    assert watcher.poll_once() is None and asked == []
    every_poll = Rollout(Counting(default=1), tmp_path, dataclasses.replace(FAST, check_seconds=0.0))
    every_poll.poll_once(), every_poll.poll_once()
    assert asked.count(None) >= 2  # with check_seconds 0, every poll asks again


def test_overrides_of_the_archives_settings_reach_each_new_version(tmp_path):
    write_archive(tmp_path, 2)
    management = FakeManagement(default=1)
    settings = dataclasses.replace(FAST, batch_size=1, max_batch_delay_ms=50, workers=1)
    Rollout(management, tmp_path, settings).poll_once()
    assert management.calls[:2] == [("register", "digits-2.mar", 1, 50), ("scale", "2", 1)]


@pytest.mark.parametrize(
    "case, management",
    [
        ("unreadable", FakeManagement()),
        ("manifest says another version", FakeManagement()),
        ("refused by TorchServe", FakeManagement(refuse_register=True)),
        ("workers never READY", FakeManagement(workers_become_ready=False)),
    ],
)
def test_a_broken_archive_leaves_the_old_version_and_is_not_retried_until_changed(tmp_path, case, management, caplog):
    if case == "unreadable":
        path = tmp_path / "digits-2.mar"
        path.write_bytes(b"not a zip")
    else:
        path = write_archive(tmp_path, 2, manifest_version=3 if case == "manifest says another version" else None)
    watcher = Rollout(management, tmp_path, FAST)
    assert watcher.poll_once() is None
    assert management.default == "1" and set(management.versions) == {"1"}  # a registered version is removed again
    assert ("unregister", "1") not in management.calls
    assert sum("Refused digits-2.mar" in record.message for record in caplog.records) == 1
    assert "version 1 keeps serving" in caplog.text
    calls = len(management.calls)
    assert watcher.poll_once() is None and len(management.calls) == calls  # the same file: not tried again
    # A fixed archive under the same name (a new size and time) is tried again, and now rolls out.
    management.refuse_register, management.workers_become_ready = False, True
    path.unlink()
    write_archive(tmp_path, 2)
    os.utime(tmp_path / "digits-2.mar", ns=(time.time_ns() + 10**9,) * 2)
    assert watcher.poll_once() == 2 and management.default == "2"


def test_a_torchserve_without_the_model_api_is_named_as_the_reason(tmp_path, caplog):
    write_archive(tmp_path, 2)

    class NoModelApi(FakeManagement):
        def register(self, archive, batch_size=None, max_batch_delay_ms=None):
            raise TorchServeError("Requested method is not allowed, please refer to API document.", 405)

    management = NoModelApi()
    assert Rollout(management, tmp_path, FAST).poll_once() is None
    assert "Refused digits-2.mar: TorchServe's model API is off (start it with --enable-model-api" in caplog.text
    assert management.default == "1"


def test_while_torchserve_is_not_up_the_watcher_waits(tmp_path):
    write_archive(tmp_path, 2)

    class Down(FakeManagement):
        def describe(self, customized=False, version=None):
            raise ServingError("Cannot reach http://127.0.0.1:1: ConnectionError.")

    management = Down()
    assert Rollout(management, tmp_path, FAST).poll_once() is None
    assert management.calls == []


def test_versioned_archives_reads_only_this_models_integer_versions(tmp_path):
    for name in ("digits-1.mar", "digits-12.mar", "digits.mar", "digits-x.mar", "digits-3.mar.partial", "mnist-4.mar"):
        (tmp_path / name).write_bytes(b"")
    assert {version: path.name for version, path in rollout.versioned_archives(tmp_path, "digits").items()} == {
        1: "digits-1.mar",
        12: "digits-12.mar",
    }


def test_the_watcher_command_refuses_a_missing_model_store_in_one_sentence(tmp_path, capsys):
    assert rollout.main(["--model-store", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"python -m serving.torchserve.rollout: error: --model-store {tmp_path / 'missing'} is not a folder."
    )


# ---- a real TorchServe -------------------------------------------------------------------------------------------


def _answer_recorder(clients: list, image: np.ndarray) -> LoadRecorder[np.ndarray]:
    """Clients predicting one image in a loop, recording (time, client, probabilities) per answer and every failure."""
    return LoadRecorder([(client.description, functools.partial(_probabilities, client, image)) for client in clients])


def _probabilities(client, image: np.ndarray) -> np.ndarray:
    probabilities, _ = client.predict(image)
    return probabilities[0]


def _in_process(models_dir: Path, version: int, image: np.ndarray) -> np.ndarray:
    from tests import torch_exports

    return torch_exports.onnx_outputs(models_dir / "torch" / "digits" / str(version), image)[0][0]


def _wait_for(condition, timeout: float, what: str) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > timeout:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.1)
    return time.monotonic() - began


@pytest.mark.slow
def test_a_new_training_run_rolls_out_under_load_and_a_corrupt_archive_is_refused(torch_trained, digits, tmp_path):
    from serving import runtime
    from serving.runtime import torchserve
    from torch_pipeline.train import TorchTrainConfig, train

    models_dir = tmp_path / "models"
    shutil.copytree(torch_trained.export_path.parent.parent, models_dir / "torch", symlinks=False)
    store = models_dir / "torch" / "model-store"
    assert sorted(path.name for path in store.iterdir()) == ["digits-1.mar", "digits.mar"]
    instance = torchserve.TorchServeInstance.on_free_ports(tmp_path / "run")
    spec = torchserve.spec(instance, store, poll_seconds=0.5)
    image = digits.test.images[:1]
    old = _in_process(models_dir, 1, image)
    with runtime.start(spec, tmp_path / "torchserve.log", timeout=240) as server:
        rest, grpc = spec.endpoint("torchserve-rest"), spec.endpoint("torchserve-grpc")
        clients = [rest.client(timeout=30), rest.client(timeout=30), grpc.client(timeout=30), grpc.client(timeout=30)]
        manager = rest.client()
        try:
            with _answer_recorder(clients, image) as recorder:
                _wait_for(lambda: len(recorder.answers) >= 20, 30, "20 answers from version 1")
                # Another seed: version 2's probabilities differ from version 1's, so each answer names its version.
                result = train(
                    TorchTrainConfig(output_dir=models_dir, log_dir=tmp_path / "runs", epochs=5, seed=7, progress=False)
                )
                published = time.monotonic()
                assert result.version == 2 and (store / "digits-2.mar").is_file()
                new = _in_process(models_dir, 2, image)
                assert np.abs(new - old).max() > 1e-3
                _wait_for(lambda: manager.describe()["modelVersion"] == "2", 30, "version 2 becoming the default")
                # Every client's next answers come from version 2: the one after the old version is unregistered.
                _wait_for(
                    lambda: [v["modelVersion"] for v in manager.list_versions()] == ["2"],
                    30,
                    "version 1 being unregistered",
                )
                settled = time.monotonic()
                _wait_for(lambda: len(recorder.since(settled)) >= 40, 30, "40 answers after the roll-out")
                print(f"version 2 answered alone {settled - published:.1f} s after it was published")
                assert settled - published <= 30

                (store / ".digits-3.mar.partial").write_bytes(b"a truncated copy, not a zip archive")
                os.rename(store / ".digits-3.mar.partial", store / "digits-3.mar")
                _wait_for(lambda: "Refused digits-3.mar" in server.log(), 30, "the corrupt archive being refused")
                refused = time.monotonic()
                _wait_for(lambda: len(recorder.since(refused)) >= 40, 30, "40 answers after the refusal")
            assert recorder.failures == [], recorder.failures[:3]
            for at, description, probabilities in recorder.since(settled):
                message = f"{description} at {at - published:.1f} s"
                np.testing.assert_allclose(probabilities, new, atol=1e-5, err_msg=message)
            answered_by = {description for _, description, _ in recorder.since(settled)}
            assert len(answered_by) == 2  # REST and gRPC both answered after the roll-out
            assert manager.describe()["modelVersion"] == "2" and len(manager.list_versions()) == 1
            assert server.log().count("Refused digits-3.mar") == 1  # not retried at every poll
            metrics = requests.get(f"{instance.metrics_url}/metrics", timeout=10).text
            loaded = [line for line in metrics.splitlines() if line.startswith('ModelVersionLoaded{ModelName="digits"')]
            assert len(loaded) == 1 and loaded[0].endswith(" 2.0"), loaded

            # The archive's own settings hold for the rolled-out version, with no per-version config line.
            settings = yaml.safe_load(MODEL_CONFIG.read_text())
            described = manager.describe(version=2)
            assert (described["batchSize"], described["maxBatchDelay"], described["minWorkers"]) == (
                settings["batchSize"],
                settings["maxBatchDelay"],
                settings["minWorkers"],
            )
            # /predictions/digits/<version>, as TorchServe documents it: 2 answers, 1 is gone.
            with TorchServeClient(
                rest.address, key_file=instance.key_file, management_url=instance.management_url, version=2
            ) as by_version:
                np.testing.assert_allclose(by_version.predict(image)[0][0], new, atol=1e-5)
            with (
                TorchServeClient(
                    rest.address, key_file=instance.key_file, management_url=instance.management_url, version=1
                ) as gone,
                pytest.raises(TorchServeError) as raised,
            ):
                gone.predict(image)
            assert raised.value.status == 404
        finally:
            for client in [*clients, manager]:
                client.close()
