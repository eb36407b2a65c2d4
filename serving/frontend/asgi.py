"""The ASGI application the front end runs: a WSGI app behind a body limit and body deadlines, on a thread pool.

uvicorn calls it once the headers are in. It reads the body on the event loop through ASGI's receive(), within the
limit and the deadlines, and hands the complete request to the WSGI app on a thread pool, so pool threads only ever
run routes (the TF server's batch scheduler sees REST and gRPC requests alike). The metrics page and its request
counts live here too: they belong to the port, not to the API's routes. What it refuses, as one JSON sentence:

- a body over max_body_bytes: 413, and the connection stays open: what the client still sends of that body, uvicorn
  reads and drops (closing on unread data would make the kernel reset the connection, and the client would see the
  reset instead of the answer). A body in progress is read and dropped up to DRAIN_LIMIT_BYTES past the limit before
  the answer, for clients that asked to close; a declared length beyond that is answered at once, and a client
  waiting for "100 Continue" is answered at once and the connection closed;
- a body that pauses for read_timeout_seconds, or takes body_timeout_seconds in all: 408, and the connection closes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Protocol
from wsgiref.types import WSGIApplication, WSGIEnvironment

from serving.protocol.errors import HTTP_STATUS
from serving.protocol.rest import dumps

logger = logging.getLogger("serving.frontend")
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the answer
# instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
# The inference paths the real server counts in its metrics: /v1/models/<name>[/versions/<n>|/labels/<l>]:<verb>
INFERENCE_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/(?:versions|labels)/[^/:]+)?:(?P<verb>predict|classify|regress)$", re.I
)
STATUS_CODE_NAMES = {
    200: "OK",
    408: "DEADLINE_EXCEEDED",  # a request too slow to arrive (TF Serving's own 504 means a model too slow to answer)
    **{status: code for code, status in reversed(HTTP_STATUS.items())},
}
JSON_HEADERS = [(b"content-type", b"application/json")]
INTERNAL_ERROR = {"error": "The request failed inside the server; see the server log."}
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class PortMetrics(Protocol):
    """What the metrics page needs, e.g. serving.tfserving.monitoring.ServerMetrics."""

    def exposition(self) -> bytes: ...

    def record(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None: ...


@dataclasses.dataclass(frozen=True)
class FrontEndSettings:
    """How the port behaves: body limit, pool size, idle keep-alive, body deadlines, connection cap (None: from the
    open-file limit), and the metrics page (None: no page)."""

    max_body_bytes: int
    threads: int
    keep_alive_seconds: float
    metrics_path: str | None = None
    metrics: PortMetrics | None = None  # set together with metrics_path
    read_timeout_seconds: float = 10.0  # the longest pause inside a body
    body_timeout_seconds: float = 60.0  # the longest a whole body may take
    max_connections: int | None = None


class WsgiBridge:
    """The ASGI application uvicorn calls: reads the body, runs the WSGI app on the pool, writes its answer."""

    def __init__(self, app: WSGIApplication, settings: FrontEndSettings, executor: concurrent.futures.Executor) -> None:
        self.app = app
        self.settings = settings
        self.executor = executor

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        settings = self.settings
        metrics = settings.metrics
        if metrics is not None and scope["path"] == settings.metrics_path:
            page = await loop.run_in_executor(self.executor, metrics.exposition)
            await _respond(send, 200, [(b"content-type", b"text/plain; version=0.0.4")], page)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            return  # the client left before sending its whole body
        if isinstance(body, _Refusal):
            status, content = body.status, _json({"error": body.sentence})
            headers = [*JSON_HEADERS, (b"connection", b"close")] if body.close else JSON_HEADERS
        else:
            try:
                status, headers, content = await loop.run_in_executor(self.executor, self._call, _environ(scope, body))
            except Exception:  # a bug in the app: logged with its traceback, answered 500, the server keeps running
                logger.exception("REST %s %s failed unexpectedly.", scope["method"], scope["path"][:200])
                status, headers, content = 500, JSON_HEADERS, _json(INTERNAL_ERROR)
        await _respond(send, status, headers, content)
        if metrics is not None:
            self._count(metrics, scope["path"], status, time.perf_counter() - started)

    async def _read_body(self, scope: dict, receive: Receive) -> bytes | _Refusal | None:
        """The whole body; a refusal past the limit (413) or the deadlines (408); None when the client left."""
        settings = self.settings
        limit = settings.max_body_bytes
        too_large = _Refusal(413, f"The request body is larger than this server's limit of {limit} bytes.")
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            if (_header(scope, b"expect") or "").lower() == "100-continue":
                # It waits for "100 Continue" (uvicorn sends it at the first receive()) and has sent nothing: it
                # must not send the body now, so the connection closes.
                return _Refusal(413, too_large.sentence, close=True)
            if int(declared) > limit + DRAIN_LIMIT_BYTES:
                return too_large
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.body_timeout_seconds
        while True:
            try:  # the next piece within the pause allowed, the whole body within its deadline
                async with asyncio.timeout_at(min(deadline, loop.time() + settings.read_timeout_seconds)):
                    message = await receive()
            except TimeoutError:
                sentence = (
                    f"The request body did not arrive in time (a pause over {settings.read_timeout_seconds:g} "
                    f"seconds, or over {settings.body_timeout_seconds:g} seconds in all)."
                )
                return _Refusal(408, sentence, close=True)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > limit + DRAIN_LIMIT_BYTES:
                return b"".join(chunks) if size <= limit else too_large

    def _call(self, environ: WSGIEnvironment) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app (on a pool thread): status, headers and the whole body."""
        status, headers, content = call_wsgi(self.app, environ)
        return (
            int(status[:3]),
            [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            content,
        )

    @staticmethod
    def _count(metrics: PortMetrics, path: str, status: int, seconds: float) -> None:
        match = INFERENCE_PATH.match(path)
        if match is not None:
            code = STATUS_CODE_NAMES.get(status, "UNKNOWN")
            metrics.record(match["name"], match["verb"].lower(), "REST", code, seconds)


def call_wsgi(app: WSGIApplication, environ: WSGIEnvironment) -> tuple[str, list[tuple[str, str]], bytes]:
    """One request through a WSGI app: its status line, headers and whole body (its result closed, as PEP 3333 asks)."""
    answer: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        answer[:] = [(status, headers)]
        return lambda data: None  # the legacy write() callable; the apps served here never use it

    result = app(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    ((status, headers),) = answer
    return status, headers, content


@dataclasses.dataclass(frozen=True)
class _Refusal:
    """A request the bridge answers itself: its status, its sentence, and whether the connection closes."""

    status: int
    sentence: str
    close: bool = False


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
    headers = [(name, value) for name, value in headers if name != b"content-length"]
    headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _json(document: dict[str, str]) -> bytes:
    return dumps(document).encode()


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _environ(scope: dict, body: bytes) -> dict:
    """The WSGI environ (PEP 3333) of one request whose body has been read."""
    host, port = scope.get("server") or ("127.0.0.1", 0)
    client = scope.get("client") or ("", 0)
    environ = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": "",
        # WSGI carries the decoded path as latin-1 text of its UTF-8 bytes.
        "PATH_INFO": scope["path"].encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": str(host),
        "SERVER_PORT": str(port),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": client[0],
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in scope["headers"]:
        key = name.decode("latin-1").upper().replace("-", "_")
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is already complete and de-chunked
        key = key if key == "CONTENT_TYPE" else f"HTTP_{key}"
        text = value.decode("latin-1")
        environ[key] = f"{environ[key]},{text}" if key in environ else text
    return environ
