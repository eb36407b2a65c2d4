"""Small helpers the launchers and the serving runtime share: argument splitting and the one set of port probes."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
from collections.abc import Sequence

LOOPBACK = "127.0.0.1"


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv at the first `--` into (launcher flags, flags passed through to the training command)."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def port_is_free(port: int, host: str = "", reuse_address: bool = True) -> bool:
    """Whether a TCP server could listen on host:port right now.

    The probe binds with SO_REUSEADDR, as every server the project starts does (uvicorn's sockets, gRPC,
    torch's TCPStore, TorchServe's JVM): connections a stopped server left in TIME_WAIT are then no conflict, while
    a socket that listens on the port still is. reuse_address=False probes as a server without that option binds.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct TCP ports that nothing listens on at host right now (the operating system picks them)."""
    with contextlib.ExitStack() as sockets:
        # Every socket stays bound until all are chosen, so the system cannot hand out the same port twice.
        probes = [sockets.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for probe in probes:
            probe.bind((host, 0))
        return [probe.getsockname()[1] for probe in probes]


def free_port(host: str = LOOPBACK) -> int:
    """One TCP port that nothing listens on at host right now."""
    return free_ports(1, host)[0]


def port_accepts(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections on host:port right now."""
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def in_data_parallel_group() -> bool:
    """Whether this process is one worker of a data-parallel run (torchrun's WORLD_SIZE > 1, or a TF_CONFIG)."""
    return os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1") or bool(
        os.environ.get("TF_CONFIG", "").strip()
    )


def exit_status(status: int) -> int:
    """End a training command with status: a worker of a data-parallel run ends here, at once, after flushing.

    The frameworks' collective runtimes (gloo's and the TCP store's threads in torch, TensorFlow's gRPC server
    and collective executors, which it cannot stop) still run when training returns. Letting the interpreter
    tear down then runs C++ static destructors while those threads are alive, and a destructor of a thread that
    was never joined aborts the process ("terminate called without an active exception", SIGABRT) after the work
    is done. Every file is closed by then, so a worker that succeeded flushes its output and logs and leaves with
    os._exit, which runs no destructors. A failed worker (a peer lost, a mistake) and a single process return
    status and exit normally: a launcher that watches the group then still sees the first failure first.
    """
    if status != 0 or not in_data_parallel_group():
        return status
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)
