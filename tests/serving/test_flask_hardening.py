"""The Flask server against idle, slow and malformed clients, its last-good-version fallback, and SIGTERM.

`python -m serving.flask_app` runs as `make serve` runs it (two workers on uvicorn) on a free port, with a small body
limit, a short body deadline and a short keep-alive so that the limits are reached quickly.
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import threading
import time

import pytest

from experiment import artifacts
from serving import runtime
from serving.flask_app import create_app
from serving.runtime import flask_app

START_TIMEOUT_S = 180  # workers importing torch on a busy 2-core machine
BODY_LIMIT = 1024 * 1024
BODY_TIMEOUT_S = 2
KEEPALIVE_S = 3  # --keep-alive-seconds: how long a kept-alive connection may stay idle after an answer
DRAIN_KEEPALIVE_S = 30  # long enough that only the drain can close an idle connection during its test
IMAGE = [[float((row * 8 + column) % 17) for column in range(8)] for row in range(8)]
BODY = json.dumps({"instances": [IMAGE]}).encode()
PREDICT = b"POST /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"


def start_server(export_path, folder, keep_alive_s: float = KEEPALIVE_S):
    """The Flask server on a free port serving a copy of export_path as version 1; returns (server, port)."""
    base_path = folder / "digits"
    shutil.copytree(export_path, base_path / "1")
    port = runtime.free_port()
    # The body deadline through the app's setting, the limit and keep-alive through the server's flags: both work.
    flags = ["--workers", "2", "--max-body-bytes", str(BODY_LIMIT), "--keep-alive-seconds", str(keep_alive_s)]
    environment = {"FLASK_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_S)}
    spec = flask_app.spec(port, base_path=base_path, environment=environment, flags=flags)
    return runtime.start(spec, folder / "flask.log", START_TIMEOUT_S), port


@pytest.fixture(scope="module")
def server_port(torch_smoke_run, tmp_path_factory):
    server, port = start_server(torch_smoke_run.export_path, tmp_path_factory.mktemp("flask_hardening"))
    with server:
        yield port


def post(port: int, body: bytes = BODY, timeout: float = 10.0) -> tuple[int, float]:
    """One predict on a new connection: (status, seconds)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/models/digits:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict, bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body) of the last response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer and close before taking everything
        received = b""
        while True:
            try:
                piece = sock.recv(65536)
            except ConnectionResetError:
                break
            if not piece:
                break
            received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def assert_one_json_sentence(headers: dict, body: bytes) -> None:
    assert headers["content-type"].startswith("application/json")
    document = json.loads(body)
    assert list(document) == ["error"] and document["error"].endswith(".")
    assert "<html" not in document["error"].lower() and "Traceback" not in document["error"]


# --- idle and slow clients ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_idle_connections_and_slow_senders_do_not_delay_a_valid_request(server_port):
    idle = [socket.create_connection(("127.0.0.1", server_port)) for _ in range(200)]
    slow = [socket.create_connection(("127.0.0.1", server_port)) for _ in range(64)]
    # Half send their headers one byte a second, half their body: each holds a connection open all along.
    pending = [
        (PREDICT + b"X-Slow: " + b"a" * 100)
        if index % 2
        else (PREDICT + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY)
        for index, _ in enumerate(slow)
    ]
    for sock, data in zip(slow, pending, strict=True):
        sock.sendall(data[: len(data) - 50])
    stop = threading.Event()

    def trickle() -> None:
        offset = len(pending[0]) - 50
        while not stop.wait(1.0):
            for sock, data in zip(slow, pending, strict=True):
                try:
                    sock.send(data[offset : offset + 1])
                except OSError:
                    pass
            offset += 1

    sender = threading.Thread(target=trickle)
    sender.start()
    try:
        latencies = []
        for _ in range(3):
            time.sleep(1.0)
            for _ in range(3):
                status, seconds = post(server_port, timeout=5.0)
                assert status == 200
                latencies.append(seconds)
    finally:
        stop.set()
        sender.join()
        for sock in idle + slow:
            sock.close()
    assert max(latencies) < 1.0, latencies


