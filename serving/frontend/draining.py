"""Graceful shutdown of a server's ports: refuse new requests, wait for running ones, then let clients go quiet.

uvicorn's shutdown closes the listening socket (resetting connections still in its queue) and every idle kept-alive
connection (resetting a request the client has just sent on it); grpc's server.stop() cancels the calls its core
holds but has not yet handed to a handler. Under load there are always a few of each, so stopping while clients
still send loses them. Draining first answers every new request 503 with `Connection: close` (and, on a gRPC port,
UNAVAILABLE) through one DrainGate; the server stops only once the admitted requests have finished and no new one
has arrived for a short quiet period. With several workers the quiet period is the whole group's: a worker nobody
happens to be calling must not close its share of the port while the kernel still hands it connections from
clients that the others are refusing.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

SHUTTING_DOWN_MESSAGE = "The server is shutting down; retry on another server."
# A worker marks its refusals in the group's shared file at most this often (a file-system call per refusal would
# slow the refusals down exactly when clients retry fastest).
SHARED_MARK_INTERVAL_SECONDS = 0.1


class DrainGate:
    """Counts calls in flight; once draining, refuses new calls and remembers when the last one was refused.

    shared_marker: a file the workers of one group share; each touches it when it refuses a call, and each waits
    for the whole group to be quiet. None for a lone worker.
    """

    def __init__(self, shared_marker: Path | None = None) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._draining = False
        self._last_refusal = 0.0
        self._shared_marker = shared_marker
        self._last_marked = 0.0

    def enter(self) -> bool:
        """Admit one call (True) or, when draining, refuse it (False)."""
        with self._condition:
            if self._draining:
                self._last_refusal = now = time.monotonic()
                mark = self._shared_marker is not None and now - self._last_marked >= SHARED_MARK_INTERVAL_SECONDS
                if mark:
                    self._last_marked = now
            else:
                self._in_flight += 1
                return True
        if mark:
            self._mark_shared()
        return False

    def _mark_shared(self) -> None:
        if self._shared_marker is None:
            return
        try:
            self._shared_marker.touch()  # its modification time is the group's latest refusal
        except OSError:
            pass  # the group's folder is going away: the group is stopping anyway

    def leave(self) -> None:
        """Mark one admitted call finished."""
        with self._condition:
            self._in_flight -= 1
            if self._draining and self._in_flight == 0:
                self._condition.notify_all()

    def start_draining(self) -> None:
        """Refuse every call from now on."""
        with self._condition:
            if self._draining:
                return
            self._draining = True
            self._last_refusal = time.monotonic()  # the quiet period counts from the start of the drain at the earliest
        if self._shared_marker is not None:
            self._mark_shared()

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait until no admitted call is running; False if some still were after timeout_s."""
        with self._condition:
            return self._condition.wait_for(lambda: self._in_flight == 0, timeout=max(timeout_s, 0.0))

    def wait_until_quiet(self, quiet_s: float, timeout_s: float) -> bool:
        """Wait until no call was refused for quiet_s seconds; False if calls still arrived after timeout_s."""
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            with self._condition:
                quiet_at = self._last_refusal + quiet_s
            quiet_at = max(quiet_at, self._shared_quiet_at(quiet_s))
            now = time.monotonic()
            if now >= quiet_at:
                return True
            if now >= deadline:
                return False
            time.sleep(min(quiet_at, deadline, now + SHARED_MARK_INTERVAL_SECONDS) - now)

    def _shared_quiet_at(self, quiet_s: float) -> float:
        """When the group will have been quiet for quiet_s, on this process's monotonic clock (0: no group)."""
        if self._shared_marker is None:
            return 0.0
        try:
            since = time.time() - self._shared_marker.stat().st_mtime
        except OSError:
            return 0.0
        return time.monotonic() - since + quiet_s


class DrainingWsgiApp:
    """The REST side of a DrainGate: a WSGI app whose requests are counted, refused (503) once draining."""

    def __init__(self, app: WSGIApplication, gate: DrainGate) -> None:
        self.app = app
        self.gate = gate

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if not self.gate.enter():
            body = json.dumps({"error": SHUTTING_DOWN_MESSAGE}).encode()
            # Connection: close, so that a kept-alive client opens a new connection, to a server still running.
            headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
            headers.append(("Connection", "close"))
            start_response("503 Service Unavailable", headers)
            return [body]
        try:
            result = self.app(environ, start_response)
        except BaseException:
            self.gate.leave()
            raise
        return _LeavingIterable(result, self.gate.leave)

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests and wait for admitted ones (the wrapped app's own drain too, where it has one)."""
        self.gate.start_draining()
        idle = self.gate.wait_until_idle(timeout_s)
        inner_drain = getattr(self.app, "drain", None)  # a Flask app has none: the gate counts all its requests
        return (inner_drain is None or inner_drain(0.0)) and idle


class _LeavingIterable:
    """A WSGI result that marks its request finished once the server has closed it (after the last byte)."""

    def __init__(self, result: Iterable[bytes], leave: Callable[[], None]) -> None:
        self.result = result
        self.leave = leave

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.result)

    def close(self) -> None:
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        finally:
            self.leave()
