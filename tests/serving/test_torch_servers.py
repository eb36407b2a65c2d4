"""Integration: the Flask app on uvicorn and TorchServe on free ports, serving a freshly exported model, queried for real."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import threading
import time

import numpy as np
import pytest
import requests

from experiment.processes import port_accepts
from serving.clients import ServingError, TorchServeGrpcClient
from serving.runtime import stop_all
from tests import torch_exports

pytestmark = pytest.mark.slow

BATCH = 60
CLIENTS = 16
REQUESTS_PER_CLIENT = 200


def flask_predict(session: requests.Session, url: str, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-format predict against the Flask app (TensorFlow Serving's REST path)."""
    body = json.dumps({"instances": images.tolist()})
    response = session.post(f"{url}/v1/models/digits:predict", data=body, timeout=30)
    response.raise_for_status()
    rows = response.json()["predictions"]
    return (
        np.asarray([row["probabilities"] for row in rows], dtype=np.float32),
        np.asarray([row["classes"] for row in rows], dtype=np.int64),
    )


@pytest.fixture(scope="module")
def expected(torch_trained, digits):
    """In-process ONNX Runtime outputs for the whole test split."""
    return torch_exports.onnx_outputs(torch_trained.export_path, digits.test.images)


@pytest.fixture(scope="module")
def predictors(flask_server, torchserve_server):
    """name → predict(images) for each server, each thread with its own connection."""
    local = threading.local()

    def flask(images):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return flask_predict(local.session, flask_server.url, images)

    def torchserve(images):
        if not hasattr(local, "torchserve"):
            local.torchserve = torchserve_server.endpoint.client(timeout=30)
        return local.torchserve.predict(images)

    def torchserve_grpc(images):
        if not hasattr(local, "torchserve_grpc"):
            local.torchserve_grpc = _grpc_endpoint(torchserve_server).client(timeout=30)
        return local.torchserve_grpc.predict(images)

    return {"flask": flask, "torchserve": torchserve, "torchserve-grpc": torchserve_grpc}


def _grpc_endpoint(torchserve_server):
    """The TorchServe under test's gRPC endpoint, with its client, as its spec names it."""
    return torchserve_server.server.spec.endpoint("torchserve-grpc")


def test_torchserve_is_ready_only_once_its_workers_are(torchserve_server):
    observations = torchserve_server.observations
    assert not observations[0].available, "reported ready before TorchServe had even started"
    assert observations[-1].available
    assert torchserve_server.server.is_ready()
    with torchserve_server.endpoint.client() as client:
        description = client.describe()
        statuses = [worker["status"] for worker in description["workers"]]
        assert statuses and statuses.count("READY") >= description["minWorkers"]
        # Ready means a prediction works now, with no retry.
        probabilities, classes = client.predict(np.zeros((1, 8, 8), dtype=np.float32))
        assert probabilities.shape == (1, 10) and classes.shape == (1,)


@pytest.mark.parametrize("server", ["flask", "torchserve", "torchserve-grpc"])
def test_whole_test_split_matches_in_process(server, predictors, expected, digits):
    images = digits.test.images
    parts = [predictors[server](images[start : start + BATCH]) for start in range(0, len(images), BATCH)]
    probabilities = np.concatenate([part[0] for part in parts])
    classes = np.concatenate([part[1] for part in parts])
    np.testing.assert_allclose(probabilities, expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(classes, expected[1])
    assert (classes == digits.test.labels).mean() >= 0.95


@pytest.mark.parametrize("server", ["flask", "torchserve"])
def test_concurrent_clients_get_no_errors(server, predictors, expected, digits):
    images = digits.test.images

    def client(index: int) -> list[str]:
        problems = []
        for request in range(REQUESTS_PER_CLIENT):
            row = (index * REQUESTS_PER_CLIENT + request) % len(images)
            try:
                _, classes = predictors[server](images[row : row + 1])
            except Exception as error:  # noqa: BLE001 (counted, so that one failure does not hide the others)
                problems.append(f"{type(error).__name__}: {error}")
                continue
            if classes[0] != expected[1][row]:
                problems.append(f"row {row}: class {classes[0]} instead of {expected[1][row]}")
        return problems

    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        problems = [problem for result in pool.map(client, range(CLIENTS)) for problem in result]
    assert problems == [], f"{len(problems)} of {CLIENTS * REQUESTS_PER_CLIENT} failed, first: {problems[:3]}"


def test_torchserve_refuses_a_bad_body_without_failing_its_batch_neighbours(torchserve_server):
    handle = torchserve_server.instance
    key = json.loads(handle.key_file.read_text())["inference"]["key"]
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    good = json.dumps({"instances": [[[1.0] * 8] * 8]})
    bad = json.dumps({"instances": [[1.0, 2.0]]})

    def send(body: str) -> tuple[int, dict]:
        response = requests.post(f"{handle.inference_url}/predictions/digits", data=body, headers=headers, timeout=30)
        return response.status_code, response.json()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(send, [good, bad] * 16))
    assert all(status == 200 and "predictions" in body for status, body in results[0::2])
    assert all(status == 400 and "shape" in body["error"] for status, body in results[1::2])


