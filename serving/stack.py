"""Start, stop and watch the three model servers natively: `python -m serving.stack start|stop|status|logs`.

`make serve` runs `start`: it trains a model first when none is exported, starts the TensorFlow Serving-compatible
server, the Flask app and TorchServe on 127.0.0.1, waits until each one reports its model ready and prints
the endpoints. `make stop` runs `stop`. Everything a run leaves lives under the run directory (`.run/`); the stack
itself, its layout and its use from Python are in `serving.runtime.stack`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiment import library_logs
from experiment.errors import UsageError
from serving.runtime.process import tail
from serving.runtime.spec import DEFAULT_MODEL_NAME, ServerError, display_path
from serving.runtime.stack import DEFAULT_MODELS_DIR, DEFAULT_RUN_DIR, DEFAULT_START_TIMEOUT_SECONDS, Ports, Stack

PROG = "python -m serving.stack"


def _port_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ports (defaults as in docs/architecture.md)")
    for field in dataclasses.fields(Ports):
        group.add_argument(
            f"--{field.name.replace('_', '-')}-port",
            type=int,
            default=field.default,
            dest=f"port_{field.name}",
            metavar="PORT",
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start the servers and wait until every model is ready")
    start.add_argument("--foreground", action="store_true", help="stay attached; Ctrl-C stops every server")
    start.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_START_TIMEOUT_SECONDS,
        help="seconds to wait for all models to be ready (default %(default)s)",
    )
    start.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="folder with tf/<model>/ and torch/<model>/ exports (default %(default)s)",
    )
    start.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="model to serve (default %(default)s)")
    start.add_argument("--no-train", action="store_true", help="fail instead of training when no export exists")
    start.add_argument("--only", default=None, help="comma-separated subset of servers: tfserving,flask,torchserve")
    start.add_argument(
        "--flask-format",
        choices=("onnx", "pt2", "torchscript"),
        default=None,
        help="the file Flask serves from each torch version: onnx (default, ONNX Runtime), pt2 "
        "(AOTInductor) or torchscript (deprecated); train with --formats for the last two",
    )
    _port_flags(start)

    for name, help_text in (
        ("stop", "stop every server and remove the pid files"),
        ("status", "show which servers run and have their model ready"),
    ):
        commands.add_parser(name, help=help_text)

    logs = commands.add_parser("logs", help="show the end of each server's log")
    logs.add_argument("servers", nargs="*", help="servers to show (default: all)")
    logs.add_argument("--lines", type=int, default=40, help="lines per log (default %(default)s)")
    logs.add_argument("--follow", action="store_true", help="keep printing new lines until Ctrl-C")

    for subparser in (start, *(commands.choices[name] for name in ("stop", "status", "logs"))):
        subparser.add_argument(
            "--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where pid files and logs live (default %(default)s)"
        )
    return parser


def _command_start(arguments: argparse.Namespace) -> int:
    ports = Ports(**{field.name: getattr(arguments, f"port_{field.name}") for field in dataclasses.fields(Ports)})
    for name, port in ports.as_dict().items():
        if not 0 < port < 65536:
            raise ServerError(f"--{name.replace('_', '-')}-port must be between 1 and 65535, got {port}.")
    only = [name.strip() for name in arguments.only.split(",") if name.strip()] if arguments.only else None
    stack = Stack(
        ports=ports,
        run_dir=arguments.run_dir,
        models_dir=arguments.models_dir,
        model_name=arguments.model_name,
        only=only,
        flask_format=arguments.flask_format,
    )
    began = time.monotonic()
    seconds = stack.start(timeout=arguments.timeout, train=not arguments.no_train)
    try:
        print(f"All {len(seconds)} servers ready in {time.monotonic() - began:.1f} s.")
        print(stack.describe_endpoints())
        if not arguments.foreground:
            return 0
        return stack.run_in_foreground()
    except KeyboardInterrupt:
        if arguments.foreground:  # Ctrl-C before the foreground loop took over: stop what it would have stopped
            stack.stop(report=lambda line: None)
        raise


def _command_stop(arguments: argparse.Namespace) -> int:
    stopped = Stack.from_run_dir(arguments.run_dir).stop()
    print(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")
    return 0


def _command_status(arguments: argparse.Namespace) -> int:
    """The table of servers and, when any runs, the endpoints; exit 0 whatever they do, 1 only when it cannot tell."""
    stack = Stack.from_run_dir(arguments.run_dir)
    try:
        statuses = stack.status()
    except OSError as error:  # an unreadable pid file or process table: the state is unknown, not "stopped"
        print(
            f"{PROG}: error: Cannot tell whether the servers in {display_path(stack.run_dir)} run: {error}.",
            file=sys.stderr,
        )
        return 1
    for status in statuses:
        state = "ready" if status.ready else ("starting or not ready" if status.running else "stopped")
        pid = f"pid {status.pid}" if status.pid else ""
        print(f"{status.name:<10} {state:<22} {pid}")
    if any(status.running for status in statuses):
        print(stack.describe_endpoints())
    return 0


def _command_logs(arguments: argparse.Namespace) -> int:
    stack = Stack.from_run_dir(arguments.run_dir)
    known = [spec.name for spec in Stack(run_dir=arguments.run_dir).specs()]
    names = arguments.servers or known
    for name in names:
        if name not in known:
            raise ServerError(f"Unknown server {name!r}; the servers are {', '.join(sorted(known))}.")
    paths = [stack.log_path(name) for name in names]
    if not any(path.exists() for path in paths):
        raise ServerError(f"No logs under {display_path(stack.logs_dir)}; start the servers with `make serve`.")
    for path in paths:
        if path.exists():
            print(f"==> {display_path(path)} <==")
            print(tail(path, arguments.lines))
    if arguments.follow:
        _follow(paths)
    return 0


def _follow(paths: list[Path]) -> None:
    positions = {path: path.stat().st_size if path.exists() else 0 for path in paths}
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for path in paths:
                with contextlib.suppress(OSError), open(path, "rb") as handle:
                    handle.seek(positions[path])
                    chunk = handle.read()
                    positions[path] = handle.tell()
                    for line in chunk.decode("utf-8", errors="replace").splitlines():
                        print(f"{path.stem}| {line}")
            time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.stack`."""
    arguments = _build_parser().parse_args(argv)
    library_logs.quiet()
    handlers = {"start": _command_start, "stop": _command_stop, "status": _command_status, "logs": _command_logs}
    try:
        return handlers[arguments.command](arguments)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # start() stops whatever it had started before the interrupt reaches here.
        print(f"{PROG}: interrupted; every server it had started was stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
