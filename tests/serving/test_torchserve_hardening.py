"""TorchServe hardened: per-request errors inside a batch, the response limit, no archive or workflow from a URL, the
last good archive at start, token refusals, and the roll-out's retiring of old versions.

The fast tests use the handler with a fake context and the configuration writer; the slow ones share one TorchServe,
started from a model store whose newest archive is corrupt.
"""

from __future__ import annotations

import concurrent.futures
import functools
import http.server
import json
import logging
import shutil
import threading
import time
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import requests

from experiment.errors import UsageError
from serving.clients import TorchServeClient, TorchServeError
from serving.protocol import rest
from serving.torchserve import config
from serving.torchserve.config import TorchServePorts
from serving.torchserve.rollout import Rollout, RolloutSettings
from tests.serving.test_torchserve_handler import (
    IMAGE,
    handle,
    handler_and_context,  # noqa: F401  (the fixture, shared)
)

GOOD = {"instances": [IMAGE]}
DEEP = b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
HUGE_INTEGER = b'{"instances": [[[' + b"9" * 5_000 + b"]]]}"


def corrupt_copy(archive: Path, target: Path, version: int) -> Path:
    """A copy of archive as another version whose model.onnx is garbage (a valid zip, a model that does not load)."""
    with zipfile.ZipFile(archive) as source, zipfile.ZipFile(target, "w") as copy:
        for item in source.infolist():
            data = source.read(item)
            if item.filename == "model.onnx":
                data = b"not an ONNX model" * 50
            elif item.filename == "MAR-INF/MANIFEST.json":
                manifest = json.loads(data)
                manifest["model"]["modelVersion"] = str(version)
                data = json.dumps(manifest).encode()
            copy.writestr(item, data)
    return target


def store_with_corrupt_newest(source_store: Path, target: Path) -> Path:
    """digits-1.mar as trained, then digits-2.mar and digits.mar (its copy) with a model that does not load."""
    target.mkdir(parents=True)
    shutil.copy(source_store / "digits-1.mar", target / "digits-1.mar")
    corrupt_copy(source_store / "digits-1.mar", target / "digits-2.mar", 2)
    shutil.copy(target / "digits-2.mar", target / "digits.mar")
    return target


# ---- the handler: one bad body fails only itself ----------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, message",
    [
        # serving.protocol's own sentences: the handler passes them on for the one request.
        (DEEP, "The request nests 10001 levels of arrays and objects; this server accepts at most 64."),
        (HUGE_INTEGER, "The request body is not valid JSON: number too big to be stored in double at offset 17."),
    ],
    ids=["nested_10000_deep", "integer_of_5000_digits"],
)
def test_an_unparsable_body_is_a_400_for_itself_and_its_batch_neighbours_are_answered(
    handler_and_context, bad, message
):
    handler, context = handler_and_context
    answers = handle(handler, context, [GOOD, bad, {"inputs": [IMAGE, IMAGE]}])
    assert len(answers[0]["predictions"]) == 1
    assert answers[1] == {"error": message}
    assert len(answers[2]["outputs"]["classes"]) == 2
    assert context.statuses == {1: (400, "Bad Request")}


def test_any_exception_while_parsing_one_body_stays_with_that_body(handler_and_context, monkeypatch):
    handler, context = handler_and_context
    original = rest.parse_predict_body

    def fragile(body, *args, **kwargs):
        if isinstance(body, dict) and "poison" in body:
            raise TypeError("something the parser did not foresee")
        return original(body, *args, **kwargs)

    monkeypatch.setattr(rest, "parse_predict_body", fragile)
    answers = handle(handler, context, [{"poison": 1}, GOOD])
    assert answers[0] == {"error": "The request body could not be read as a predict request."}
    assert len(answers[1]["predictions"]) == 1
    assert context.statuses == {0: (400, "Bad Request")}


# ---- the response limit agrees with the batch limit -------------------------------------------------------------


