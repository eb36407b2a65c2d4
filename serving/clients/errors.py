"""The clients' one error family and one voice: every client words the same failure the same way, whatever the server.

Each sentence starts with what was asked (the client's description: server, protocol, address) and says what
happened: `Cannot reach <server>: ...`, `<server> did not answer within N s.`, `<server> has no model 'x' (status):
...`, `<server> refused the key (status): ...`, `<server> refused the request (status): ...`; the status is the HTTP
status (`HTTP 404`) or the gRPC code (`NOT_FOUND`).
"""

from __future__ import annotations

KEY_FILE_HINT = (
    "pass TorchServe's key file with --key-file (a `make serve` stack keeps it in "
    ".run/torchserve/key_file.json, which the client finds by itself)"
)


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


def _status(status: str | int) -> str:
    return f"HTTP {status}" if isinstance(status, int) else str(status)


def _sentence(message: str) -> str:
    message = " ".join(message.split()) or "no details"
    return message if message.endswith((".", "!", "?")) else message + "."


def unreachable(description: str, status: str | int | None = None) -> ServerUnavailableError:
    """Nothing answers at the client's address (refused, dropped, or the server is shutting down)."""
    return ServerUnavailableError(f"Cannot reach {description}: the connection was refused or dropped.", status)


def timed_out(description: str, seconds: float, status: str | int | None = None) -> ServerUnavailableError:
    """The server took longer than the client's deadline."""
    return ServerUnavailableError(f"{description} did not answer within {seconds:g} s.", status)


def unknown_model(
    description: str, model_name: str, status: str | int, message: str, error_type: type[ServingError] = ServingError
) -> ServingError:
    """The server has no such model (or version)."""
    return error_type(f"{description} has no model '{model_name}' ({_status(status)}): {_sentence(message)}", status)


def key_refused(description: str, status: str | int, message: str) -> TorchServeError:
    """TorchServe's token authorization refused the key (or its absence)."""
    return TorchServeError(
        f"{description} refused the key ({_status(status)}): {_sentence(message)[:-1]}; {KEY_FILE_HINT}.", status
    )


def refused(
    description: str, status: str | int, message: str, error_type: type[ServingError] = ServingError
) -> ServingError:
    """Any other refusal, with the server's own sentence."""
    return error_type(f"{description} refused the request ({_status(status)}): {_sentence(message)}", status)
