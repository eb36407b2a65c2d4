"""The TF server's front end without TensorFlow: the HTTP server, its flags, the metrics text, the workers' folder."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from experiment.errors import UsageError
from serving.frontend.http import FrontEndSettings, RestFrontEnd, listening_socket
from serving.frontend.workers import WorkerGroup, check_ports_free
from serving.tfserving import config, monitoring, workers

LIMIT = 1000


class EchoApp:
    """A WSGI app answering what it saw; `release` holds requests to /slow (`arrived` once one has) until set; `drain`
    as RestApp's."""

    def __init__(self) -> None:
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.drained = threading.Event()

    def __call__(self, environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("a bug")
        if environ["PATH_INFO"] == "/slow":
            self.arrived.set()
            self.release.wait(10)
        body = environ["wsgi.input"].read()
        seen = {
            "method": environ["REQUEST_METHOD"],
            "path": environ["PATH_INFO"],
            "query": environ["QUERY_STRING"],
            "length": int(environ["CONTENT_LENGTH"]),
            "body": body.decode(),
            "type": environ.get("CONTENT_TYPE"),
            "custom": environ.get("HTTP_X_CUSTOM"),
        }
        start_response("201 Created", [("Content-Type", "application/json"), ("X-Answer", "yes")])
        return [json.dumps(seen).encode()]

    def drain(self, timeout_s: float) -> bool:
        self.drained.set()
        return True


class Recorder:
    """Stands in for ServerMetrics: remembers what the front end recorded."""

    def __init__(self) -> None:
        self.records: list[tuple] = []

    def record(self, *record) -> None:
        self.records.append(record[:4])

    def exposition(self) -> bytes:
        return b"# TYPE x counter\nx{} 1\n"


@pytest.fixture
def front_end():
    app, recorder = EchoApp(), Recorder()
    settings = FrontEndSettings(LIMIT, threads=4, keep_alive_seconds=5, metrics_path="/metrics", metrics=recorder)
    server = RestFrontEnd(app, listening_socket("127.0.0.1", 0, share_port=False), settings)
    server.start()
    server.recorder = recorder
    yield server
    app.release.set()
    server.stop(5)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None, chunked=False):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            method,
            path,
            body=iter([body[:5], body[5:]]) if chunked else body,
            headers=headers or {},
            encode_chunked=chunked,
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_a_request_reaches_the_wsgi_app_whole_and_its_answer_comes_back(front_end):
    status, headers, body = request(
        front_end.port,
        "POST",
        "/v1/models/m:predict?x=1",
        b'{"a": 1}',
        {"Content-Type": "application/json", "X-Custom": "c"},
    )
    assert status == 201 and headers["x-answer"] == "yes" and headers["content-length"] == str(len(body))
    assert json.loads(body) == {
        "method": "POST",
        "path": "/v1/models/m:predict",
        "query": "x=1",
        "length": 8,
        "body": '{"a": 1}',
        "type": "application/json",
        "custom": "c",
    }
    assert front_end.recorder.records == [("m", "predict", "REST", "UNKNOWN")]  # 201 is no answer TF Serving gives


def test_a_chunked_body_arrives_de_chunked(front_end):
    status, _, body = request(front_end.port, "POST", "/x", b"0123456789", chunked=True)
    assert status == 201 and json.loads(body)["body"] == "0123456789" and json.loads(body)["length"] == 10


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413_with_one_sentence_and_the_connection_goes_on(front_end, chunked):
    connection = http.client.HTTPConnection("127.0.0.1", front_end.port, timeout=10)
    try:
        body = b" " * (LIMIT + 1)
        connection.request("POST", "/v1/models/m:predict", iter([body[:5], body[5:]]) if chunked else body)
        response = connection.getresponse()
        assert response.status == 413 and response.getheader("connection") is None
        assert json.loads(response.read()) == {
            "error": f"The request body is larger than this server's limit of {LIMIT} bytes."
        }
        connection.request("POST", "/x", b"{}")  # the same connection: the refused body was read to its end
        assert connection.getresponse().status == 201
    finally:
        connection.close()
    assert front_end.recorder.records[0] == ("m", "predict", "REST", "RESOURCE_EXHAUSTED")


def test_a_failing_app_is_a_500_sentence_and_the_server_goes_on(front_end):
    status, _, body = request(front_end.port, "GET", "/boom")
    assert status == 500 and "see the server log" in json.loads(body)["error"]
    assert request(front_end.port, "GET", "/fine")[0] == 201


def test_the_metrics_path_answers_prometheus_text(front_end):
    status, headers, body = request(front_end.port, "GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain") and body.startswith(b"# TYPE")


def test_stop_finishes_the_request_in_flight_then_refuses_connections(front_end):
    answers: list[int] = []
    thread = threading.Thread(target=lambda: answers.append(request(front_end.port, "GET", "/slow")[0]))
    thread.start()
    assert front_end.app.arrived.wait(10)  # the request is in flight
    stopper = threading.Thread(target=front_end.stop, args=(10,))
    stopper.start()
    assert front_end.app.drained.wait(10)  # the stop has begun: no longer listening, waiting for the request
    front_end.app.release.set()
    thread.join(10)
    stopper.join(10)
    assert answers == [201] and front_end.app.drained.is_set()
    with pytest.raises(OSError):
        request(front_end.port, "GET", "/x")


def test_a_port_in_use_is_one_sentence():
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        with pytest.raises(UsageError, match=r"Cannot listen on 127\.0\.0\.1"):
            check_ports_free("127.0.0.1", [holder.getsockname()[1]])


# ---- flags --------------------------------------------------------------------------------------------------


def parse(tmp_path: Path, *flags: str) -> config.ServerOptions:
    return config.parse_options([f"--model_base_path={tmp_path}", *flags])