def test_max_response_size_holds_the_largest_answer_the_handler_gives():
    assert int(config.read_properties(config.TEMPLATE)["max_response_size"]) == config.MAX_RESPONSE_SIZE
    # The longest a float32 probability prints (a subnormal-sized one) and the largest class.
    probabilities = np.full((rest.MAX_BATCH_SIZE, 10), np.float32(1.1754944e-38), dtype=np.float32)
    classes = np.full(rest.MAX_BATCH_SIZE, np.iinfo(np.int64).min, dtype=np.int64)
    for row_format in (True, False):
        answer = rest.dumps(
            rest.format_predict_response({"probabilities": probabilities, "classes": classes}, row_format)
        )
        assert len(answer.encode()) <= config.MAX_RESPONSE_SIZE / 2  # the promised margin of two


# ---- configuration: no URL, no workflow, everything on 127.0.0.1 ------------------------------------------------


def test_allowed_urls_admit_only_archives_of_the_model_store(tmp_path):
    import re

    store = (tmp_path / "model-store.v1").resolve()
    pattern = re.compile(config.allowed_urls_pattern(store), re.IGNORECASE)  # as TorchServe compiles it
    assert pattern.fullmatch(f"file://{store}/digits-2.mar")
    for url in (
        "http://127.0.0.1:8000/wf.war",
        "https://example.com/digits.mar",
        f"file://{store}/../x/digits.mar",
        f"file://{store}/sub/digits.mar",
        f"file://{store}X/digits.mar",
        f"file://{tmp_path}/other.mar",
        f"file://{store}/digits-2.war",
    ):
        assert not pattern.fullmatch(url), url
    assert config.allowed_urls_pattern(tmp_path / "a,b") == config.NO_URL_ALLOWED  # a comma would split the list


def test_written_config_shuts_urls_and_workflows_and_binds_127_0_0_1(tmp_path):
    path = config.write_config(
        tmp_path / "run" / "config.properties", tmp_path / "store", TorchServePorts(1, 2, 3, 4, 5), model_api=True
    )
    properties = config.read_properties(path)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert properties[key].startswith("http://127.0.0.1:")
    assert properties["grpc_inference_address"] == properties["grpc_management_address"] == "127.0.0.1"
    assert properties["allowed_urls"] == config.allowed_urls_pattern(tmp_path / "store")
    workflow_store = Path(properties["workflow_store"])
    assert workflow_store.is_dir() and not any(workflow_store.iterdir())
    assert properties["enable_envvars_config"] == "false" and properties["install_py_dep_per_model"] == "false"
    assert properties["enable_model_api"] == "true" and "disable_token_authorization" not in properties
    with pytest.raises(UsageError, match="needs token authorization"):
        config.write_config(
            tmp_path / "c.properties", tmp_path / "store", TorchServePorts(), token_auth=False, model_api=True
        )
    plain_path = config.write_config(tmp_path / "d.properties", tmp_path / "store", TorchServePorts())
    plain = config.read_properties(plain_path)
    assert "enable_model_api" not in plain  # TorchServe's default: off


def test_without_token_authorization_the_spec_turns_the_model_api_and_rollout_off(tmp_path):
    from serving.runtime import torchserve

    instance = torchserve.TorchServeInstance(tmp_path / "ts", TorchServePorts(9080, 9081, 9082, 9070, 9071), False)
    command = torchserve.spec(instance, tmp_path / "store").command
    assert "serving.runtime.torchserve_rollout" not in command and command[-1] == "--disable-token-auth"


# ---- the last archive that loads serves at start ----------------------------------------------------------------