@pytest.mark.slow
def test_a_kept_alive_connection_left_idle_is_closed_after_the_keep_alive(server_port):
    connection = http.client.HTTPConnection("127.0.0.1", server_port, timeout=10)
    assert post_fully(server_port, connection)[0] == 200
    answered = time.monotonic()
    connection.sock.settimeout(KEEPALIVE_S + 5)
    assert connection.sock.recv(100) == b""
    assert KEEPALIVE_S - 0.5 <= time.monotonic() - answered < KEEPALIVE_S + 3
    connection.close()


@pytest.mark.slow
def test_a_body_that_does_not_arrive_in_time_is_408(server_port):
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server_port), timeout=BODY_TIMEOUT_S + 5) as sock:
        sock.sendall(PREDICT + b"Content-Length: %d\r\n\r\n" % len(BODY) + BODY[:10])
        received = b""
        while b"\r\n\r\n" not in received and (piece := sock.recv(65536)):
            received += piece
        answered = time.monotonic() - started
        while piece := sock.recv(65536):  # the rest of the answer, then the close
            received += piece
    assert received.startswith(b"HTTP/1.1 408 ")
    assert BODY_TIMEOUT_S <= answered < BODY_TIMEOUT_S + 2
    head, _, body = received.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    assert_one_json_sentence({"content-type": "application/json"}, body)


# --- malformed requests ------------------------------------------------------------------------------------------

# What is not HTTP/1.1 is refused by uvicorn's parser before the app runs: a 400 (its own plain-text answer), and the
# connection closes. Everything the app refuses is one JSON sentence.
NOT_HTTP = {
    "request line": b"GARBAGE\r\n\r\n",
    "header name": b"GET /healthz HTTP/1.1\r\nHost: test\r\nBad Name: 1\r\n\r\n",
    "chunk size": PREDICT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
}


@pytest.mark.slow
@pytest.mark.parametrize("request_bytes", NOT_HTTP.values(), ids=NOT_HTTP.keys())
def test_what_is_not_http_is_a_400_and_the_server_keeps_answering(server_port, request_bytes):
    status, _, _ = exchange(server_port, request_bytes)
    assert status == 400
    assert post(server_port)[0] == 200


@pytest.mark.slow
@pytest.mark.parametrize("declared, sent", [(BODY_LIMIT + 1, BODY_LIMIT + 1), (2**40, 10)], ids=["sent", "declared"])
def test_a_body_over_the_limit_is_413_in_json(server_port, declared, sent):
    # A body a little over the limit is read (and dropped) so that the client sees the answer, not a reset; one
    # declared far beyond it is refused at once.
    status, headers, body = exchange(server_port, PREDICT + b"Content-Length: %d\r\n\r\n" % declared + b" " * sent)
    assert status == 413
    assert_one_json_sentence(headers, body)
    assert str(BODY_LIMIT) in json.loads(body)["error"]


@pytest.mark.slow
def test_unknown_paths_and_methods_are_one_json_sentence(server_port):
    for request_bytes, expected in (
        (b"GET /nowhere HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", 404),
        (b"DELETE /v1/models/digits:predict HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n", 405),
        (PREDICT + b"Content-Length: 1\r\nConnection: close\r\n\r\n{", 400),
    ):
        status, headers, body = exchange(server_port, request_bytes)
        assert status == expected
        assert_one_json_sentence(headers, body)


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_413_not_cut(server_port):
    piece = b" " * 65536
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(BODY_LIMIT // len(piece) + 2))
    status, headers, body = exchange(
        server_port, PREDICT + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n"
    )
    assert status == 413
    assert_one_json_sentence(headers, body)


@pytest.mark.slow
def test_chunked_and_expect_continue_bodies_within_the_limit_are_served(server_port):
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BODY[:100], BODY[100:])) + b"0\r\n\r\n"
    status, _, body = exchange(
        server_port, PREDICT + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" + chunked
    )
    assert status == 200 and "predictions" in json.loads(body)
    with socket.create_connection(("127.0.0.1", server_port), timeout=10) as sock:
        sock.sendall(PREDICT + b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(BODY))
        assert sock.recv(100).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(BODY)
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize(
    "body",
    [b"[" * 100_000 + b"]" * 100_000, b'{"instances": [' + b"9" * 5000 + b"]}", b'{"instances": ' * 5000],
    ids=["deep nesting", "huge integer", "deep unclosed"],
)
def test_bodies_the_decoder_cannot_take_are_400_not_500(tmp_path, torch_smoke_run, body):
    shutil.copytree(torch_smoke_run.export_path, tmp_path / "digits" / "1")
    app = create_app({"MODEL_BASE_PATH": str(tmp_path / "digits"), "MODEL_POLL_SECONDS": 0})
    response = app.test_client().post("/v1/models/digits:predict", data=body, content_type="application/json")
    assert response.status_code == 400
    assert_one_json_sentence({"content-type": response.content_type}, response.data)


