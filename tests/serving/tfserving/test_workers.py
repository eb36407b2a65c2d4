"""The TF server with two worker processes on one pair of ports: both answer, share metrics and reloads, and a
killed worker comes back while the other keeps answering."""

from __future__ import annotations

import re
import shutil
import signal
import time

import grpc
import numpy as np
import psutil
import pytest
import requests
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from serving import runtime
from serving.clients import TFServingGrpcClient
from serving.runtime import tfserving

START_TIMEOUT_S = 180
METRICS_PATH = "/monitoring/prometheus/metrics"


@pytest.fixture(scope="module")
def two_workers(tf_trained, tmp_path_factory):
    """`--workers=2` with metrics and a UNIX socket, over a copy of the trained digits model."""
    root = tmp_path_factory.mktemp("two_workers")
    shutil.copytree(tf_trained.export_path, root / "digits" / "1")
    (root / "monitoring.config").write_text(f'prometheus_config {{ enable: true path: "{METRICS_PATH}" }}\n')
    flags = [
        "--workers=2",
        f"--monitoring_config_file={root / 'monitoring.config'}",
        f"--grpc_socket_path={root / 'grpc.sock'}",
        "--file_system_poll_wait_seconds=0.5",
    ]
    spec = tfserving.spec(tfserving.TFServingPorts.free(), "digits", root / "digits", flags)
    process = runtime.start(spec, root / "tfserving.log", START_TIMEOUT_S)
    yield spec, process, root
    process.stop()


def predict_on_new_connections(rest_url: str, images: np.ndarray, count: int, model: str = "digits") -> list[int]:
    """count REST predicts, each on a connection of its own (so the kernel spreads them over the workers)."""
    return [
        requests.post(
            f"{rest_url}/v1/models/{model}:predict", json={"instances": images[:1].tolist()}, timeout=30
        ).status_code
        for _ in range(count)
    ]


def metric(page: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in page.splitlines() if line.startswith(line_start)]
    return sum(values)


@pytest.mark.slow
def test_both_workers_answer_and_the_metrics_count_every_request(two_workers, digits):
    spec, process, root = two_workers
    rest_url = spec.endpoint("tf-rest").address
    assert predict_on_new_connections(rest_url, digits.test.images, 40) == [200] * 40
    over_socket = TFServingGrpcClient(f"unix:{root / 'grpc.sock'}")
    try:
        assert over_socket.predict(digits.test.images[:2])[1].shape == (2,)
    finally:
        over_socket.close()
    page = requests.get(rest_url + METRICS_PATH, timeout=10).text
    assert metric(page, ':tensorflow:serving:request_count{model_name="digits",status="OK"}') >= 41
    assert (
        metric(page, ':tensorflow:serving:request_latency_count{API="predict",entrypoint="REST",model_name="digits"}')
        == 40
    )
    loaded = re.findall(r'tfserving_model_version_loaded\{model_name="digits",pid="(\d+)"\} 1', page)
    assert len(set(loaded)) == 2  # one series per worker, each serving version 1
    log = process.log()
    assert "worker 1 of 2" in log and "worker 2 of 2" in log and "Traceback" not in log


@pytest.mark.slow
def test_a_reload_reaches_every_worker(two_workers, digits):
    spec, _, root = two_workers
    request = model_management_pb2.ReloadConfigRequest()
    for name in ("digits", "copy"):
        request.config.model_config_list.config.add(
            name=name, base_path=str(root / "digits"), model_platform="tensorflow"
        )
    with grpc.insecure_channel(spec.endpoint("tf-grpc").address) as channel:
        model_service_pb2_grpc.ModelServiceStub(channel).HandleReloadConfigRequest(request, timeout=60)
    deadline = time.monotonic() + 30
    answers: list[int] = []
    while time.monotonic() < deadline:  # the worker that took the request has it; the other follows within a second
        answers = predict_on_new_connections(spec.endpoint("tf-rest").address, digits.test.images, 20, "copy")
        if answers == [200] * 20:
            break
        time.sleep(0.5)
    assert answers == [200] * 20


@pytest.mark.slow
def test_a_killed_worker_is_started_again_while_the_other_answers(two_workers, digits):
    spec, process, _ = two_workers
    children = [
        child
        for child in psutil.Process(process.leader.pid).children()
        if "serving.tfserving" in " ".join(child.cmdline())
    ]
    assert len(children) == 1
    children[0].send_signal(signal.SIGKILL)
    # Connections the kernel had queued for the killed worker die with it (as with any killed server process); the
    # ones made after it is gone all reach the other worker until the replacement listens.
    children[0].wait(10)
    rest_url = spec.endpoint("tf-rest").address
    deadline = time.monotonic() + START_TIMEOUT_S
    statuses: list[int] = []
    while time.monotonic() < deadline and process.log().count("worker 2 of 2") < 2:
        statuses += predict_on_new_connections(rest_url, digits.test.images, 5)
    assert process.log().count("worker 2 of 2") == 2, process.log()[-2000:]
    assert "Worker 1 exited with status -9; starting it again." in process.log()
    assert set(statuses) <= {200}
    assert predict_on_new_connections(rest_url, digits.test.images, 20) == [200] * 20
    assert process.stop() == 0
