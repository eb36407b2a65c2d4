"""serving.runtime.stack: pid files, port checks, readiness waits and stopping the three servers without a leftover.

Most tests run the stack over stub servers (plain Python HTTP servers with a child "worker"), so they take seconds;
the end-to-end test at the bottom starts the three real servers on free ports.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from experiment.processes import port_is_free
from serving.clients import RestClient, TFServingGrpcClient, TorchServeClient, TorchServeGrpcClient
from serving.runtime import Ports, ServerError, Stack
from serving.runtime.external import client_environment, endpoints_from_environment
from tests.serving.stubs import gone, leftovers, tree

ROOT = Path(__file__).resolve().parents[3]


def test_start_writes_pid_files_and_logs_then_stop_leaves_nothing(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", specs=[make_stub("tfserving", delay=0.5), make_stub("flask")])
    lines: list[str] = []
    seconds = stack.start(timeout=30, report=lines.append)

    assert set(seconds) == {"tfserving", "flask"}
    assert seconds["tfserving"] >= 0.5
    assert any(line.startswith("Ready    tfserving") for line in lines)
    processes = []
    for name in ("tfserving", "flask"):
        pid = int(stack.pid_path(name).read_text())
        members = tree(pid)
        assert len(members) == 2, "the stub and its worker"
        processes += members
        assert "listening on" in stack.log_path(name).read_text()
    assert [status.ready for status in stack.status()] == [True, True]

    assert sorted(stack.stop(report=lines.append)) == ["flask", "tfserving"]
    assert gone(processes)
    assert not list((tmp_path / "run" / "pids").iterdir())
    assert [status.running for status in stack.status()] == [False, False]


def test_port_already_taken_names_the_port_and_the_process(tmp_path, make_stub):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(run_dir=tmp_path / "run", specs=[make_stub("flask", port=port)])
        with pytest.raises(ServerError) as raised:
            stack.start(timeout=10, report=lambda line: None)
    message = str(raised.value)
    assert f"Port {port} (flask HTTP) is already in use by process {os.getpid()}" in message
    assert "\n" not in message
    assert not (tmp_path / "run" / "pids" / "flask.pid").exists()


def test_server_that_exits_while_starting_is_named_with_its_log_and_the_rest_stopped(tmp_path, make_stub, stub_script):
    specs = [make_stub("flask", mode="never"), make_stub("tfserving", mode="crash")]
    stack = Stack(run_dir=tmp_path / "run", specs=specs)
    with pytest.raises(ServerError) as raised:
        stack.start(timeout=30, report=lambda line: None)
    message = str(raised.value)
    assert message.startswith("tfserving exited with status 3 before its model was ready")
    assert "boom: no model under /nowhere" in message
    assert not list((tmp_path / "run" / "pids").iterdir())
    assert leftovers(stub_script) == []


def test_timeout_names_the_server_that_did_not_come_up_and_shows_its_log(tmp_path, make_stub):
    never = make_stub("torchserve", mode="never")
    stack = Stack(run_dir=tmp_path / "run", specs=[make_stub("flask"), never])
    started = time.monotonic()
    with pytest.raises(ServerError) as raised:
        stack.start(timeout=2, report=lambda line: None)
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert message.startswith("torchserve did not report its model ready within 2 s; last lines of")
    assert "stub never listening on" in message
    assert not list((tmp_path / "run" / "pids").iterdir())


def test_a_server_that_ignores_sigterm_is_killed_with_its_worker(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", specs=[make_stub("flask", mode="stubborn")])
    stack.start(timeout=30, report=lambda line: None)
    processes = tree(int(stack.pid_path("flask").read_text()))
    lines: list[str] = []
    began = time.monotonic()
    stack.stop(report=lines.append, grace=0.5)
    assert time.monotonic() - began < 15
    assert gone(processes)
    assert any(line.startswith("Killing process") for line in lines)


def test_stale_pid_files_are_ignored_and_removed(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", specs=[make_stub("tfserving"), make_stub("flask")])
    stack.pid_path("tfserving").parent.mkdir(parents=True)
    # A pid that no longer exists, and a live pid (this test) that is newer than the pid file naming it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stack.pid_path("tfserving").write_text(f"{dead.pid}\n")
    stack.pid_path("flask").write_text(f"{os.getpid()}\n")
    os.utime(stack.pid_path("flask"), (0, 0))
    assert stack.stop(report=lambda line: None) == []
    assert psutil.pid_exists(os.getpid())
    assert not stack.pid_path("tfserving").exists() and not stack.pid_path("flask").exists()


def test_second_start_on_a_running_run_dir_is_refused(tmp_path, make_stub):
    specs = [make_stub("flask")]
    with Stack(run_dir=tmp_path / "run", specs=specs) as stack:
        stack.start(timeout=30, report=lambda line: None)
        with pytest.raises(ServerError, match="is already running"):
            Stack(run_dir=tmp_path / "run", specs=specs).start(timeout=5, report=lambda line: None)
        assert stack.status()[0].ready


def test_endpoints_and_client_environment_follow_the_ports(tmp_path):
    ports = Ports(
        tf_grpc=1,
        tf_rest=2,
        flask=3,
        torchserve_inference=4,
        torchserve_management=5,
        torchserve_metrics=6,
        torchserve_grpc_inference=7,
        torchserve_grpc_management=8,
    )
    stack = Stack(ports=ports, run_dir=tmp_path / "run", models_dir=tmp_path / "models")
    endpoints = {endpoint.name: endpoint for endpoint in stack.endpoints()}
    assert {name: endpoint.address for name, endpoint in endpoints.items()} == {
        "tf-grpc": "127.0.0.1:1",
        "tf-rest": "http://127.0.0.1:2",
        "flask-rest": "http://127.0.0.1:3",
        "torchserve-rest": "http://127.0.0.1:4",
        "torchserve-grpc": "127.0.0.1:7",
    }
    environment = client_environment(stack)
    assert environment["TFSERVING_GRPC"] == "127.0.0.1:1" and environment["TORCHSERVE_URL"] == "http://127.0.0.1:4"
    assert environment["TORCHSERVE_MANAGEMENT_URL"] == "http://127.0.0.1:5"
    assert environment["TORCHSERVE_KEY_FILE"] == str(tmp_path / "run" / "torchserve" / "key_file.json")
    # Read back, the variables give the same endpoints (what the integration suite does against a running stack).
    external = endpoints_from_environment(environment)
    assert [(endpoint.name, endpoint.address) for endpoint in external] == [
        (endpoint.name, endpoint.address) for endpoint in stack.endpoints()
    ]
    text = stack.describe_endpoints()
    assert "curl -s -H 'Content-Type: application/json' -d '{\"instances\":[[[0,0,5,13" in text
    assert "http://127.0.0.1:2/v1/models/digits:predict" in text
    assert "http://127.0.0.1:3/v1/models/digits:predict" in text
    assert "Authorization: Bearer" in text and "http://127.0.0.1:4/predictions/digits" in text
    assert "serving.client tf --grpc 127.0.0.1:1" in text
    assert "serving.client torchserve --grpc 127.0.0.1:7 --key-file" in text


def test_each_endpoint_gets_the_client_of_its_protocol(tmp_path):
    stack = Stack(ports=Ports.free(), run_dir=tmp_path / "run", models_dir=tmp_path / "models")
    expected = {
        "tf-grpc": TFServingGrpcClient,
        "tf-rest": RestClient,
        "flask-rest": RestClient,
        "torchserve-rest": TorchServeClient,
        "torchserve-grpc": TorchServeGrpcClient,
    }
    for endpoint in stack.endpoints():
        client = endpoint.client("other-model", timeout=3.0)
        try:
            assert type(client) is expected[endpoint.name]
            assert client.model_name == "other-model"
        finally:
            client.close()
    rest, grpc = [endpoint for endpoint in stack.endpoints() if endpoint.server == "torchserve"]
    client = rest.client()
    assert client.key_file == stack.torchserve_key_file
    assert client.management_url == f"http://127.0.0.1:{stack.ports.torchserve_management}"
    client.close()
    client = grpc.client()
    assert client.key_file == stack.torchserve_key_file
    assert client.management_address == f"127.0.0.1:{stack.ports.torchserve_grpc_management}"
    assert client.keys.management_url == f"http://127.0.0.1:{stack.ports.torchserve_management}"  # renews keys
    client.close()


def test_server_commands_follow_design_md(tmp_path):
    stack = Stack(run_dir=tmp_path / "run", models_dir=tmp_path / "models")
    specs = {spec.name: spec for spec in stack.specs()}
    assert list(specs) == ["tfserving", "flask", "torchserve"]
    tf_command = specs["tfserving"].command
    assert tf_command[1:3] == ["-m", "serving.tfserving"]
    assert "--port=8500" in tf_command and "--rest_api_port=8501" in tf_command and "--model_name=digits" in tf_command
    assert f"--model_base_path={tmp_path / 'models' / 'tf' / 'digits'}" in tf_command
    flask = specs["flask"]
    assert flask.command[1:] == ["-m", "serving.flask_app", "--host", "127.0.0.1", "--port", "5000"]
    assert flask.environment["FLASK_MODEL_BASE_PATH"] == str(tmp_path / "models" / "torch" / "digits")
    torchserve = specs["torchserve"]
    assert "--foreground" in torchserve.command and torchserve.stop_command[-1] == "--stop"
    assert torchserve.environment["TMPDIR"] == str(tmp_path / "run" / "torchserve" / "tmp")
    assert set(torchserve.ports.values()) == {8080, 8081, 8082, 7070, 7071}


# ---------------------------------------------------------------------------------------------------------------
# The real servers, on free ports, over models trained into a temporary folder.


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_real_stack_starts_answers_and_stops_cleanly(tmp_path, tf_trained, torch_trained):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tf").symlink_to(Path(tf_trained.export_path).parents[1])
    (models / "torch").symlink_to(Path(torch_trained.export_path).parents[1])
    stack = Stack(ports=Ports.free(), run_dir=tmp_path / "run", models_dir=models)
    lines: list[str] = []
    try:
        seconds = stack.start(timeout=240, report=lines.append, train=False)
        print("start-up seconds until ready:", {name: round(value, 1) for name, value in seconds.items()})
        processes = [member for name in seconds for member in tree(int(stack.pid_path(name).read_text()))]
        assert set(seconds) == {"tfserving", "flask", "torchserve"}
        # Ready when asked again at once: every TF server worker answers its health check for the whole group.
        statuses = stack.status()
        assert all(status.ready for status in statuses), statuses
        assert stack.torchserve_key_file.exists()
    finally:
        stopped = stack.stop(report=lines.append)
    assert sorted(stopped) == ["flask", "tfserving", "torchserve"]
    assert gone(processes), "\n".join(lines)
    for port in stack.ports.as_dict().values():
        assert port_is_free(port, "127.0.0.1", reuse_address=True)
    assert not stack.torchserve_key_file.exists()
