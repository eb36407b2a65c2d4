"""Several server processes on one pair of ports: the first starts the others, they share state, it restarts them.

Python runs one thread at a time per process, so one process serves about one core. The process the user started
(worker 0) starts `--workers` - 1 more with the same flags. Every worker loads the models itself, polls for new
versions and listens on the same gRPC and REST ports with SO_REUSEPORT; the kernel spreads new connections
across them. They share a folder holding:

- each worker's readiness: the health service answers SERVING only once every worker has every model, so a
  client that waits for SERVING never meets a worker that is still loading;
- the model config a HandleReloadConfigRequest installed: the worker that received it publishes it, the others
  (and any worker started later) follow;
- prometheus_client's multiprocess files, so any worker's metrics page counts every worker's requests.

Worker 0 forwards SIGTERM and SIGINT to the others, restarts a worker that dies, and removes the folder at exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from experiment.errors import UsageError

logger = logging.getLogger("serving.tfserving")
INDEX_VARIABLE = "SERVING_TFSERVING_WORKER"  # "<index>/<count>/<pid of worker 0>", set for workers 1 and up
FOLDER_VARIABLE = "SERVING_TFSERVING_SHARED_FOLDER"
CONFIG_FILE = "model-config.pbtxt"
# A worker that keeps dying is not restarted forever: more than this many restarts within the window stop the server.
RESTART_LIMIT = 3
RESTART_WINDOW_SECONDS = 60.0
USAGE_ERROR_STATUS = 2  # experiment.cli's exit status for a UsageError: the same flags will fail again
PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class WorkerGroup:
    """This process's place among the workers, and the folder they share."""

    index: int
    count: int
    folder: Path

    @classmethod
    def join(cls, count: int) -> WorkerGroup:
        """Worker 0 makes the shared folder; a worker it started finds its place in the environment."""
        placement = os.environ.get(INDEX_VARIABLE)
        if placement is None:
            return cls(0, count, Path(tempfile.mkdtemp(prefix="tfserving-workers-")))
        index, count_text, parent = (int(part) for part in placement.split("/"))
        _die_with(parent)
        return cls(index, int(count_text), Path(os.environ[FOLDER_VARIABLE]))

    @property
    def is_first(self) -> bool:
        """Worker 0: the process the user started."""
        return self.index == 0

    @property
    def metrics_folder(self) -> Path:
        """prometheus_client's multiprocess folder."""
        return self.folder / "metrics"

    def publish_ready(self, ready: bool) -> None:
        """Record whether this worker serves every model."""
        _write_atomically(self.folder / f"worker-{self.index}.ready", "1" if ready else "0")

    def all_ready(self) -> bool:
        """Whether every worker has said it serves every model (a restarting worker keeps its last word)."""
        for index in range(self.count):
            with contextlib.suppress(OSError):
                if (self.folder / f"worker-{index}.ready").read_text() == "1":
                    continue
            return False
        return True

    def publish_config(self, text: str) -> None:
        """Share a model config installed by HandleReloadConfigRequest with the other workers."""
        _write_atomically(self.folder / CONFIG_FILE, text)

    def published_config(self) -> str | None:
        """The last model config any worker published, if any."""
        try:
            return (self.folder / CONFIG_FILE).read_text()
        except OSError:
            return None

    def remove_folder(self) -> None:
        """Worker 0, at exit: the folder goes (every other worker has exited by then)."""
        if self.is_first:
            shutil.rmtree(self.folder, ignore_errors=True)


def _write_atomically(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.{os.getpid()}")
    staging.write_text(text)
    os.replace(staging, path)  # readers see the old text or the new one, never half of it


def _die_with(parent: int) -> None:
    """Ask Linux to send this worker SIGTERM when worker 0 dies, so that no worker outlives a killed server."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # worker 0 died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def check_ports_free(host: str, ports: list[int]) -> None:
    """UsageError when another program listens on one of the ports.

    The probe sets SO_REUSEADDR as the servers' own sockets do, so connections a stopped server left in TIME_WAIT
    do not block a restart; it leaves SO_REUSEPORT off, so a second server started on the same ports is refused
    instead of silently sharing them.
    """
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as error:
                raise UsageError(f"Cannot listen on {host}:{port}: {error.strerror or error}.") from None


@dataclasses.dataclass
class _Worker:
    index: int
    process: subprocess.Popen
    started_at: float
    restarts: list[float] = dataclasses.field(default_factory=list)


class Siblings:
    """Worker 0's view of workers 1 .. count-1: starts them, restarts one that dies, stops them."""

    def __init__(self, group: WorkerGroup, argv: list[str]) -> None:
        self.group = group
        self.argv = list(argv)
        self.workers: dict[int, _Worker] = {}
        self.stopping = False

    def _launch(self, index: int) -> subprocess.Popen:
        environment = {
            **os.environ,
            INDEX_VARIABLE: f"{index}/{self.group.count}/{os.getpid()}",
            FOLDER_VARIABLE: str(self.group.folder),
        }
        # Same interpreter, flags, working directory and output (the server's log) as worker 0.
        return subprocess.Popen([sys.executable, "-m", "serving.tfserving", *self.argv], env=environment)

    def start(self) -> None:
        """Start every other worker."""
        for index in range(1, self.group.count):
            self.workers[index] = _Worker(index, self._launch(index), time.monotonic())

    def check(self) -> str | None:
        """Restart workers that died; a sentence when one cannot be kept running (the server should stop)."""
        if self.stopping:
            return None
        for worker in self.workers.values():
            status = worker.process.poll()
            if status is None:
                continue
            self._forget_metrics(worker.process.pid)
            now = time.monotonic()
            worker.restarts = [at for at in worker.restarts if now - at < RESTART_WINDOW_SECONDS] + [now]
            if status == USAGE_ERROR_STATUS or len(worker.restarts) > RESTART_LIMIT:
                return f"Worker {worker.index} exited with status {status} and cannot be kept running; stopping."
            logger.warning("Worker %d exited with status %s; starting it again.", worker.index, status)
            worker.process = self._launch(worker.index)
            worker.started_at = now
        return None

    def _forget_metrics(self, pid: int) -> None:
        from serving.tfserving.monitoring import forget_process

        forget_process(self.group.metrics_folder, pid)

    def signal_all(self, number: int) -> None:
        """Send a signal, once, to every worker still running (SIGTERM: each drains as worker 0 does)."""
        if self.stopping:
            return
        self.stopping = True
        for worker in self.workers.values():
            if worker.process.poll() is None:
                with contextlib.suppress(OSError):
                    worker.process.send_signal(number)

    def wait(self, timeout_s: float) -> bool:
        """Wait for every worker to exit (SIGKILL after timeout_s); True when all exited with status 0."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        clean = True
        for worker in self.workers.values():
            try:
                status = worker.process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                logger.warning("Worker %d did not stop within the grace period; killing it.", worker.index)
                worker.process.kill()
                status = worker.process.wait()
            if status != 0:
                logger.warning("Worker %d exited with status %s.", worker.index, status)
            clean = clean and status == 0
        return clean


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
        self._config_text = group.published_config()
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
        self.group.publish_config(text)
        return sources

    def _follow_published_config(self) -> None:
        from serving.tfserving.config import sources_from_config

        text = self.group.published_config()
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
