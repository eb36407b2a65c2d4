"""Graceful gRPC shutdown: refuse new calls with UNAVAILABLE, wait for running ones, then let clients go quiet.

grpc's server.stop() cancels (status CANCELLED, handler never run) every call its core has received but the
Python server has not yet matched to a handler. Under load there are always a few such calls, so stopping while
clients still send loses them. Draining first answers every new call UNAVAILABLE from Python instead, and main
calls stop() only once the running calls have finished and no new call has arrived for a short quiet period.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import grpc

from serving.tfserving.interceptors import Behaviour, UnaryMethodInterceptor

SHUTTING_DOWN_MESSAGE = "The server is shutting down; retry on another server."
# Health stays outside the gate: during a drain it must keep answering NOT_SERVING, and Watch streams never end.
UNGATED_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)


class DrainGate:
    """Counts calls in flight; once draining, refuses new calls and remembers when the last one was refused."""

    def __init__(self) -> None:
        self._condition = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._draining = False
        self._last_refusal = 0.0

    def enter(self) -> bool:
        """Admit one call (True) or, when draining, refuse it (False)."""
        with self._condition:
            if self._draining:
                self._last_refusal = time.monotonic()
                return False
            self._in_flight += 1
            return True

    def leave(self) -> None:
        """Mark one admitted call finished."""
        with self._condition:
            self._in_flight -= 1
            if self._draining and self._in_flight == 0:
                self._condition.notify_all()

    def start_draining(self) -> None:
        """Refuse every call from now on."""
        with self._condition:
            self._draining = True
            self._last_refusal = time.monotonic()  # the quiet period counts from the start of the drain at the earliest

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
            now = time.monotonic()
            if now >= quiet_at:
                return True
            if now >= deadline:
                return False
            time.sleep(min(quiet_at, deadline) - now)


class DrainingInterceptor(UnaryMethodInterceptor):
    """Routes every unary call (except health) through a DrainGate: UNAVAILABLE once draining, counted otherwise."""

    def __init__(self, gate: DrainGate) -> None:
        super().__init__()
        self.gate = gate

    def wrap(self, method: str, behaviour: Behaviour) -> Behaviour | None:
        """The behaviour behind the gate; health methods stay outside it."""
        if method.startswith(UNGATED_SERVICE_PREFIXES):
            return None
        gate = self.gate

        def gated(request: Any, context: grpc.ServicerContext) -> Any:
            if not gate.enter():
                context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
            try:
                return behaviour(request, context)
            finally:
                gate.leave()

        return gated
