"""Start right after stop: a port whose old connections sit in TIME_WAIT can be bound at once, a port with a
listener cannot. The probes first, then the three real servers stopped while clients hold keep-alive connections."""

from __future__ import annotations

import http.client
import socket
from pathlib import Path

import grpc
import psutil
import pytest

from experiment.errors import UsageError
from experiment.processes import port_is_free
from serving.frontend.workers import check_ports_free
from serving.runtime import Ports, ServerError, Stack

HOST = "127.0.0.1"
HELD_CONNECTIONS = 20


def _time_wait_ports() -> set[int]:
    return {c.laddr.port for c in psutil.net_connections("tcp") if c.status == psutil.CONN_TIME_WAIT and c.laddr}


def _closing_ports() -> set[int]:
    """Local ports of connections a closed server left behind (FIN_WAIT2 while the client holds on, TIME_WAIT after)."""
    states = (
        psutil.CONN_TIME_WAIT,
        psutil.CONN_FIN_WAIT1,
        psutil.CONN_FIN_WAIT2,
        psutil.CONN_CLOSING,
        psutil.CONN_LAST_ACK,
    )
    return {c.laddr.port for c in psutil.net_connections("tcp") if c.status in states and c.laddr}


def _leave_time_wait_on_a_port() -> int:
    """A port whose listener is gone and whose accepted connection, closed by the server first, is in TIME_WAIT."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port)) as client:
            accepted, _ = listener.accept()
            accepted.close()  # the server side closes first: its end of the connection goes to TIME_WAIT
            assert client.recv(1) == b""
    assert port in _time_wait_ports()
    return port


def test_a_port_in_time_wait_is_free_and_a_listened_port_is_not():
    port = _leave_time_wait_on_a_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind((HOST, port))  # what the probes did without SO_REUSEADDR: the restart failed for a minute
    assert port_is_free(port, HOST)
    check_ports_free(HOST, [port])  # the TF server's own check before it starts its workers

    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, port))
        listener.listen()
        assert not port_is_free(port, HOST)
        with pytest.raises(UsageError, match=rf"^Cannot listen on {HOST}:{port}: Address already in use\.$"):
            check_ports_free(HOST, [port])


def _hold_connections(ports: Ports) -> list:
    """Keep-alive connections that each made a request, to every REST port, and a gRPC channel to each gRPC port."""
    held: list = []
    for port, path in (
        (ports.tf_rest, "/v1/models/digits"),
        (ports.flask, "/readyz"),
        (ports.torchserve_inference, "/ping"),
    ):
        for _ in range(HELD_CONNECTIONS):
            connection = http.client.HTTPConnection(HOST, port, timeout=30)
            connection.request("GET", path)
            connection.getresponse().read()
            held.append(connection)
    for port in (ports.tf_grpc, ports.torchserve_grpc_inference):
        channel = grpc.insecure_channel(f"{HOST}:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        held.append(channel)
    return held


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_real_stack_starts_again_at_once_after_a_stop_with_held_connections(tmp_path, tf_trained, torch_trained):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tf").symlink_to(Path(tf_trained.export_path).parents[1])
    (models / "torch").symlink_to(Path(torch_trained.export_path).parents[1])
    ports = Ports.free()
    stack = Stack(ports=ports, run_dir=tmp_path / "run", models_dir=models)
    quiet = lambda line: None  # noqa: E731
    try:
        stack.start(timeout=240, report=quiet, train=False)
        held = _hold_connections(ports)
        stack.stop(report=quiet)
        lingering = _closing_ports() & set(ports.as_dict().values())
        assert {ports.tf_rest, ports.flask} <= lingering, "the test's premise: the servers' closed connections linger"

        stack.start(timeout=240, report=quiet, train=False)  # at once, on the same ports, the clients still holding
        for item in held:
            item.close()
        assert all(status.ready for status in stack.status())

        second = Stack(ports=ports, run_dir=tmp_path / "second", models_dir=models)
        with pytest.raises(ServerError, match=r"is already in use by"):
            second.start(timeout=60, report=quiet, train=False)
    finally:
        stack.stop(report=quiet)
