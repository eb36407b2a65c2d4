"""make test-containers' own logic, without Docker: how a request's end is classified, the load counter, the override.

The classification decides whether stopping the stack lost a request, so each case is produced here by a real
socket server behaving as a stopping server can: answering, refusing, resetting unread, closing after reading.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.containers import checks, run

ROOT = Path(__file__).resolve().parents[2]
BODY = json.dumps({"instances": [[[0.0] * 8] * 8]}).encode()


def _answer(status: int, document: dict) -> bytes:
    payload = json.dumps(document).encode()
    return f"HTTP/1.1 {status} X\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n".encode() + payload


def _read_request(connection: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < len(BODY):
        chunk = connection.recv(65536)
        if not chunk:
            return
        data += chunk


@pytest.fixture
def one_connection_server():
    """Start a server that handles one connection with the given behaviour; yields (start, port)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    threads = []

    def start(behaviour: Callable[[socket.socket], None]) -> int:
        def serve() -> None:
            connection, _ = listener.accept()
            with connection:
                behaviour(connection)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return listener.getsockname()[1]

    yield start
    listener.close()
    for thread in threads:
        thread.join(5)


def _send(port: int, timeout: float = 5.0) -> checks.Outcome:
    return checks.send_rest("127.0.0.1", port, "/v1/models/digits:predict", BODY, expected_classes=[3], timeout=timeout)


def test_the_right_answer_is_ok(one_connection_server):
    def answer(connection):
        _read_request(connection)
        connection.sendall(_answer(200, {"predictions": [{"classes": 3, "probabilities": [0.1] * 10}]}))

    assert _send(one_connection_server(answer)).kind == checks.OK


def test_a_wrong_answer_is_lost(one_connection_server):
    def answer(connection):
        _read_request(connection)
        connection.sendall(_answer(200, {"predictions": [{"classes": 5, "probabilities": [0.1] * 10}]}))

    outcome = _send(one_connection_server(answer))
    assert outcome.kind == checks.LOST and "wrong answer" in outcome.detail


@pytest.mark.parametrize(("status", "kind"), [(503, checks.REFUSED), (500, checks.LOST), (404, checks.LOST)])
def test_503_is_a_refusal_any_other_error_a_loss(one_connection_server, status, kind):
    def answer(connection):
        _read_request(connection)
        connection.sendall(_answer(status, {"error": "x"}))

    assert _send(one_connection_server(answer)).kind == kind


def test_a_closed_port_is_a_refusal():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: the connection is refused
        outcome = _send(port)
    assert outcome.kind == checks.REFUSED and outcome.detail.startswith("connect:")


def test_a_connection_closed_with_the_request_unread_is_a_refusal(one_connection_server):
    def close_unread(connection):
        time.sleep(0.3)  # the request is in the socket's buffer by now; closing it unread answers RST

    outcome = _send(one_connection_server(close_unread))
    assert outcome.kind == checks.REFUSED and "unread" in outcome.detail


def test_a_connection_closed_after_reading_the_request_is_a_loss(one_connection_server):
    outcome = _send(one_connection_server(_read_request))  # read everything, then close without a word
    assert outcome.kind == checks.LOST and "without answering" in outcome.detail


def test_no_answer_in_time_is_a_loss(one_connection_server):
    def stall(connection):
        _read_request(connection)
        time.sleep(1.0)

    outcome = _send(one_connection_server(stall), timeout=0.3)
    assert outcome.kind == checks.LOST and "no answer" in outcome.detail


def test_load_counts_each_phase_and_threads_end_when_the_action_is_done():
    state = {"stopped": False}

    def send() -> checks.Outcome:
        time.sleep(0.005)
        if not state["stopped"]:
            return checks.Outcome(checks.OK)
        return checks.Outcome(checks.REFUSED, "connect: connection refused")

    def action() -> None:
        state["stopped"] = True
        time.sleep(0.2)

    started = time.monotonic()
    result = checks.load_during([(checks.LoadTarget("stub", send), 2)], action, warm_up_seconds=0.1)
    assert time.monotonic() - started < 5
    counts = result.counts["stub"]
    assert counts["ok before stop"] > 0 and counts["refused after stop"] > 0
    assert result.lost() == {"stub": 0}
    assert "connect: connection refused" in result.table()


def test_a_lost_request_is_counted_with_its_reason():
    outcomes = iter([checks.Outcome(checks.OK)] * 5 + [checks.Outcome(checks.LOST, "the server closed the connection")])

    def send() -> checks.Outcome:
        time.sleep(0.005)
        return next(outcomes, checks.Outcome(checks.REFUSED, "HTTP 503"))

    result = checks.load_during([(checks.LoadTarget("stub", send), 1)], lambda: time.sleep(0.1), warm_up_seconds=0.05)
    assert result.lost() == {"stub": 1}
    assert result.examples["stub"] == ["the server closed the connection"]


# ---- the override file ----------------------------------------------------------------------------------------


def _merged_config() -> dict:
    if not shutil.which("docker-compose"):
        pytest.skip("docker-compose is not installed (.ci/run and make test-containers install it)")
    environment = {
        "STAND_IN_BASE_IMAGE": "base",
        "STAND_IN_PIP_INSTALL_OPTIONS": "--no-index",
        "STAND_IN_MODELS_DIR": "/m",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
    }
    command = ["docker-compose", "-f", "docker-compose.yml", "-f", str(run.OVERRIDE), "config"]
    result = subprocess.run(command, check=False, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["services"]


def test_stand_ins_never_take_an_official_image_name():
    services = _merged_config()
    official = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("tf-serving", "torchserve", "flask", "torchserve-rollout", "ready"):
        assert services[name]["image"].startswith("tf-vs-torch-stand-in/")
        assert services[name]["image"] != official[name].get("image")


def test_stand_ins_serve_the_test_models_and_build_from_the_wheelhouse():
    services = _merged_config()
    for name, target in (
        ("tf-serving", "/models/digits"),
        ("flask", "/models/digits"),
        ("torchserve", "/home/model-server/model-store"),
        ("torchserve-rollout", "/models/model-store"),
    ):
        sources = {entry.split(":")[1]: entry.split(":")[0] for entry in services[name]["volumes"]}
        assert sources[target].startswith("/m/"), f"{name} still mounts {sources[target]}"
        expected = {"BASE_IMAGE": "base", "PIP_INSTALL_OPTIONS": "--no-index"}
        if name == "torchserve":  # compose's own derived image, on the stand-in for the official one
            expected = {"PIP_INSTALL_OPTIONS": "--no-index", "TORCHSERVE_IMAGE": services[run.STAND_IN_BASES]["image"]}
            assert services[name]["build"]["dockerfile"] == "serving/torchserve/Dockerfile"
        assert services[name]["build"]["args"] == expected
        assert services[name]["build"]["network"] == "host"


def test_every_published_port_is_a_variable_the_test_sets():
    # The test must be able to move every port off the default ports, which other servers here may hold.
    compose = (ROOT / "docker-compose.yml").read_text()
    published = [
        entry for service in yaml.safe_load(compose)["services"].values() for entry in service.get("ports", [])
    ]
    expected = {f"127.0.0.1:${{{name}:-{port}}}:{port}" for name, port in run.HOST_PORT_VARIABLES.items()}
    assert set(published) == expected