def test_a_corrupt_newest_archive_gives_way_to_the_newest_that_loads(torch_smoke_run, tmp_path):
    source = torch_smoke_run.export_path.parent.parent / "model-store"
    store = store_with_corrupt_newest(source, tmp_path / "store")
    choice = config.choose_archive(store)
    assert (choice.archive, choice.version) == ("digits-1.mar", "1")
    assert [name for name, _ in choice.skipped] == ["digits.mar", "digits-2.mar"]
    assert choice.message.startswith("Serving digits-1.mar (version 1), the newest archive that loads, instead of:")
    assert "ONNX model does not load" in choice.message
    shutil.copy(store / "digits-1.mar", store / "digits.mar")
    (store / "digits-2.mar").unlink()
    assert config.choose_archive(store) == config.ArchiveChoice("digits.mar", "1")  # nothing passed over


def test_a_corrupt_archive_is_refused_by_the_rollout_before_registering(torch_smoke_run, tmp_path, caplog):
    from tests.serving.test_torchserve_rollout import FakeManagement

    source = torch_smoke_run.export_path.parent.parent / "model-store"
    store = store_with_corrupt_newest(source, tmp_path / "store")
    management = FakeManagement(default=1)
    assert Rollout(management, store, RolloutSettings(ready_timeout_seconds=0.5, drain_seconds=0)).poll_once() is None
    assert management.calls == []  # never registered: no worker tried to load it
    assert "Refused digits-2.mar: its ONNX model does not load" in caplog.text


# ---- the roll-out retires an old version: no workers first, then unregister, retried ----------------------------


def test_an_old_version_is_scaled_to_no_workers_then_unregistered_with_retries(tmp_path, caplog):
    from tests.serving.test_torchserve_rollout import FakeManagement, write_archive

    class Interrupted(FakeManagement):
        failures = 2

        def unregister(self, version):
            if self.failures:
                self.failures -= 1
                self.calls.append(("unregister failed", str(version)))
                raise TorchServeError("Interrupted while cleaning resources: digits", 500)
            super().unregister(version)

    write_archive(tmp_path, 2)
    management = Interrupted(default=1)
    settings = RolloutSettings(0.5, 0.0, retire_timeout_seconds=0.5, unregister_retry_seconds=0.0, check_model=False)
    assert Rollout(management, tmp_path, settings).poll_once() == 2
    assert management.calls[2:] == [
        ("scale", "1", 0),
        ("unregister failed", "1"),
        ("unregister failed", "1"),
        ("unregister", "1"),
    ]
    assert set(management.versions) == {"2"} and "Could not unregister" not in caplog.text


def test_a_default_version_short_of_ready_workers_is_warned_about_once(tmp_path, caplog):
    from tests.serving.test_torchserve_rollout import FakeManagement

    management = FakeManagement(default=1)
    management.workers["1"] = 1  # one of its two workers died and its replacement does not load
    watcher = Rollout(management, tmp_path, RolloutSettings(capacity_warning_seconds=0.05))
    caplog.set_level(logging.INFO, "serving.torchserve.rollout")
    for _ in range(3):
        watcher.poll_once()
        time.sleep(0.06)
    assert caplog.text.count("Only 1 of 2 workers of digits version 1 have been READY") == 1
    management.workers["1"] = 2
    watcher.poll_once()
    assert "digits version 1 has all its 2 workers READY again" in caplog.text


# ---- one real TorchServe, started from a store whose newest archive is corrupt ----------------------------------


@pytest.fixture(scope="module")
def hardened(torch_smoke_run, tmp_path_factory):
    """TorchServe (through serving.runtime) on free ports, its store's newest archive corrupt; stopped after."""
    from serving import runtime
    from serving.runtime import torchserve

    work = tmp_path_factory.mktemp("torchserve_hardened").resolve()
    store = store_with_corrupt_newest(torch_smoke_run.export_path.parent.parent / "model-store", work / "store")
    instance = torchserve.TorchServeInstance.on_free_ports(work / "run")
    spec = torchserve.spec(instance, store, poll_seconds=0.5)
    with runtime.start(spec, work / "torchserve.log", timeout=240) as server:
        yield server, instance, spec


