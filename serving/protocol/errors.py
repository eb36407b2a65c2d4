"""The one request error: a sentence for the caller, its gRPC status name, and the HTTP status TF Serving maps it to."""

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


class RequestError(Exception):
    """A request the server refuses; code is a gRPC status name, http_status the REST equivalent."""

    def __init__(self, message: str, code: str = "INVALID_ARGUMENT") -> None:
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
