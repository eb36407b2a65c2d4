"""The one request error: a sentence for the caller, its gRPC status name, and the HTTP status TF Serving maps it to.

A sentence quotes what the client sent (a model name, a signature name, a JSON value) through quoted(), which cuts it
to QUOTED_LIMIT characters, so that a 5,000-character name is never echoed whole; RequestError itself cuts any
sentence to MAX_MESSAGE_CHARS and escapes what UTF-8 cannot encode (a lone surrogate), so that every error body stays
short and every transport can write it.
"""

from __future__ import annotations

# gRPC status names and the HTTP status TensorFlow Serving's REST API answers for each (its http_server.cc), except
# RESOURCE_EXHAUSTED: the real server says 429 (too many requests); here it only means a body over the size limit, 413.
HTTP_STATUS = {
    "CANCELLED": 499,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 413,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}
# Characters of one client-supplied name or value quoted in an error sentence; longer ones end in "...".
QUOTED_LIMIT = 200
# Characters of a whole error sentence: room for two quoted values and the words around them.
MAX_MESSAGE_CHARS = 480
ELLIPSIS = "..."


def quoted(value: object, limit: int = QUOTED_LIMIT) -> str:
    """A name or value the client sent, as an error sentence quotes it: its text, cut to limit characters."""
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - len(ELLIPSIS)] + ELLIPSIS


def _sendable(message: str) -> str:
    """message cut to MAX_MESSAGE_CHARS, with anything UTF-8 cannot encode (a lone surrogate) written as an escape."""
    message = quoted(message, MAX_MESSAGE_CHARS)
    try:
        message.encode("utf-8")
    except UnicodeEncodeError:
        message = message.encode("utf-8", errors="backslashreplace").decode("utf-8")
    return message


class RequestError(Exception):
    """A request the server refuses; code is a gRPC status name, http_status the REST equivalent."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
        message = _sendable(message)
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def http_status(self) -> int:
        """The HTTP status TensorFlow Serving's REST API answers for this code."""
        return HTTP_STATUS.get(self.code, 500)

    def body(self) -> dict[str, str]:
        """The JSON error body."""
        return {"error": self.message}
