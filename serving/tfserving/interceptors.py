"""A gRPC server interceptor that wraps the behaviour of chosen unary methods, each method's handler built once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behaviour = Callable[[Any, grpc.ServicerContext], Any]


class UnaryMethodInterceptor(grpc.ServerInterceptor):
    """Subclasses say, per method, how to wrap its unary-unary behaviour (wrap) or to leave it alone (None)."""

    def __init__(self) -> None:
        # Handlers are fixed per method, so each is wrapped once; intercept_service runs on grpc's polling thread.
        self._handlers: dict[str, grpc.RpcMethodHandler | None] = {}

    def wrap(self, method: str, behaviour: Behaviour) -> Behaviour | None:
        """The wrapped behaviour for this method (full name, e.g. /tensorflow.serving.PredictionService/Predict)."""
        raise NotImplementedError

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        """The method's handler, wrapped when wrap() says so."""
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # this server's wrapped services are all unary-unary
        method = handler_call_details.method
        if method not in self._handlers:
            behaviour = self.wrap(method, handler.unary_unary)
            self._handlers[method] = (
                None
                if behaviour is None
                else grpc.unary_unary_rpc_method_handler(
                    behaviour,
                    request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer,
                )
            )
        return self._handlers[method] or handler