def _post(url: str, body: bytes | str, headers: dict) -> tuple[int, dict | str]:
    response = requests.post(url, data=body, headers=headers, timeout=60)
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text


def _inference_headers(instance) -> dict:
    key = json.loads(instance.key_file.read_text())["inference"]["key"]
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


@pytest.mark.slow
def test_started_from_a_corrupt_newest_archive_the_last_good_version_serves(hardened):
    from serving.runtime import torchserve

    server, instance, spec = hardened
    with spec.endpoint("torchserve-rest").client() as client:
        assert client.describe()["modelVersion"] == "1"
        assert client.predict(np.zeros((1, 8, 8), dtype=np.float32))[0].shape == (1, 10)
    message = torchserve.fallback_message(instance.run_dir)
    assert message.startswith("Serving digits-1.mar (version 1), the newest archive that loads, instead of:")
    assert message in server.log()
    deadline = time.monotonic() + 30
    while "Refused digits-2.mar" not in server.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "Refused digits-2.mar: its ONNX model does not load (InvalidProtobuf); version 1 keeps serving." in (
        server.log()
    )


@pytest.mark.slow
@pytest.mark.parametrize("bad", [DEEP, HUGE_INTEGER], ids=["nested_10000_deep", "integer_of_5000_digits"])
def test_a_poisoned_body_fails_none_of_its_concurrent_neighbours(hardened, bad):
    _, instance, _ = hardened
    url, headers = f"{instance.inference_url}/predictions/digits", _inference_headers(instance)
    good = json.dumps(GOOD)
    bodies = [good, good, bad, good, good, good, good] * 10
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda body: _post(url, body, headers), bodies))
    good_statuses = [status for body, (status, _) in zip(bodies, results, strict=True) if body is good]
    bad_results = [result for body, result in zip(bodies, results, strict=True) if body is bad]
    assert good_statuses == [200] * len(good_statuses)
    assert all(status == 400 and set(answer) == {"error"} for status, answer in bad_results)
    # Bodies reach the handler undecoded (decode_input_request=false): no worker traceback per malformed body.
    assert "Failed json decoding" not in (instance.log_dir / "model_log.log").read_text()


@pytest.mark.slow
def test_the_largest_batch_fits_the_response_limit_and_more_instances_are_a_400(hardened):
    server, instance, _ = hardened
    url, headers = f"{instance.inference_url}/predictions/digits", _inference_headers(instance)
    zeros = [[0] * 8] * 8
    over = json.dumps({"instances": [zeros] * 30_000}, separators=(",", ":"))  # 4.4 MB: under max_request_size
    assert _post(url, over, headers) == (
        400,
        {"error": f"The batch has 30000 instances; this server accepts at most {rest.MAX_BATCH_SIZE}."},
    )
    largest = json.dumps({"instances": [[[0.123456789] * 8] * 8] * rest.MAX_BATCH_SIZE})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: requests.post(url, data=largest, headers=headers, timeout=60), range(8)))
    assert [answer.status_code for answer in answers] == [200] * 8
    assert all(len(answer.json()["predictions"]) == rest.MAX_BATCH_SIZE for answer in answers)
    assert "Worker died" not in server.log()


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    requested: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # http.server's naming
        type(self).requested.append(self.path)
        super().do_GET()

    def log_message(self, *arguments) -> None:
        pass