def test_new_flags_are_parsed(tmp_path):
    monitoring_file = tmp_path / "monitoring.config"
    monitoring_file.write_text('prometheus_config { enable: true path: "/metrics/here" }')
    options = parse(
        tmp_path,
        "--workers=3",
        f"--grpc_socket_path={tmp_path / 's.sock'}",
        f"--monitoring_config_file={monitoring_file}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
        "--tensorflow_session_parallelism=3",
        "--tensorflow_inter_op_parallelism=1",
        "--grpc_max_threads=7",
    )
    assert options.workers == 3 and options.grpc_socket_path == tmp_path / "s.sock"
    assert options.monitoring == monitoring.PrometheusSettings("/metrics/here")
    assert options.grpc_channel_arguments == (("grpc.max_connection_age_ms", 2000), ("grpc.lb_policy_name", "grpclb"))
    assert (options.intra_op_threads, options.inter_op_threads) == (3, 1)
    assert options.grpc_threads == 7 and options.rest_threads == config.default_threads(3, None)


def test_defaults_follow_the_cores(tmp_path):
    options = parse(tmp_path)
    assert options.workers == config.default_workers() == min(config.available_cores(), config.MAX_DEFAULT_WORKERS)
    assert options.monitoring is None and options.grpc_socket_path is None and options.grpc_channel_arguments == ()
    assert options.grpc_threads == options.rest_threads == max(4, 4 * config.available_cores() // options.workers)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--workers=-1"], "--workers must be 0"),
        (["--grpc_max_threads=-2"], "--grpc_max_threads must be 0"),
        (["--grpc_channel_arguments=novalue"], "key=value"),
        (["--tensorflow_intra_op_parallelism=-1"], "--tensorflow_intra_op_parallelism must be 0"),
        (["--monitoring_config_file=/nonexistent/monitoring.config"], "Cannot read --monitoring_config_file"),
    ],
)
def test_bad_flag_values_are_one_sentence(tmp_path, flags, message):
    with pytest.raises(UsageError, match=message):
        parse(tmp_path, *flags)


def test_unknown_flags_are_still_refused(tmp_path):
    with pytest.raises(SystemExit) as exited:
        parse(tmp_path, "--no_such_flag=1")
    assert exited.value.code == 2


@pytest.mark.parametrize(
    "text, expected",
    [
        ("prometheus_config { enable: true }", monitoring.PrometheusSettings(monitoring.DEFAULT_PATH)),
        ('prometheus_config { enable: false path: "/x" }', None),
        ("", None),
    ],
)
def test_monitoring_config(tmp_path, text, expected):
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    assert monitoring.read_monitoring_config(path) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("prometheus_config { enable: maybe }", "not a valid text-format"),
        ('prometheus_config { enable: true path: "metrics" }', "must start with"),
    ],
)
def test_bad_monitoring_config_is_one_sentence(tmp_path, text, message):
    path = tmp_path / "monitoring.config"
    path.write_text(text)
    with pytest.raises(UsageError, match=message):
        monitoring.read_monitoring_config(path)


# ---- metrics across processes ---------------------------------------------------------------------------------

RECORDING_PROCESS = """
import os, sys
from pathlib import Path
os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
from serving.tfserving.monitoring import ServerMetrics
metrics = ServerMetrics(Path(sys.argv[1]))
for status in sys.argv[2:]:
    metrics.record("digits", "Predict", "GRPC", status, 0.002)
metrics.set_versions({"digits": 7})
if sys.argv[2:] == ["OK"]:
    sys.stdout.write(metrics.exposition().decode())
"""


def test_metrics_add_up_every_process_with_the_real_servers_names(tmp_path):
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])}
    for statuses in (["OK", "OK", "NOT_FOUND"], ["OK"]):  # two server processes; the second one answers the page
        done = subprocess.run(
            [sys.executable, "-c", RECORDING_PROCESS, str(tmp_path), *statuses],
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
        )
        assert done.returncode == 0, done.stderr
    page = done.stdout
    assert "# TYPE :tensorflow:serving:request_count counter" in page
    assert ':tensorflow:serving:request_count{model_name="digits",status="OK"} 3' in page
    assert ':tensorflow:serving:request_count{model_name="digits",status="NOT_FOUND"} 1' in page
    assert ':tensorflow:serving:request_latency_count{API="Predict",entrypoint="GRPC",model_name="digits"} 3' in page
    # Microseconds, in the real server's buckets: 2 ms lies between 10 × 1.8^9 and 10 × 1.8^10.
    buckets = ':tensorflow:serving:request_latency_bucket{API="Predict",entrypoint="GRPC",model_name="digits",le='
    assert f'{buckets}"1983.59"}} 0' in page and f'{buckets}"3570.47"}} 3' in page and f'{buckets}"+Inf"}} 3' in page
    assert page.count('tfserving_model_version_loaded{model_name="digits",pid=') == 2
    assert "_total" not in page and "_created" not in page


# ---- the workers' shared folder ----------------------------------------------------------------------------------


def test_the_group_is_ready_only_when_every_worker_is(tmp_path):
    first, second = WorkerGroup(0, 2, tmp_path), WorkerGroup(1, 2, tmp_path)
    assert not first.all_ready()
    first.publish_ready(True)
    assert not second.all_ready()
    second.publish_ready(True)
    assert first.all_ready() and second.all_ready()
    second.publish_ready(False)
    assert not first.all_ready()
    assert workers.published_config(first) is None
    workers.publish_config(second, "model_config_list {}")
    assert workers.published_config(first) == "model_config_list {}"
    second.remove_folder()  # only worker 0 removes it
    assert tmp_path.is_dir()
    first.remove_folder()
    assert not tmp_path.exists()
