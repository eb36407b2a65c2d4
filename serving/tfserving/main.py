"""`python -m serving.tfserving`: load the models, serve gRPC and REST from one or more processes, follow new
versions, stop cleanly on SIGTERM."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

from experiment import library_logs
from experiment.cli import run_main
from experiment.errors import UsageError
from serving.frontend.workers import Siblings, WorkerGroup, check_ports_free, serve_until_stopped
from serving.tfserving import config, workers

PROG = "python -m serving.tfserving"
logger = logging.getLogger("serving.tfserving")
# Health is reported for the whole server ("") and for each service by its full name, as grpc health expects.
HEALTH_SERVICES = ("", "tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")
# After the drain, grpc's stop() cancels calls still arriving, so it waits until none arrived for QUIET_SECONDS
# (clients have seen UNAVAILABLE and backed off or moved on), but never longer than SETTLE_LIMIT_SECONDS.
QUIET_SECONDS = 0.5
SETTLE_LIMIT_SECONDS = 5.0
# The drain ends this long before the grace period does: closing the ports and leaving the process take the rest.
EXIT_MARGIN_SECONDS = 1.0
# How often a worker compares its state with the other workers' (readiness, a reloaded model config).
SHARE_INTERVAL_SECONDS = 0.25
# An idle kept-alive REST connection is closed after this long.
KEEP_ALIVE_SECONDS = 30.0


def _configure_logging(group: WorkerGroup) -> None:
    name = "tfserving" if group.count == 1 else f"tfserving[{group.index}]"
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=f"%(asctime)s %(levelname)s {name}: %(message)s")
    for library in ("uvicorn", "uvicorn.error", "werkzeug"):
        logging.getLogger(library).setLevel(logging.WARNING)


def _configure_tensorflow(options: config.ServerOptions, worker_count: int) -> None:
    """TensorFlow's thread pools, before any model loads: by default the cores are divided among the workers."""
    import tensorflow as tf

    intra_op = options.intra_op_threads or max(1, config.available_cores() // worker_count)
    tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads or intra_op)


def _grpc_server(options: config.ServerOptions, group: WorkerGroup, services: Any, interceptors: list) -> Any:
    from concurrent import futures

    import grpc

    arguments = {
        "grpc.max_receive_message_length": options.max_request_bytes,
        "grpc.max_send_message_length": -1,
        # Workers share the port; a lone server must fail on a port in use, not share it with a stranger.
        "grpc.so_reuseport": int(group.count > 1),
        **dict(options.grpc_channel_arguments),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=options.grpc_threads, thread_name_prefix="grpc"),
        interceptors=interceptors,
        options=list(arguments.items()),
    )
    services(server)
    addresses = [f"{options.bind_address}:{options.grpc_port}"]
    if options.grpc_socket_path is not None and group.is_first:
        addresses.append(f"unix:{options.grpc_socket_path}")  # a UNIX socket has one owner: worker 0
    for address in addresses:
        try:
            bound = server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            raise UsageError(f"Cannot listen for gRPC on {address}: the address is in use or not local.")
    return server


def _rest_front_end(
    options: config.ServerOptions, group: WorkerGroup, predictor: Any, metrics: Any, drain_gate: Any
) -> Any:
    from serving.frontend.draining import DrainingWsgiApp
    from serving.frontend.http import FrontEndSettings, RestFrontEnd, listening_socket
    from serving.tfserving.rest import RestApp

    # REST requests pass the same gate as gRPC calls: one drain, one quiet period for both ports.
    rest_app = RestApp(predictor, options.max_request_bytes, options.rest_timeout_s, options.rest_threads)
    app = DrainingWsgiApp(rest_app, drain_gate)
    settings = FrontEndSettings(
        max_body_bytes=options.max_request_bytes,
        threads=options.rest_threads,
        keep_alive_seconds=KEEP_ALIVE_SECONDS,
        metrics_path=options.monitoring.path if metrics is not None else None,
        metrics=metrics,
    )
    try:
        sock = listening_socket(options.bind_address, options.rest_port, share_port=group.count > 1)
    except OSError as error:
        raise UsageError(
            f"Cannot listen for REST on {options.bind_address}:{options.rest_port}: {error.strerror or error}."
        ) from None
    return RestFrontEnd(app, sock, settings)


