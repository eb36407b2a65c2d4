"""Graceful gRPC shutdown: refuse new calls with UNAVAILABLE, wait for running ones, then let clients go quiet.

grpc's server.stop() cancels (status CANCELLED, handler never run) every call its core has received but the
Python server has not yet matched to a handler. Under load there are always a few such calls, so stopping while
clients still send loses them. Draining first answers every new call UNAVAILABLE from Python instead, and main
calls stop() only once the running calls have finished and no new call has arrived for a short quiet period.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

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


class DrainingInterceptor(grpc.ServerInterceptor):
    """Routes every unary call (except health) through a DrainGate: UNAVAILABLE once draining, counted otherwise."""

    def __init__(self, gate: DrainGate) -> None:
        self.gate = gate
        # Handlers are fixed per method, so each is wrapped once; intercept_service runs on grpc's polling thread.
        self._wrapped: dict[str, grpc.RpcMethodHandler] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped so the gate sees each call."""
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(UNGATED_SERVICE_PREFIXES):
            return handler  # this server's gated services are all unary-unary
        wrapped = self._wrapped.get(method)
        if wrapped is None:
            wrapped = grpc.unary_unary_rpc_method_handler(
                self._gated(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
            self._wrapped[method] = wrapped
        return wrapped

    def _gated(
        self, behaviour: Callable[[Any, grpc.ServicerContext], Any]
    ) -> Callable[[Any, grpc.ServicerContext], Any]:
        gate = self.gate

        def gated(request: Any, context: grpc.ServicerContext) -> Any:
            if not gate.enter():
                context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN_MESSAGE)
            try:
                return behaviour(request, context)
            finally:
                gate.leave()

        return gated