def test_torchserve_needs_the_inference_key(torchserve_server):
    handle = torchserve_server.instance
    response = requests.post(
        f"{handle.inference_url}/predictions/digits", data=json.dumps({"instances": [[[0.0] * 8] * 8]}), timeout=30
    )
    assert response.status_code in (400, 401)  # TorchServe 0.12 answers InvalidKeyException with 400


def test_client_renews_an_expired_inference_key(torchserve_server):
    handle = torchserve_server.instance
    with torchserve_server.endpoint.client() as client:
        client.predict(np.zeros((1, 8, 8), dtype=np.float32))
        # Make the client's key wrong, as an expired one would be; TorchServe still holds the real one.
        document = json.loads(handle.key_file.read_text())
        document["inference"]["key"] = "expired"
        handle.key_file.write_text(json.dumps(document))
        probabilities, _ = client.predict(np.zeros((1, 8, 8), dtype=np.float32))
        assert probabilities.shape == (1, 10)
    assert json.loads(handle.key_file.read_text())["inference"]["key"] != "expired"


def test_torchserve_grpc_needs_the_inference_key_and_renews_an_expired_one(torchserve_server):
    handle = torchserve_server.instance
    with (
        TorchServeGrpcClient(handle.grpc_address, management_address=handle.grpc_management_address) as keyless,
        pytest.raises(ServingError) as raised,
    ):
        keyless.predict(np.zeros((1, 8, 8), dtype=np.float32))
    assert raised.value.status == "PERMISSION_DENIED"
    with _grpc_endpoint(torchserve_server).client() as client:
        client.predict(np.zeros((1, 8, 8), dtype=np.float32))
        document = json.loads(handle.key_file.read_text())
        document["inference"]["key"] = "expired"  # as an expired key would be; TorchServe still holds the real one
        handle.key_file.write_text(json.dumps(document))
        probabilities, _ = client.predict(np.zeros((1, 8, 8), dtype=np.float32))
        assert probabilities.shape == (1, 10)
        assert client.ping() == "Healthy"
        assert client.is_available() and client.get_metadata()["inputs"]["images"]["shape"] == [-1, 8, 8]
    assert json.loads(handle.key_file.read_text())["inference"]["key"] != "expired"


def test_flask_swaps_in_a_new_version_without_failed_requests(flask_server, torch_trained):
    failures: list[str] = []
    stop = threading.Event()
    image = np.full((1, 8, 8), 3.0, dtype=np.float32)

    def hammer() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    flask_predict(session, flask_server.url, image)
                except Exception as error:  # noqa: BLE001 (every failure is collected and shown)
                    failures.append(f"{type(error).__name__}: {error}")

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        staging = flask_server.base_path / ".staging-2"
        shutil.copytree(torch_trained.export_path, staging)
        os.rename(staging, flask_server.base_path / "2")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            text = requests.get(f"{flask_server.url}/metrics", timeout=10).text
            versions = [line for line in text.splitlines() if line.startswith("flask_model_version_loaded{")]
            if len(versions) == 2 and all(line.endswith(" 2.0") for line in versions):
                break  # both workers serve version 2
            time.sleep(0.2)
        else:
            pytest.fail(f"the workers did not all load version 2: {versions}")
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert failures == []
    status = requests.get(f"{flask_server.url}/v1/models/digits", timeout=10).json()
    assert status["model_version_status"][0]["version"] == "2"


def test_flask_metrics_add_up_every_worker(flask_server):
    text = requests.get(f"{flask_server.url}/metrics", timeout=10).text
    served = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith('flask_http_requests_total{endpoint="api.predict",method="POST",status="200"}')
    ]
    # The earlier tests sent thousands of predictions across both workers; one worker alone saw about half.
    assert served and served[0] >= CLIENTS * REQUESTS_PER_CLIENT
    assert "flask_http_request_duration_seconds_bucket" in text


def test_torchserve_metrics_are_prometheus_text(torchserve_server):
    handle = torchserve_server.instance
    response = requests.get(f"{handle.metrics_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert "ts_inference_requests_total" in response.text
    # The version the workers loaded, a gauge the handler adds (TorchServe has no such series of its own).
    assert 'ModelVersionLoaded{ModelName="digits",Level="Model"' in response.text


def _port_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    return not port_accepts(int(port), host)


def test_flask_shuts_down_cleanly(flask_server):
    server = flask_server.server
    server.send_signal(signal.SIGTERM)
    try:
        returncode = server.wait(60)
    except subprocess.TimeoutExpired:
        server.stop(grace=0)
        pytest.fail("the Flask server did not stop within 60 s of SIGTERM")
    assert returncode == 0
    assert "flask[0]: Stopped." in server.log()
    assert _port_closed(flask_server.url)


def test_torchserve_shuts_down_cleanly(torchserve_server):
    handle, server = torchserve_server.instance, torchserve_server.server
    assert server.is_running()
    assert stop_all([server]) == ["torchserve"]
    assert not server.is_running()
    assert _port_closed(handle.inference_url) and _port_closed(handle.management_url)
    assert not handle.key_file.exists()
    leftover = subprocess.run(["pgrep", "-f", str(handle.run_dir)], capture_output=True, text=True).stdout.split()
    assert leftover == [], "TorchServe left processes behind"
