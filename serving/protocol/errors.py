"""The one request error: a sentence for the caller, its gRPC status name, and the HTTP status TF Serving maps it to."""

from __future__ import annotations

# gRPC status names as TensorFlow Serving uses them, and the HTTP status its REST API maps each to.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 413,
    "UNAVAILABLE": 503,
    "UNIMPLEMENTED": 501,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
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
