"""`python -m serving.tfserving`: load the models, serve gRPC and REST, follow new versions, stop cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

from experiment.cli import run_main
from experiment.errors import UsageError
from serving.tfserving import config
from serving.tfserving.batching import BatchScheduler
from serving.tfserving.draining import DrainGate, DrainingInterceptor
from serving.tfserving.grpc_service import ModelServicer, PredictionServicer
from serving.tfserving.manager import ModelManager
from serving.tfserving.predictor import Predictor
from serving.tfserving.rest import RestApp, RestServer

PROG = "python -m serving.tfserving"
logger = logging.getLogger("serving.tfserving")
# Health is reported for the whole server ("") and for each service by its full name, as grpc health expects.
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# After the drain, grpc's stop() cancels calls still arriving, so it waits until none arrived for QUIET_SECONDS
# (clients have seen UNAVAILABLE and backed off or moved on), but never longer than SETTLE_LIMIT_SECONDS.
QUIET_SECONDS = 0.5
SETTLE_LIMIT_SECONDS = 5.0


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s tfserving: %(message)s"
    )
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def _grpc_server(
    options: config.ServerOptions, predictor: Predictor, health_servicer: health.HealthServicer, drain_gate: DrainGate
) -> grpc.Server:
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.grpc_threads, thread_name_prefix="grpc"),
        interceptors=[DrainingInterceptor(drain_gate)],
        options=[
            ("grpc.max_receive_message_length", options.max_request_bytes),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a second server on the same port must fail, not share it
        ],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(predictor), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(
        ModelServicer(predictor.manager, config.sources_from_config), server
    )
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    address = f"{options.bind_address}:{options.grpc_port}"
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise UsageError(f"Cannot listen for gRPC on {address}: the port is in use or the address is not local.")
    return server


def serve(options: config.ServerOptions) -> int:
    """Run until SIGTERM or SIGINT; return 0 after a clean shutdown."""
    stop_requested = threading.Event()
    # The handler only flips a flag: calling stop_requested.set() inside it could deadlock, because the handler
    # runs on the main thread, possibly while that thread holds the Event's own (non-reentrant) lock.
    signal_received: list[int] = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: signal_received.append(number))

    health_servicer = health.HealthServicer()
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    manager: ModelManager

    def update_health() -> None:
        status = health_pb2.HealthCheckResponse.SERVING if manager.all_models_available() else health_pb2.HealthCheckResponse.NOT_SERVING
        for service in HEALTH_SERVICES:
            health_servicer.set(service, status)

    manager = ModelManager(options.sources, options.poll_wait_seconds, on_change=update_health)
    scheduler = BatchScheduler(options.batching) if options.batching is not None else None
    predictor = Predictor(manager, scheduler)

    # Like tensorflow_model_server, load what is on disk before opening the ports.
    manager.poll_once()
    update_health()
    drain_gate = DrainGate()
    grpc_server = _grpc_server(options, predictor, health_servicer, drain_gate)
    rest_server = None
    if options.rest_port:
        app = RestApp(predictor, options.max_request_bytes, options.rest_timeout_s, options.rest_threads)
        try:
            rest_server = RestServer(app, options.bind_address, options.rest_port, idle_timeout_s=max(options.rest_timeout_s, 5.0))
        except OSError as error:
            raise UsageError(
                f"Cannot listen for REST on {options.bind_address}:{options.rest_port}: {error.strerror or error}."
            ) from None
    grpc_server.start()
    if rest_server is not None:
        rest_server.start()
    manager.start()
    config_watcher = _watch_config_file(options, manager, stop_requested)
    logger.info(
        "Serving %s: gRPC on %s:%d%s (pid %d).",
        ", ".join(manager.model_names()),
        options.bind_address,
        options.grpc_port,
        f", REST on {options.bind_address}:{rest_server.port}" if rest_server else "",
        os.getpid(),
    )

    while not signal_received:
        time.sleep(0.2)
    stop_requested.set()
    logger.info("Shutting down: no new requests; finishing those in flight (up to %.0f s).", options.shutdown_grace_seconds)
    _drain_and_stop(options.shutdown_grace_seconds, health_servicer, drain_gate, grpc_server, rest_server)
    manager.stop()
    if config_watcher is not None:
        config_watcher.join(timeout=5)
    if scheduler is not None:
        scheduler.stop()
    logger.info("Stopped.")
    return 0


def _drain_and_stop(
    grace_seconds: float,
    health_servicer: health.HealthServicer,
    drain_gate: DrainGate,
    grpc_server: grpc.Server,
    rest_server: RestServer | None,
) -> None:
    """Refuse new requests (UNAVAILABLE / 503), finish running ones within grace_seconds, then stop both servers."""
    deadline = time.monotonic() + grace_seconds

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    health_servicer.enter_graceful_shutdown()
    # The gate, not grpc_server.stop(), refuses new gRPC calls: stop() would cancel those its core already holds.
    drain_gate.start_draining()
    if rest_server is not None and not rest_server.stop(remaining()):
        logger.warning("Some REST requests were still running after the grace period.")
    if not drain_gate.wait_until_idle(remaining()):
        logger.warning("Some gRPC requests were still running after the grace period.")
    if not drain_gate.wait_until_quiet(QUIET_SECONDS, min(SETTLE_LIMIT_SECONDS, remaining())):
        logger.warning("gRPC clients were still sending when the server stopped; calls arriving now may be cancelled.")
    # Nothing admitted is running any more; the remaining grace covers calls grpc matched but had not started yet.
    grpc_server.stop(remaining()).wait()


def _watch_config_file(
    options: config.ServerOptions, manager: ModelManager, stop_requested: threading.Event
) -> threading.Thread | None:
    """Re-read --model_config_file every --model_config_file_poll_wait_seconds, as tensorflow_model_server does."""
    if options.model_config_file is None or options.model_config_file_poll_wait_seconds <= 0:
        return None

    def watch() -> None:
        last_text = None
        while not stop_requested.wait(options.model_config_file_poll_wait_seconds):
            try:
                text = options.model_config_file.read_text()
                if text == last_text:
                    continue
                last_text = text
                manager.reconfigure(config.read_model_config(options.model_config_file))
            except (OSError, UsageError) as error:
                logger.error("Ignoring the changed model config file: %s", error)

    thread = threading.Thread(target=watch, name="config-watcher", daemon=True)
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> int:
    """Parse tensorflow_model_server's flags and serve."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _configure_logging()
    return run_main(PROG, lambda: serve(config.parse_options(argv)))