def _forget_metrics(options: config.ServerOptions, group: WorkerGroup) -> Any:
    """What worker 0 does with a dead worker's pid: drop its live gauges from the shared metrics."""
    if options.monitoring is None:
        return None

    def forget(pid: int) -> None:
        from serving.tfserving.monitoring import forget_process

        forget_process(group.metrics_folder, pid)

    return forget


def serve(options: config.ServerOptions, argv: list[str]) -> int:
    """Run until SIGTERM or SIGINT; return 0 after a clean shutdown (of every worker)."""
    group = WorkerGroup.join(options.workers, "tfserving")
    _configure_logging(group)
    # The handler only flips a flag: calling an Event's set() inside it could deadlock, because the handler
    # runs on the main thread, possibly while that thread holds the Event's own (non-reentrant) lock.
    signal_received: list[int] = []
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda number, frame: signal_received.append(number))
    siblings = None
    if group.is_first and group.count > 1:
        check_ports_free(options.bind_address, [port for port in (options.grpc_port, options.rest_port) if port])
        siblings = Siblings(group, "serving.tfserving", argv, on_exit=_forget_metrics(options, group))
        siblings.start()  # before loading: every worker loads its models at the same time
    if options.monitoring is not None:
        # Before prometheus_client is imported: every worker keeps its series in files there.
        group.metrics_folder.mkdir(exist_ok=True)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(group.metrics_folder)
    from serving.tfserving.manager import ServablesUnavailable

    try:
        status = _serve_worker(options, group, siblings, signal_received)
    except ServablesUnavailable as error:
        print(f"Failed to start server. Error: {error}", file=sys.stderr, flush=True)
        status = 1
    finally:
        if siblings is not None:
            siblings.signal_all(signal.SIGTERM)  # those not told yet: _serve_worker failed before its drain
            if not siblings.wait(options.shutdown_grace_seconds + SETTLE_LIMIT_SECONDS):
                status = 1
        group.remove_folder()
        for signal_number in (signal.SIGTERM, signal.SIGINT):
            # Stopped already: a second SIGTERM (a supervisor repeating itself) must not turn a clean exit into -15.
            signal.signal(signal_number, signal.SIG_IGN)
    return status


