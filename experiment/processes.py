"""Small helpers the launchers and the serving stack share: argument splitting and port probing."""

from __future__ import annotations

import socket
from typing import Sequence


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split argv at the first `--` into (launcher flags, flags passed through to the training command)."""
    argv = list(argv)
    if "--" in argv:
        index = argv.index("--")
        return argv[:index], argv[index + 1 :]
    return argv, []


def port_is_free(port: int, host: str = "", reuse_address: bool = False) -> bool:
    """Whether a TCP server could listen on host:port right now.

    reuse_address=True probes as servers that set SO_REUSEADDR bind (torch's TCPStore does): a port whose old
    connections linger in TIME_WAIT is then no conflict.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        if reuse_address:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True
