"""`python -m serving.flask_app`: the Flask app on uvicorn (serving.frontend), in one or more worker processes on one
port, draining on SIGTERM.

Each worker is a process with its own copy of the app: Python runs one thread at a time, so one process serves about
one core, and on a small CPU model several single-threaded workers serve more than one process whose threads fight
over the same cores. The process the user started (worker 0) starts the others with the same flags; each builds the
app itself (loading the model and starting its version poller) and only then opens the port (SO_REUSEPORT), so the
kernel never hands a connection to a worker that is still loading. ONNX Runtime workers never import torch.

What the port does with clients is serving.frontend's: bodies read in full before the app runs, up to the body limit
(413) and within the body deadline (408), both as one JSON sentence; idle kept-alive connections closed after the
keep-alive seconds. On SIGTERM every worker refuses new requests (503, `Connection: close`) while those admitted
finish, waits until the whole group has seen no request for a short quiet period (clients told 503 have moved on, so
closing the port resets nobody's request), then closes the port and exits within the grace period. SIGINT does the
same.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import time
from typing import Any

from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m serving.flask_app"
logger = logging.getLogger("serving.flask_app")
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_APPLICATION = "serving.flask_app:create_app"
KEEP_ALIVE_SECONDS = 5.0
GRACE_SECONDS = 20.0
# Threads per worker that run the app; the event loop reads bodies, so these only ever run routes. With one core per
# worker more would only queue on the GIL, and one would let a slow route hold up the next request.
THREADS = 2
# The drain: once no request has been refused for QUIET_SECONDS anywhere in the group, the port closes; it waits for
# that at most SETTLE_LIMIT_SECONDS, and ends EXIT_MARGIN_SECONDS before the grace period (closing and exiting take
# the rest).
QUIET_SECONDS = 0.5
SETTLE_LIMIT_SECONDS = 5.0
EXIT_MARGIN_SECONDS = 1.0
WORKERS_VARIABLE = "WEB_CONCURRENCY"  # the number of workers, as gunicorn and uvicorn read it
MAX_BODY_VARIABLE = "FLASK_MAX_CONTENT_LENGTH"
BODY_TIMEOUT_VARIABLE = "FLASK_BODY_TIMEOUT_SECONDS"


def default_workers() -> int:
    """WEB_CONCURRENCY, else one per core between 2 and 4."""
    text = os.environ.get(WORKERS_VARIABLE)
    if text is None or not text.strip():
        return max(2, min(4, os.cpu_count() or 1))
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"{WORKERS_VARIABLE} must be a whole number of workers, got {text!r}.") from None


def build_parser() -> argparse.ArgumentParser:
    """The server's flags; the app's own settings stay FLASK_* environment variables (serving.flask_app)."""
    parser = argparse.ArgumentParser(prog=PROG, description="Serve the Flask app on uvicorn.")
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="the REST port")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help=f"worker processes on the port (default: {WORKERS_VARIABLE}, else one per core between 2 and 4)",
    )
    parser.add_argument("--threads", type=int, default=THREADS, help="threads per worker running the app")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=None,
        help=f"larger request bodies are answered 413 (default: {MAX_BODY_VARIABLE}, else 8 MiB)",
    )
    parser.add_argument(
        "--body-timeout-seconds",
        type=float,
        default=None,
        help=f"a body that takes longer to arrive is answered 408 (default: {BODY_TIMEOUT_VARIABLE}, else 10)",
    )
    parser.add_argument(
        "--keep-alive-seconds",
        type=float,
        default=KEEP_ALIVE_SECONDS,
        help="an idle kept-alive connection is closed after this long",
    )
    parser.add_argument(
        "--graceful-seconds",
        type=float,
        default=GRACE_SECONDS,
        help="on SIGTERM, requests in flight get this long to finish before the server exits",
    )
    parser.add_argument(
        "--app",
        default=DEFAULT_APPLICATION,
        help="module:function returning the Flask app, called in each worker (default: %(default)s)",
    )
    return parser


def parse_options(argv: list[str]) -> argparse.Namespace:
    """The flags, checked: a mistake raises UsageError with one sentence."""
    options = build_parser().parse_args(argv)
    if not 0 < options.port < 65536:
        raise UsageError(f"--port must be between 1 and 65535, got {options.port}.")
    options.workers = default_workers() if options.workers is None else options.workers
    for flag, value, minimum in (
        ("--workers", options.workers, 1),
        ("--threads", options.threads, 1),
        ("--max-body-bytes", options.max_body_bytes, 1),
        ("--body-timeout-seconds", options.body_timeout_seconds, 0.001),
        ("--keep-alive-seconds", options.keep_alive_seconds, 1),
        ("--graceful-seconds", options.graceful_seconds, 1),
    ):
        if value is not None and value < minimum:
            raise UsageError(f"{flag} must be at least {minimum:g}, got {value:g}.")
    if ":" not in options.app:
        raise UsageError(f"--app must be module:function, got {options.app!r}.")
    return options


def load_application(reference: str) -> Any:
    """Import module:function (a trailing "()" is allowed) and call the function: the WSGI app."""
    module_name, _, function_name = reference.partition(":")
    function_name = function_name.removesuffix("()")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as error:
        raise UsageError(f"--app {reference}: cannot find {function_name} in {module_name} ({error}).") from None
    try:
        return factory()
    except ValueError as error:  # the app's settings (FLASK_*) refused in one sentence
        raise UsageError(str(error)) from None


def _configure_logging(index: int, count: int) -> None:
    name = "flask" if count == 1 else f"flask[{index}]"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    for library in ("uvicorn", "uvicorn.error", "werkzeug"):
        logging.getLogger(library).setLevel(logging.WARNING)


def serve(options: argparse.Namespace, argv: list[str]) -> int:
    """Run until SIGTERM or SIGINT; 0 after a clean stop of every worker."""
    from serving.frontend import workers

    group = workers.WorkerGroup.join(options.workers, "flask")
    _configure_logging(group.index, group.count)
    # The handler only records the signal: the main thread notices it within a fraction of a second.
    signal_received: list[int] = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: signal_received.append(number))
    # The app reads its limits from FLASK_* variables; the flags win, and the other workers inherit them.
    if options.max_body_bytes is not None:
        os.environ[MAX_BODY_VARIABLE] = str(options.max_body_bytes)
    if options.body_timeout_seconds is not None:
        os.environ[BODY_TIMEOUT_VARIABLE] = str(options.body_timeout_seconds)
    # prometheus_client's multiprocess mode, set before anything imports it: every worker writes its series into
    # files in the group's folder, and /metrics adds them up. A folder per server, removed at exit.
    group.metrics_folder.mkdir(exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(group.metrics_folder)
    siblings = None
    status = 1
    try:
        if group.is_first:
            workers.check_ports_free(options.host, [options.port])
            if group.count > 1:
                siblings = workers.Siblings(group, "serving.flask_app", argv, on_exit=_forget_metrics(group))
                siblings.start()  # before loading: every worker loads the model at the same time
        status = _serve_worker(options, group, siblings, signal_received)
    finally:
        if siblings is not None:
            siblings.signal_all(signal.SIGTERM)  # those not told yet: this worker failed before its drain
            if not siblings.wait(options.graceful_seconds + SETTLE_LIMIT_SECONDS):
                status = 1
        group.remove_folder()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            # Stopped already: a repeated SIGTERM must not turn a clean exit into -15.
            signal.signal(signal_number, signal.SIG_IGN)
    return status


def _forget_metrics(group: Any) -> Any:
    """What worker 0 does with a dead worker's pid: drop its live gauges (its counters stay in the totals)."""

    def forget(pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, str(group.metrics_folder))

    return forget


