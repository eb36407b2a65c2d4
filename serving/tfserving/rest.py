"""TensorFlow Serving's REST API (/v1/models/...) as a WSGI app; serving.frontend.http serves it.

The app sees complete requests (the front end reads each body, up to the size limit, before calling it) and runs
on the front end's thread pool; model calls release the GIL, so those threads overlap with the HTTP work.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import ClosingIterator, get_content_length, get_input_stream, get_path_info

from serving.protocol.errors import RequestError
from serving.protocol.rest import dumps
from serving.tfserving.predictor import Predictor
from serving.tfserving.rest_handlers import RestHandler

logger = logging.getLogger("serving.tfserving")

# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the
# answer instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


# One answer: HTTP status, JSON text, and whether to close the connection after it.
Answer = tuple[int, str, bool]


def _json(status: int, document: Any, close: bool = False) -> Answer:
    return status, dumps(document), close


def _error(error: RequestError, close: bool = False) -> Answer:
    return _json(error.http_status, error.body(), close)


def _start(start_response: Callable, answer: Answer) -> list[bytes]:
    """Send an answer through WSGI directly (no Response object: the headers are always these)."""
    status, text, close = answer
    content = text.encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(content)))]
    if close:
        headers.append(("Connection", "close"))
    start_response(f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN')}", headers)
    return [content]


class RestApp:
    """The WSGI application; counts requests in flight so a shutdown can wait for them."""

    def __init__(self, predictor: Predictor, max_request_bytes: int, timeout_s: float, max_concurrent: int) -> None:
        self.predictor = predictor
        self.handler = RestHandler(predictor, timeout_s)
        self.max_request_bytes = max_request_bytes
        self.timeout_s = timeout_s
        # One token per request allowed to run at once: a C queue, cheaper per request than a Python semaphore.
        self._slots: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(max_concurrent):
            self._slots.put(None)
        self._condition = threading.Condition()
        self._in_flight = 0
        self._draining = False

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self._condition:
            if self._draining:
                return _start(start_response, _error(RequestError("The server is shutting down.", "UNAVAILABLE"), True))
            self._in_flight += 1
        try:
            try:
                self._slots.get(timeout=self.timeout_s)
            except queue.Empty:
                answer = _error(RequestError("The server is busy; try again.", "UNAVAILABLE"))
            else:
                try:
                    answer = self.dispatch(environ)
                finally:
                    self._slots.put(None)
            # The count drops only once the server has written the body (close() runs after the last byte).
            return ClosingIterator(_start(start_response, answer), [self._finished])
        except BaseException:
            self._finished()
            raise

    def _finished(self) -> None:
        with self._condition:
            self._in_flight -= 1
            if self._draining:
                self._condition.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (503) and wait for those in flight; False if some were still running at timeout."""
        with self._condition:
            self._draining = True
            return self._condition.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def dispatch(self, environ: dict) -> Answer:
        """Route one request; every refusal becomes {"error": ...} with TensorFlow Serving's status."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        path = "/" + get_path_info(environ).lstrip("/")  # as werkzeug's Request reads it
        try:
            return self._route(environ, method, path)
        except RequestError as error:
            return _error(error, close=error.http_status == 413)
        except Exception:  # unexpected: logged with traceback, answered 500, server keeps running
            logger.exception("REST %s %s failed unexpectedly.", method, path[:200])
            return _json(500, {"error": "The request failed inside the server; see the server log."})

    def _route(self, environ: dict, method: str, path: str) -> Answer:
        # What to answer is serving.tfserving.rest_handlers' business; this class only reads and writes HTTP.
        body = self._read_body(environ) if method == "POST" else b""
        answer = self.handler.handle(method, path, body)
        return answer.status, answer.body, answer.status == 413

    def _read_body(self, environ: dict) -> bytes:
        limit = self.max_request_bytes
        too_large = RequestError(
            f"The request body is larger than this server's limit of {limit} bytes.", "RESOURCE_EXHAUSTED"
        )
        length = get_content_length(environ)
        if length is not None and length > limit:
            if length <= limit + DRAIN_LIMIT_BYTES:
                stream = get_input_stream(environ)
                while stream.read(1024 * 1024):
                    pass
            raise too_large
        try:  # the limit also bounds chunked bodies, which have no Content-Length
            return get_input_stream(environ, max_content_length=limit).read()
        except RequestEntityTooLarge:
            raise too_large from None
        except ClientDisconnected:
            raise RequestError("The client closed the connection before sending the whole body.") from None
