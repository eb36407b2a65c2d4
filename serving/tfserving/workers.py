"""The TF server's workers (serving.frontend.workers starts them): what they share beyond readiness.

The process the user started (worker 0) starts `--workers` - 1 more with the same flags. Every worker loads the
models itself, polls for new versions and listens on the same gRPC and REST ports. They share a folder holding:

- each worker's readiness: the health service answers SERVING only once every worker has every model, so a
  client that waits for SERVING never meets a worker that is still loading;
- the model config a HandleReloadConfigRequest installed: the worker that received it publishes it, the others
  (and any worker started later) follow;
- prometheus_client's multiprocess files, so any worker's metrics page counts every worker's requests.

Worker 0 forwards SIGTERM and SIGINT to the others, restarts a worker that dies, and removes the folder at exit.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from serving.frontend.workers import WorkerGroup, write_atomically

logger = logging.getLogger("serving.tfserving")
CONFIG_FILE = "model-config.pbtxt"


def publish_config(group: WorkerGroup, text: str) -> None:
    """Share a model config installed by HandleReloadConfigRequest with the other workers."""
    write_atomically(group.folder / CONFIG_FILE, text)


def published_config(group: WorkerGroup) -> str | None:
    """The last model config any worker published, if any."""
    try:
        return (group.folder / CONFIG_FILE).read_text()
    except OSError:
        return None


def parse_model_config(text: str) -> Any:
    """A published text-format ModelServerConfig."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(text, model_server_config_pb2.ModelServerConfig())


class StateSharing:
    """One worker's side of the shared folder: its readiness into the health service, reloads both ways, and the
    versions it serves into the metrics."""

    def __init__(self, group: WorkerGroup, health_servicer: Any, services: tuple[str, ...], metrics: Any) -> None:
        self.group = group
        self.health_servicer = health_servicer
        self.services = services
        self.metrics = metrics
        self.manager: Any = None
        self._lock = threading.Lock()
        self._ready: bool | None = None
        self._serving: bool | None = None
        self._config_text = published_config(group)
        self._threads: list[threading.Thread] = []

    def refresh(self, manager: Any) -> None:
        """Publish this worker's readiness; SERVING once every worker is ready; the loaded versions to the metrics."""
        from grpc_health.v1 import health_pb2

        ready = manager.all_models_available()
        with self._lock:
            if ready != self._ready:
                self.group.publish_ready(ready)
                self._ready = ready
            serving = ready and self.group.all_ready()
            if serving != self._serving:
                status = (
                    health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
                )
                for service in self.services:
                    self.health_servicer.set(service, status)
                self._serving = serving
        if self.metrics is not None:
            models = {name: manager.versions(name) for name in manager.model_names()}
            self.metrics.set_versions(
                {name: max(model.loaded, default=0) if model else 0 for name, model in models.items()}
            )

    def sources_from_config(self, model_config: Any) -> list:
        """For HandleReloadConfigRequest: the config's models, published so that every other worker follows."""
        from google.protobuf import text_format

        from serving.tfserving.config import sources_from_config

        sources = sources_from_config(model_config)
        text = text_format.MessageToString(model_config)
        with self._lock:
            self._config_text = text
        publish_config(self.group, text)
        return sources

    def _follow_published_config(self) -> None:
        from serving.tfserving.config import sources_from_config

        text = published_config(self.group)
        with self._lock:
            if text is None or text == self._config_text:
                return
            self._config_text = text
        try:
            self.manager.reconfigure(sources_from_config(parse_model_config(text)))
            logger.info("Following the model config another worker was given.")
        except Exception as error:  # noqa: BLE001 (a config another worker accepted; refusing it here is a bug, not input)
            logger.error("Cannot follow the model config another worker was given: %s", error)

    def start(self, interval_s: float, poll_wait_seconds: float, stop: threading.Event) -> None:
        """Look at the shared folder every interval_s, and poll the base paths, until stop is set.

        With several workers, each polls at the same wall-clock instants (multiples of poll_wait_seconds), so all
        of them find a new version together and load it side by side: they disagree about the served versions
        only while the loads run, not for up to a whole poll interval. A lone worker polls on its own schedule.
        """
        threads = [threading.Thread(target=self._share, args=(interval_s, stop), name="state-sharing", daemon=True)]
        if self.group.count == 1:
            self.manager.start()
        elif poll_wait_seconds > 0:
            threads.append(
                threading.Thread(
                    target=self._poll_in_step, args=(poll_wait_seconds, stop), name="version-watcher", daemon=True
                )
            )
        for thread in threads:
            thread.start()
        self._threads = threads

    def _share(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.wait(interval_s):
            self._follow_published_config()
            self.refresh(self.manager)

    def _poll_in_step(self, interval_s: float, stop: threading.Event) -> None:
        while not stop.wait(interval_s - time.time() % interval_s):
            try:
                self.manager.poll_once()
            except Exception:  # a watcher that dies silently would freeze the served versions
                logger.exception("Scanning the model base paths failed; retrying at the next poll.")

    def join(self) -> None:
        """Wait for the threads after stop was set (the manager's own watcher stops with the manager)."""
        for thread in self._threads:
            thread.join(timeout=10)


HEALTH_CHECK_METHOD = "/grpc.health.v1.Health/Check"


def health_check_refresher(sharing: StateSharing) -> Any:
    """A gRPC interceptor that brings this worker's health answer up to date with the group before each Check.

    The workers share the ports, so a client's next connection may reach another worker than its last. Each worker
    learns that the others are ready from the shared folder on its own schedule, and on a busy machine that lags: a
    probe that saw SERVING from the last worker to load could then see NOT_SERVING from another. Refreshing from
    the shared folder before answering gives every worker the same answer the moment the last one is ready.
    """
    from serving.tfserving.interceptors import UnaryMethodInterceptor

    class HealthCheckRefresher(UnaryMethodInterceptor):
        def wrap(self, method: str, behaviour: Any) -> Any:
            if method != HEALTH_CHECK_METHOD:
                return None

            def refreshed(request: Any, context: Any) -> Any:
                sharing.refresh(sharing.manager)
                return behaviour(request, context)

            return refreshed

    return HealthCheckRefresher()
