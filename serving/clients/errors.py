"""The clients' one error family: a refusal carries the server's sentence and its gRPC code or HTTP status."""

from __future__ import annotations


class ServingError(Exception):
    """The server answered with an error (message is one sentence, status its gRPC code or HTTP status)."""

    def __init__(self, message: str, status: str | int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class ServerUnavailableError(ServingError):
    """The server could not be reached (not running, wrong address, or shutting down)."""


class TorchServeError(ServingError):
    """TorchServe refused or failed a request; status is the HTTP status, message the server's sentence."""
