"""The gRPC side of the graceful shutdown: every unary call passes the DrainGate the REST port shares
(serving.frontend.draining says why both ports drain through one gate before they stop)."""

from __future__ import annotations

from typing import Any

import grpc

from serving.frontend.draining import SHUTTING_DOWN_MESSAGE, DrainGate
from serving.tfserving.interceptors import Behaviour, UnaryMethodInterceptor

# Health stays outside the gate: during a drain it must keep answering NOT_SERVING, and Watch streams never end.
UNGATED_SERVICE_PREFIXES = ("/grpc.health.v1.Health/",)


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