@pytest.mark.slow
def test_no_archive_or_workflow_is_fetched_from_a_url(hardened, tmp_path):
    _, instance, _ = hardened
    (tmp_path / "wf.war").write_bytes(b"a workflow archive would be here")
    (tmp_path / "other.mar").write_bytes(b"a model archive would be here")
    served = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_RecordingHandler, directory=str(tmp_path))
    )
    threading.Thread(target=served.serve_forever, daemon=True).start()
    remote = f"http://127.0.0.1:{served.server_address[1]}"
    key = json.loads(instance.key_file.read_text())["management"]["key"]
    headers = {"Authorization": f"Bearer {key}"}
    try:
        answers = {
            url: requests.post(f"{instance.management_url}/{url}", headers=headers, timeout=30)
            for url in (
                f"workflows?url={remote}/wf.war",
                f"models?url={remote}/other.mar",
                f"models?url=file://{tmp_path}/other.mar",
                "models?url=../../other.mar",
                "workflows?url=wf.war",
            )
        }
    finally:
        served.shutdown()
        served.server_close()
    for url, answer in answers.items():
        assert answer.status_code == 404, (url, answer.text)
    assert "does not match any allowed URL" in answers[f"workflows?url={remote}/wf.war"].json()["message"]
    assert _RecordingHandler.requested == []  # TorchServe never fetched anything
    with TorchServeClient(instance.inference_url, "digits", instance.key_file, instance.management_url) as client:
        assert {description["modelVersion"] for description in client.list_versions()} == {"1"}


@pytest.mark.slow
def test_a_wrong_or_missing_token_is_torchserves_400_and_the_client_says_so(hardened, tmp_path):
    _, instance, _ = hardened
    url = f"{instance.inference_url}/predictions/digits"
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        status, answer = _post(url, json.dumps(GOOD), {"Content-Type": "application/json", **headers})
        assert (status, answer["type"]) == (400, "InvalidKeyException")
    keys = json.loads(instance.key_file.read_text())
    for api in ("inference", "API"):  # no renewal possible either
        keys[api]["key"] = "wrong"
    wrong = tmp_path / "key_file.json"
    wrong.write_text(json.dumps(keys))
    with (
        TorchServeClient(instance.inference_url, "digits", wrong, instance.management_url) as client,
        pytest.raises(TorchServeError) as raised,
    ):
        client.predict(np.zeros((1, 8, 8), dtype=np.float32))
    assert raised.value.status == 400
    assert str(raised.value).startswith(f"TorchServe (REST) at {instance.inference_url} refused the key (HTTP 400)")
    assert "Token Authorization failed" in str(raised.value) and "--key-file" in str(raised.value)


def test_a_default_version_short_of_workers_is_rolled_back_to_the_newest_older_archive(tmp_path, caplog):
    from tests.serving.test_torchserve_rollout import FakeManagement, write_archive

    for version in (1, 2, 3):
        write_archive(tmp_path, version)
    management = FakeManagement(default=3)
    management.versions["1"] = "READY"
    management.workers["3"] = 1  # one worker died; its replacement cannot load the damaged extracted model
    settings = RolloutSettings(
        0.5,
        0.0,
        retire_timeout_seconds=0.5,
        unregister_retry_seconds=0.0,
        capacity_warning_seconds=0.05,
        check_model=False,
    )
    watcher = Rollout(management, tmp_path, settings)
    assert watcher.poll_once() is None  # short, not yet for long
    time.sleep(0.06)
    assert watcher.poll_once() == 2  # warned, and rolled back to the newest older archive
    assert "Only 1 of 2 workers of digits version 3 have been READY" in caplog.text
    assert management.default == "2" and "3" not in management.versions
    assert "Rolling digits back from version 3, short of READY workers, to version 2." in caplog.text
    assert watcher.poll_once() is None and management.default == "2"  # version 3 is not rolled out again


def test_a_version_with_no_worker_ready_yet_is_left_alone(tmp_path, caplog):
    from tests.serving.test_torchserve_rollout import FakeManagement, write_archive

    write_archive(tmp_path, 1)
    write_archive(tmp_path, 2)
    management = FakeManagement(default=2)
    management.workers["2"] = 0  # still loading, as at start on a busy machine
    watcher = Rollout(management, tmp_path, RolloutSettings(capacity_warning_seconds=0.0, check_model=False))
    for _ in range(3):
        assert watcher.poll_once() is None
    assert management.default == "2" and management.calls == [] and "READY" not in caplog.text