# --- the last good version ---------------------------------------------------------------------------------------


def corrupt_version(base_path, version: int, export_path) -> None:
    folder = base_path / str(version)
    folder.mkdir()
    (folder / artifacts.ONNX_FILE).write_bytes(b"not an ONNX model")
    shutil.copy(export_path / artifacts.METADATA_FILE, folder / artifacts.METADATA_FILE)


def test_a_worker_starting_with_a_corrupt_newest_version_serves_the_newest_that_loads(
    tmp_path, torch_smoke_run, caplog
):
    base_path = tmp_path / "digits"
    shutil.copytree(torch_smoke_run.export_path, base_path / "1")
    shutil.copytree(torch_smoke_run.export_path, base_path / "2")
    corrupt_version(base_path, 3, torch_smoke_run.export_path)
    corrupt_version(base_path, 4, torch_smoke_run.export_path)
    with caplog.at_level("WARNING", logger="serving.versions"):
        app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0})  # a fresh worker
    client = app.test_client()
    assert client.get("/readyz").get_json()["version"] == 2
    assert client.post("/v1/models/digits:predict", json={"instances": [IMAGE]}).status_code == 200
    statuses = client.get("/v1/models/digits").get_json()["model_version_status"]
    assert statuses[0] == {"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    assert statuses[1]["version"] == "4" and statuses[1]["state"] == "END"
    assert "serving version 2" in statuses[1]["status"]["error_message"]
    assert any(
        "serving version 2" in record.getMessage() and "version 4 failed" in record.getMessage()
        for record in caplog.records
    )

    # A failed folder that is removed is no longer reported; the next newest failure is.
    shutil.rmtree(base_path / "4")
    app.extensions["model_manager"].poll_once()
    assert [status["version"] for status in client.get("/v1/models/digits").get_json()["model_version_status"]] == [
        "2",
        "3",
    ]

    # Once the newest folder holds a good export, it is loaded and replaces the fallback.
    shutil.copytree(torch_smoke_run.export_path, base_path / "4")
    app.extensions["model_manager"].poll_once()
    assert client.get("/readyz").get_json()["version"] == 4
    assert len(client.get("/v1/models/digits").get_json()["model_version_status"]) == 1


def test_a_pinned_version_that_fails_does_not_fall_back(tmp_path, torch_smoke_run):
    base_path = tmp_path / "digits"
    shutil.copytree(torch_smoke_run.export_path, base_path / "1")
    corrupt_version(base_path, 2, torch_smoke_run.export_path)
    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0, "MODEL_VERSION": 2})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503 and "Version 2 of digits failed to load" in response.get_json()["error"]


