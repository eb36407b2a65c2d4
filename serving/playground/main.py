"""`python -m serving.playground` (`make playground`): the page on 127.0.0.1, port 8000 or the next free one.

It finds the servers through the run folder `make serve` writes (`.run/`; the default ports when there is
none, which is also where `docker compose up` puts them). The page is for one person on this machine, so werkzeug's
threaded server is enough; it binds to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from experiment import library_logs
from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m serving.playground"
HOST = "127.0.0.1"
DEFAULT_PORT = 8000
# Tried in order when no --port is given; past them the system picks any free port. They stop short of 8080,
# TorchServe's port.
FALLBACK_PORTS = range(DEFAULT_PORT + 1, DEFAULT_PORT + 10)


def bind(app: Flask, ports: Sequence[int], any_port: bool) -> BaseWSGIServer:
    """A threaded server for app on the first free port of ports (then any free one, if any_port); .port says which."""
    candidates = [*ports, 0] if any_port else list(ports)
    for port in candidates:
        # Bound here rather than by werkzeug, which answers a taken port with sys.exit(1).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a previous run's TIME_WAIT is no obstacle
        try:
            listener.bind((HOST, port))
            listener.listen(128)
        except OSError as error:
            listener.close()
            if error.errno != errno.EADDRINUSE:
                raise UsageError(f"Cannot listen on {HOST}:{port}: {error.strerror}.") from None
            continue
        try:
            return make_server(HOST, listener.getsockname()[1], app, threaded=True, fd=listener.fileno())
        finally:
            listener.close()  # the server holds its own duplicate of the socket
    raise UsageError(f"Port {ports[0]} is already in use; choose another with --port.")


def _raise_interrupt(signal_number: int, frame: object) -> None:
    raise KeyboardInterrupt


def build_parser() -> argparse.ArgumentParser:
    """--port and --run-dir."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"port on {HOST} (default {DEFAULT_PORT}, or the next free one when it is taken)",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=Path(".run"),
        help="run folder of the stack `make serve` started (default %(default)s)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the page until Ctrl-C."""
    arguments = build_parser().parse_args(argv)

    def body() -> int:
        if arguments.port is not None and not 0 < arguments.port < 65536:
            raise UsageError(f"--port must be between 1 and 65535, got {arguments.port}.")
        library_logs.quiet()  # the gRPC client's protobuf import loads TensorFlow
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
        from serving.playground import create_app, endpoints

        addresses = endpoints.addresses_from_run_dir(arguments.run_dir)
        shape = endpoints.served_input_shape(arguments.run_dir)
        if shape is not None and shape != (8, 8):
            raise UsageError(
                f"The playground draws 8×8 digits only, and the model `{addresses.model_name}` takes {shape[0]}×"
                f"{shape[1]} images; query it with `.venv/bin/python -m serving.client` and `--images` instead "
                f"(docs/your-data.md)."
            )
        connected = endpoints.connect(addresses)
        try:
            app = create_app(connected, {"MODEL_NAME": addresses.model_name})
            if arguments.port is None:
                server = bind(app, [DEFAULT_PORT, *FALLBACK_PORTS], any_port=True)
            else:
                server = bind(app, [arguments.port], any_port=False)
            port = server.port
            if arguments.port is None and port != DEFAULT_PORT:
                print(f"Port {DEFAULT_PORT} is taken; using port {port} instead.")
            if not endpoints.stack_is_running(arguments.run_dir):
                print(
                    f"No `make serve` stack runs from {arguments.run_dir}/; asking the default ports "
                    f"(those of `docker compose up`). Start the servers with `make serve`."
                )
            print(f"Playground: http://{HOST}:{port}/  (model '{addresses.model_name}'; Ctrl-C to stop)", flush=True)
            # SIGTERM too; and SIGINT explicitly, since a shell that starts us in the background leaves it ignored.
            for number in (signal.SIGINT, signal.SIGTERM):
                signal.signal(number, _raise_interrupt)
            try:
                server.serve_forever()  # returns on KeyboardInterrupt: werkzeug catches it
            finally:
                server.server_close()
            print("Stopped the playground.")
        finally:
            for endpoint in connected:
                endpoint.close()
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