def _serve_worker(
    options: config.ServerOptions, group: WorkerGroup, siblings: Siblings | None, signal_received: list
) -> int:
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    from serving.frontend.draining import DrainGate
    from serving.tfserving.batching import BatchScheduler
    from serving.tfserving.draining import DrainingInterceptor
    from serving.tfserving.grpc_service import ModelServicer, PredictionServicer
    from serving.tfserving.manager import ModelManager
    from serving.tfserving.predictor import Predictor
    from serving.tfserving.servable import set_method_name_check

    _configure_tensorflow(options, group.count)
    set_method_name_check(options.method_name_check)
    metrics = None
    if options.monitoring is not None and options.rest_port:
        from serving.tfserving.monitoring import ServerMetrics

        metrics = ServerMetrics(group.metrics_folder)
    health_servicer = health.HealthServicer()
    for service in HEALTH_SERVICES:
        health_servicer.set(service, health_pb2.HealthCheckResponse.NOT_SERVING)
    published = workers.published_config(group)  # a worker restarted after a reload follows the reloaded config
    sources = config.sources_from_config(workers.parse_model_config(published)) if published else options.sources
    sharing = workers.StateSharing(group, health_servicer, HEALTH_SERVICES, metrics)
    manager = ModelManager(sources, options.poll_wait_seconds, on_change=lambda: sharing.refresh(manager))
    sharing.manager = manager
    scheduler = BatchScheduler(options.batching) if options.batching is not None else None
    predictor = Predictor(manager, scheduler)

    # Like tensorflow_model_server, load what is on disk before opening the ports, labels included, and refuse to
    # start when a model has nothing that loads.
    manager.poll_once()
    manager.check_started()
    sharing.refresh(manager)
    drain_gate = DrainGate(group.folder / "last-refusal" if group.count > 1 else None)
    interceptors: list = [DrainingInterceptor(drain_gate)]
    if group.count > 1:
        interceptors.append(workers.health_check_refresher(sharing))
    if metrics is not None:
        from serving.tfserving.monitoring import MetricsInterceptor

        interceptors.append(MetricsInterceptor(metrics))

    def add_services(server: Any) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(predictor), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(manager, sharing.sources_from_config, options.allowed_model_roots), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    grpc_server = _grpc_server(options, group, add_services, interceptors)
    rest_server = _rest_front_end(options, group, predictor, metrics, drain_gate) if options.rest_port else None
    grpc_server.start()
    if rest_server is not None:
        rest_server.start()
    stop_requested = threading.Event()
    sharing.start(SHARE_INTERVAL_SECONDS, options.poll_wait_seconds, stop_requested)
    config_watcher = _watch_config_file(options, manager, stop_requested)
    logger.info(
        "Serving %s: gRPC on %s:%d%s%s (pid %d%s).",
        ", ".join(manager.model_names()),
        options.bind_address,
        options.grpc_port,
        f", REST on {options.bind_address}:{rest_server.port}" if rest_server else "",
        f", metrics at {options.monitoring.path}" if metrics is not None else "",
        os.getpid(),
        f", worker {group.index + 1} of {group.count}" if group.count > 1 else "",
    )

    status = serve_until_stopped(signal_received, siblings, logger)
    stop_requested.set()
    if siblings is not None:
        siblings.signal_all(signal.SIGTERM)  # every worker drains at the same time
    logger.info(
        "Shutting down: no new requests; finishing those in flight (up to %.0f s).", options.shutdown_grace_seconds
    )
    _drain_and_stop(options.shutdown_grace_seconds, health_servicer, drain_gate, grpc_server, rest_server)
    manager.stop()
    sharing.join()
    if config_watcher is not None:
        config_watcher.join(timeout=5)
    if scheduler is not None:
        scheduler.stop()
    logger.info("Stopped.")
    return status


def _drain_and_stop(
    grace_seconds: float, health_servicer: Any, drain_gate: Any, grpc_server: Any, rest_server: Any
) -> None:
    """Refuse new requests (UNAVAILABLE / 503), finish running ones within grace_seconds, then stop both servers."""
    deadline = time.monotonic() + max(grace_seconds - EXIT_MARGIN_SECONDS, grace_seconds / 2)

    def remaining() -> float:
        return max(deadline - time.monotonic(), 0.0)

    health_servicer.enter_graceful_shutdown()
    # The gate, not the servers' own stop(), refuses new requests on both ports while both keep listening: grpc's
    # stop() would cancel the calls its core already holds, uvicorn's would reset connections that just sent one.
    drain_gate.start_draining()
    if not drain_gate.wait_until_idle(remaining()):
        logger.warning("Some requests were still running after the grace period.")
    if not drain_gate.wait_until_quiet(QUIET_SECONDS, min(SETTLE_LIMIT_SECONDS, remaining())):
        logger.warning("Clients were still sending when the server stopped; requests arriving now may be cut off.")
    # Nothing admitted is running any more; what is left of the grace covers requests read but not yet admitted.
    if rest_server is not None and not rest_server.stop(remaining()):
        logger.warning("Some REST connections were still open after the grace period.")
    grpc_server.stop(remaining()).wait()


def _watch_config_file(
    options: config.ServerOptions, manager: Any, stop_requested: threading.Event
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
    library_logs.quiet()
    arguments = list(sys.argv[1:] if argv is None else argv)
    return run_main(PROG, lambda: serve(config.parse_options(arguments), arguments))