# --- SIGTERM -----------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_under_load_loses_no_accepted_request(torch_smoke_run, tmp_path):
    server, port = start_server(torch_smoke_run.export_path, tmp_path)
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def count(outcome: str) -> None:
        with lock:
            outcomes[outcome] = outcomes.get(outcome, 0) + 1

    def client(keep_alive: bool) -> None:
        connection = None
        refused_since = None
        # Like a load balancer, a client stops sending after a second of refusals (503 or connection refused).
        while not stop.is_set() and (refused_since is None or time.monotonic() - refused_since < 1.0):
            connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                connection.request("POST", "/v1/models/digits:predict", BODY, {"Content-Type": "application/json"})
            except ConnectionRefusedError:
                count("refused")  # after the listener closed: refused cleanly, never sent
                connection = None
                refused_since = refused_since or time.monotonic()
                stop.wait(0.05)
                continue
            try:
                response = connection.getresponse()
                response.read()
                count(str(response.status))
                closing = response.getheader("Connection", "").lower() == "close"
                if response.status == 503:
                    refused_since = refused_since or time.monotonic()
                    stop.wait(0.05)
            except OSError as error:  # sent, then reset or closed without an answer: lost
                count(f"lost ({type(error).__name__})")
                closing = True
            except http.client.HTTPException as error:
                count(f"lost ({type(error).__name__})")
                closing = True
            if closing or not keep_alive:
                connection.close()
                connection = None

    threads = [threading.Thread(target=client, args=(index % 2 == 0,)) for index in range(8)]
    with server:
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.5)
            server.send_signal(signal.SIGTERM)
            exit_code = server.wait(30)
            time.sleep(0.3)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert exit_code == 0
    assert outcomes.get("200", 0) > 0
    # 503 is the drain's answer to a request that arrives after SIGTERM; refused, once the listeners have closed.
    assert {outcome for outcome in outcomes if outcome not in ("200", "503", "refused")} == set(), outcomes


def post_fully(port: int, connection: http.client.HTTPConnection | None = None) -> tuple[int, dict, bytes]:
    """One predict (on connection, else on a new one): (status, lower-cased headers, body)."""
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    connection.request("POST", "/v1/models/digits:predict", BODY, {"Content-Type": "application/json"})
    response = connection.getresponse()
    body = response.read()
    return response.status, {name.lower(): value for name, value in response.getheaders()}, body


@pytest.mark.slow
def test_while_draining_new_requests_are_503_and_idle_connections_close_once_quiet(torch_smoke_run, tmp_path):
    server, port = start_server(torch_smoke_run.export_path, tmp_path, keep_alive_s=DRAIN_KEEPALIVE_S)
    with server:
        kept = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        idle = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        assert post_fully(port, kept)[0] == 200
        assert post_fully(port, idle)[0] == 200
        idle_since = time.monotonic()
        server.send_signal(signal.SIGTERM)  # worker 0 passes it on: every worker drains

        statuses: list[int] = []
        refusal: tuple[int, dict, bytes] | None = None
        deadline = time.monotonic() + 10
        while refusal is None and time.monotonic() < deadline:
            answer = post_fully(port)  # never refused: new connections keep the drain from reaching its quiet end
            statuses.append(answer[0])
            if answer[0] == 503:
                refusal = answer
            time.sleep(0.05)
        assert refusal is not None and set(statuses) <= {200, 503}, statuses
        assert refusal[1]["connection"].lower() == "close"
        assert_one_json_sentence(refusal[1], refusal[2])

        # Keep arriving on new connections while a kept-alive one asks again, so that both workers are draining.
        stop = threading.Event()
        during: list[int] = []

        def keep_asking() -> None:
            while not stop.wait(0.05):
                during.append(post_fully(port)[0])

        asker = threading.Thread(target=keep_asking)
        asker.start()
        try:
            time.sleep(0.3)
            status, headers, body = post_fully(port, kept)
        finally:
            stop.set()
            asker.join()
        assert status == 503 and headers["connection"].lower() == "close", (status, headers)
        assert_one_json_sentence(headers, body)
        assert 503 in during and set(during) <= {200, 503}, during

        # Once nothing arrives, the idle kept-alive connection is closed well before its keep-alive deadline, and the
        # server exits.
        idle.sock.settimeout(DRAIN_KEEPALIVE_S + 5)
        assert idle.sock.recv(100) == b""
        assert time.monotonic() - idle_since < DRAIN_KEEPALIVE_S, "an idle connection was left to its keep-alive"
        assert server.wait(10) == 0
        kept.close()
        idle.close()
