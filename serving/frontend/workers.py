"""Several server processes on one port: the first starts the others, they share a folder, it restarts them.

Python runs one thread at a time per process, so one process serves about one core. The process the user started
(worker 0) starts the others with the same flags; each listens on the same ports with SO_REUSEPORT and the kernel
spreads new connections across them. They share a folder (each worker's readiness, prometheus_client's
multiprocess files, whatever else the server keeps there). Worker 0 forwards SIGTERM and SIGINT to the others,
restarts a worker that dies, and removes the folder at exit.
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
import time
from collections.abc import Callable
from pathlib import Path

from experiment.errors import UsageError

logger = logging.getLogger("serving.frontend")
INDEX_VARIABLE = "SERVING_WORKER"  # "<index>/<count>/<pid of worker 0>", set for workers 1 and up
FOLDER_VARIABLE = "SERVING_WORKERS_FOLDER"
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
    def join(cls, count: int, name: str) -> WorkerGroup:
        """Worker 0 makes the shared folder (named after the server); a worker it started finds its place in the
        environment."""
        placement = os.environ.get(INDEX_VARIABLE)
        if placement is None:
            return cls(0, count, Path(tempfile.mkdtemp(prefix=f"{name}-workers-")))
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
        write_atomically(self.folder / f"worker-{self.index}.ready", "1" if ready else "0")

    def all_ready(self) -> bool:
        """Whether every worker has said it serves every model (a restarting worker keeps its last word)."""
        for index in range(self.count):
            with contextlib.suppress(OSError):
                if (self.folder / f"worker-{index}.ready").read_text() == "1":
                    continue
            return False
        return True

    def remove_folder(self) -> None:
        """Worker 0, at exit: the folder goes (every other worker has exited by then)."""
        if self.is_first:
            shutil.rmtree(self.folder, ignore_errors=True)


def write_atomically(path: Path, text: str) -> None:
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
    """Worker 0's view of workers 1 .. count-1: starts them, restarts one that dies, stops them.

    module: what each worker runs (`python -m module *argv`); on_exit: called with a dead worker's pid before it is
    restarted (e.g. to drop its live metrics)."""

    def __init__(
        self, group: WorkerGroup, module: str, argv: list[str], on_exit: Callable[[int], None] | None = None
    ) -> None:
        self.group = group
        self.module = module
        self.argv = list(argv)
        self.on_exit = on_exit
        self.workers: dict[int, _Worker] = {}
        self.sent_signal: int | None = None  # set once signal_all has told the workers to stop

    def _launch(self, index: int) -> subprocess.Popen:
        environment = {
            **os.environ,
            INDEX_VARIABLE: f"{index}/{self.group.count}/{os.getpid()}",
            FOLDER_VARIABLE: str(self.group.folder),
        }
        # Same interpreter, flags, working directory and output (the server's log) as worker 0.
        return subprocess.Popen([sys.executable, "-m", self.module, *self.argv], env=environment)

    def start(self) -> None:
        """Start every other worker."""
        for index in range(1, self.group.count):
            self.workers[index] = _Worker(index, self._launch(index), time.monotonic())

    def check(self) -> str | None:
        """Restart workers that died; a sentence when one cannot be kept running (the server should stop)."""
        if self.sent_signal is not None:
            return None
        for worker in self.workers.values():
            status = worker.process.poll()
            if status is None:
                continue
            if self.on_exit is not None:
                self.on_exit(worker.process.pid)
            now = time.monotonic()
            worker.restarts = [at for at in worker.restarts if now - at < RESTART_WINDOW_SECONDS] + [now]
            if status == USAGE_ERROR_STATUS or len(worker.restarts) > RESTART_LIMIT:
                return f"Worker {worker.index} exited with status {status} and cannot be kept running; stopping."
            logger.warning("Worker %d exited with status %s; starting it again.", worker.index, status)
            worker.process = self._launch(worker.index)
            worker.started_at = now
        return None

    def signal_all(self, number: int) -> None:
        """Send a signal, once, to every worker still running (SIGTERM: each drains as worker 0 does)."""
        if self.sent_signal is not None:
            return
        self.sent_signal = number
        for worker in self.workers.values():
            if worker.process.poll() is None:
                with contextlib.suppress(OSError):
                    worker.process.send_signal(number)

    def wait(self, timeout_s: float) -> bool:
        """Wait for every worker to exit (SIGKILL after timeout_s); True when all stopped cleanly.

        Clean is status 0, or death by the signal signal_all sent: a worker dies of it only before it has set its own
        handler, early in its start, when it has no port open and no request to lose."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        clean = True
        for worker in self.workers.values():
            try:
                status = worker.process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                logger.warning("Worker %d did not stop within the grace period; killing it.", worker.index)
                worker.process.kill()
                status = worker.process.wait()
            stopped_while_starting = self.sent_signal is not None and status == -self.sent_signal
            if status != 0 and not stopped_while_starting:
                logger.warning("Worker %d exited with status %s.", worker.index, status)
            clean = clean and (status == 0 or stopped_while_starting)
        return clean


def serve_until_stopped(signal_received: list[int], siblings: Siblings | None, log: logging.Logger) -> int:
    """Wait until a signal arrives (0), or until a sibling worker fails beyond its restarts (1, logged)."""
    while not signal_received:
        time.sleep(0.2)
        failure = siblings.check() if siblings is not None else None
        if failure is not None:
            log.error(failure)
            return 1
    return 0
