"""serving.runtime.process: one managed server, from launch to a stop that leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from serving import runtime
from serving.runtime import ServerError, ServerProcess
from serving.runtime.process import process_environment
from tests.serving.stubs import gone, leftovers, tree


def test_start_waits_for_the_ready_probe_and_stop_takes_the_worker_along(tmp_path, make_stub):
    spec = make_stub("flask", delay=0.5)
    began = time.monotonic()
    server = runtime.start(spec, tmp_path / "flask.log", timeout=30)
    assert time.monotonic() - began >= 0.5
    assert server.is_running() and server.is_ready()
    processes = tree(server.pid)
    assert len(processes) == 2, "the stub and its worker"
    assert "listening on" in server.log()

    assert server.stop() == -signal.SIGTERM  # the stub has no handler: SIGTERM ends it
    assert gone(processes)
    assert not server.is_running() and not server.is_ready()


def test_a_second_command_finds_the_server_through_its_pid_file_and_stops_it(tmp_path, make_stub, stub_script):
    spec = make_stub("flask")
    pid_path = tmp_path / "pids" / "flask.pid"
    with ServerProcess.launch(spec, tmp_path / "flask.log", pid_path) as server:
        server.wait_until_ready(30)
        found = ServerProcess.find(spec, pid_path, tmp_path / "flask.log")
        assert found is not None and found.pid == server.pid and found.is_ready()
        assert found.exit_status() is None  # not this object's child: no exit status to learn
        assert runtime.stop_all([found]) == ["flask"]
        assert not pid_path.exists()
        assert ServerProcess.find(spec, pid_path, tmp_path / "flask.log") is None
    assert leftovers(stub_script) == []


def test_a_server_that_exits_while_starting_is_one_error_with_its_log(tmp_path, make_stub, stub_script):
    with pytest.raises(ServerError) as raised:
        runtime.start(make_stub("tfserving", mode="crash"), tmp_path / "tfserving.log", timeout=30)
    assert str(raised.value).startswith("tfserving exited with status 3 before its model was ready; last lines of")
    assert "boom: no model under /nowhere" in str(raised.value)
    assert leftovers(stub_script) == []


def test_a_server_never_ready_is_stopped_after_the_timeout(tmp_path, make_stub, stub_script):
    began = time.monotonic()
    with pytest.raises(ServerError, match="did not report its model ready within 1 s"):
        runtime.start(make_stub("torchserve", mode="never"), tmp_path / "torchserve.log", timeout=1)
    assert time.monotonic() - began < 15
    assert leftovers(stub_script) == []


def test_signal_and_wait_give_the_exit_status(tmp_path, make_stub):
    pid_path = tmp_path / "flask.pid"
    with ServerProcess.launch(make_stub("flask"), tmp_path / "flask.log", pid_path) as server:
        server.wait_until_ready(30)
        found = ServerProcess.find(server.spec, pid_path, server.log_path)
        with pytest.raises(subprocess.TimeoutExpired):
            found.wait(0.2)
        server.send_signal(signal.SIGTERM)
        assert server.wait(30) == -signal.SIGTERM
        assert server.exit_status() == -signal.SIGTERM and not server.is_running()
        assert found.wait(5) is None and not found.is_running()  # another command learns only that it exited


def test_a_command_that_does_not_exist_is_one_sentence(tmp_path, make_stub):
    spec = make_stub("flask")
    spec.command = [str(tmp_path / "no-such-server")]
    with pytest.raises(ServerError) as raised:
        ServerProcess.launch(spec, tmp_path / "flask.log")
    assert str(raised.value) == f"Cannot start flask ({tmp_path / 'no-such-server'}): No such file or directory."


def test_servers_see_the_checkout_unbuffered_and_spec_variables(monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/shared")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    environment = process_environment({"PROMETHEUS_MULTIPROC_DIR": None, "FLASK_MODEL_NAME": "digits"})
    assert "PROMETHEUS_MULTIPROC_DIR" not in environment
    assert environment["FLASK_MODEL_NAME"] == "digits" and environment["PYTHONUNBUFFERED"] == "1"
    assert environment["PYTHONPATH"].split(os.pathsep) == [str(runtime.spec.PROJECT_ROOT), "/elsewhere"]


def test_free_ports_are_distinct_and_free():
    ports = runtime.free_ports(8)
    assert len(set(ports)) == 8
    assert all(runtime.port_is_free(port, "127.0.0.1") for port in ports)
    assert sys.platform != "linux" or all(1024 <= port < 65536 for port in ports)