def _serve_worker(options: argparse.Namespace, group: Any, siblings: Any, signal_received: list[int]) -> int:
    from serving.frontend.draining import DrainGate, DrainingWsgiApp
    from serving.frontend.http import FrontEndSettings, RestFrontEnd, listening_socket
    from serving.frontend.workers import serve_until_stopped

    app = load_application(options.app)
    manager = app.extensions.get("model_manager")
    limit = app.config["MAX_CONTENT_LENGTH"]
    if limit is None:  # the front end holds each body in memory before the app runs: it needs a bound
        raise UsageError(f"{MAX_BODY_VARIABLE} must be a number of bytes for {PROG}, not null.")
    gate = DrainGate(group.folder / "last-refusal" if group.count > 1 else None)
    settings = FrontEndSettings(
        max_body_bytes=int(limit),
        threads=options.threads,
        keep_alive_seconds=options.keep_alive_seconds,
        body_timeout_seconds=float(app.config["BODY_TIMEOUT_SECONDS"]),
    )
    if group.is_first and siblings is not None:
        # Worker 0 opens the port last, once every other worker serves: the server answers its first request (and
        # passes its ready probe) only when all of them can be told to stop, none still starting up.
        group.publish_ready(True)
        failure = _wait_for_siblings(group, siblings, signal_received)
        if failure is not None:
            logger.error(failure)
            return 1
        if signal_received:
            return 0
    try:
        sock = listening_socket(options.host, options.port, share_port=group.count > 1)
    except OSError as error:
        raise UsageError(f"Cannot listen on {options.host}:{options.port}: {error.strerror or error}.") from None
    front_end = RestFrontEnd(DrainingWsgiApp(app, gate), sock, settings)
    front_end.start()
    if not group.is_first:
        group.publish_ready(True)
    logger.info(
        "Serving on http://%s:%d (pid %d%s).",
        options.host,
        front_end.port,
        os.getpid(),
        f", worker {group.index + 1} of {group.count}" if group.count > 1 else "",
    )
    status = serve_until_stopped(signal_received, siblings, logger)
    if siblings is not None:
        siblings.signal_all(signal.SIGTERM)  # every worker drains at the same time
    logger.info("Shutting down: no new requests; finishing those in flight (up to %.0f s).", options.graceful_seconds)
    _drain_and_stop(options.graceful_seconds, gate, front_end)
    if manager is not None:
        manager.stop()
    logger.info("Stopped.")
    return status


def _wait_for_siblings(group: Any, siblings: Any, signal_received: list[int]) -> str | None:
    """Wait until every worker listens (or a signal arrives); a sentence when one cannot be kept running."""
    while not signal_received and not group.all_ready():
        failure = siblings.check()
        if failure is not None:
            return failure
        time.sleep(0.05)
    return None


def _drain_and_stop(grace_seconds: float, gate: Any, front_end: Any) -> bool:
    """Refuse new requests (503), let admitted ones finish, wait for the group to go quiet, close the port."""
    deadline = time.monotonic() + max(grace_seconds - EXIT_MARGIN_SECONDS, grace_seconds / 2)

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    # The gate refuses while the port keeps listening: closing it now would reset the connections in its queue.
    gate.start_draining()
    clean = gate.wait_until_idle(remaining())
    if not clean:
        logger.warning("Some requests were still running after the grace period.")
    if not gate.wait_until_quiet(QUIET_SECONDS, min(SETTLE_LIMIT_SECONDS, remaining())):
        logger.warning("Clients were still sending when the server stopped; requests arriving now may be cut off.")
    if not front_end.stop(remaining()):
        logger.warning("Some connections were still open after the grace period.")
        clean = False
    return clean


def main(argv: list[str] | None = None) -> int:
    """Parse the flags and serve."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return run_main(PROG, lambda: serve(parse_options(arguments), arguments))
