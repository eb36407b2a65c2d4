"""The REST port's HTTP server: uvicorn (httptools parser, uvloop event loop) in a background thread, handing each
complete request to the WSGI RestApp on a thread pool.

Why this stack: werkzeug's development server parsed every request in Python on a thread per connection, and
cost more than the model call (a 1-client predict took 3.7 ms where Flask under gunicorn took 1.5 ms). uvicorn's
parser and event loop are C (httptools, uvloop): connections, keep-alive and bodies cost little and a slow or
idle client holds a few kilobytes, never a thread. The body is read in full (up to --max_request_bytes) on the
event loop before a pool thread runs the route, so threads only ever run model calls; the batch scheduler sees
REST and gRPC requests alike. The metrics page and its request counts live here too: they belong to the port,
not to the API's routes.

What a client cannot do to the port (serving.frontend.connections guards it; each refusal is {"error": "..."},
and the connection is closed):
- send a body over --max_request_bytes: 413, read to its end (for up to connections.LINGER_SECONDS) before the
  connection closes, so that the client reads the answer instead of a reset; a client waiting for "100 Continue"
  is refused before it sends anything, and so is a chunked body as soon as a chunk declares more than the limit allows (a
  chunk size of ffffffffffffffff is answered at once, not after a deadline);
- send what is not HTTP/1.1 (a bad request line, header or chunked framing): 400, where uvicorn alone answers
  plain text; headers over connections.MAX_HEADER_BYTES: 431;
- take more than read_timeout_seconds to finish its headers, pause longer than that inside its body, or take
  more than body_timeout_seconds over the whole body: 408;
- stay connected idle: a connection with no request is closed after keep_alive_seconds, from the moment it
  opens (uvicorn alone starts counting only after a first answer);
- exhaust the open files: at most max_connections are open (by default three quarters of the open-file limit,
  which the server raises to its hard maximum); when a new one arrives at the limit, the longest-idle connection
  is closed to make room, and only when none is idle does the new one get 503.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import io
import logging
import re
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
import uvloop

from serving.frontend.connections import ConnectionGuard, FrontEndSettings, GuardedProtocol, connection_limit
from serving.protocol.errors import HTTP_STATUS, RequestError
from serving.protocol.rest import dumps

logger = logging.getLogger("serving.frontend")
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the answer
# instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
LISTEN_BACKLOG = 2048
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


def listening_socket(host: str, port: int, share_port: bool) -> socket.socket:
    """A bound, listening TCP socket; with share_port, other processes may bind the same port (SO_REUSEPORT)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class RestFrontEnd:
    """uvicorn serving a WSGI app (with a drain(timeout) method) on an already bound socket, in its own thread."""

    def __init__(self, app: Any, sock: socket.socket, settings: FrontEndSettings) -> None:
        self.app = app
        self.sock = sock
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="rest")
        self.guard = ConnectionGuard(settings, settings.max_connections or connection_limit())
        config = uvicorn.Config(
            _Bridge(app, settings, self.executor),
            http=functools.partial(GuardedProtocol, guard=self.guard),  # type: ignore[arg-type]
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # the server's own logging set-up stays in charge
            access_log=False,  # a line per request would cost more than the request
            server_header=False,
            date_header=False,
            timeout_keep_alive=int(max(settings.keep_alive_seconds, 1)),
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="rest-server", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.sock.getsockname()[1]

    def _run(self) -> None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(self.server.serve(sockets=[self.sock]))

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self, grace_s: float) -> bool:
        """Stop listening, close idle connections, answer 503 on kept-alive ones, wait for requests in flight."""
        deadline = time.monotonic() + grace_s
        self.server.config.timeout_graceful_shutdown = max(int(grace_s), 1)
        self.server.should_exit = True  # uvicorn's loop notices within 0.1 s
        drained = self.app.drain(grace_s)
        self._thread.join(max(deadline - time.monotonic(), 0.0) + 1.0)
        self.executor.shutdown(wait=False)
        return drained and not self._thread.is_alive()


class _Bridge:
    """The ASGI application uvicorn calls: reads the body, runs the WSGI app on the pool, writes its answer."""

    def __init__(self, app: Any, settings: FrontEndSettings, executor: concurrent.futures.Executor) -> None:
        self.app = app
        self.settings = settings
        self.executor = executor

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        settings = self.settings
        if settings.metrics_path is not None and scope["path"] == settings.metrics_path:
            page = await loop.run_in_executor(self.executor, settings.metrics.exposition)
            await _respond(send, 200, [(b"content-type", b"text/plain; version=0.0.4")], page)
            return
        body = await self._read_body(scope, receive)
        if body is None:
            return  # the client left before sending its whole body
        if isinstance(body, RequestError):
            status, headers, content = body.http_status, [*JSON_HEADERS, (b"connection", b"close")], _json(body.body())
            if isinstance(body, _TooSlow):
                status = 408
        else:
            try:
                status, headers, content = await loop.run_in_executor(self.executor, self._call, _environ(scope, body))
            except Exception:  # a bug in the app: logged with its traceback, answered 500, the server keeps running
                logger.exception("REST %s %s failed unexpectedly.", scope["method"], scope["path"][:200])
                status, headers, content = 500, JSON_HEADERS, _json(INTERNAL_ERROR)
        await _respond(send, status, headers, content)
        if settings.metrics is not None:
            self._count(scope["path"], status, time.perf_counter() - started)

    async def _read_body(self, scope: dict, receive: Receive) -> bytes | RequestError | None:
        """The whole body; a RequestError past the limit (413) or the read deadlines (408); None when the client
        disconnected."""
        settings = self.settings
        limit = settings.max_body_bytes
        too_large = RequestError(
            f"The request body is larger than this server's limit of {limit} bytes.", "RESOURCE_EXHAUSTED"
        )
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # A client waiting for "100 Continue" has sent nothing yet: refuse before it sends (uvicorn says 100
            # Continue only once the body is read). Others are drained a little, so that they see the answer.
            waiting = (_header(scope, b"expect") or "").lower() == "100-continue"
            if waiting or int(declared) > limit + DRAIN_LIMIT_BYTES:
                return too_large
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + settings.body_timeout_seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await asyncio.wait_for(receive(), settings.read_timeout_seconds)
            except TimeoutError:
                return _TooSlow(settings)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)
            if not message.get("more_body", False) or size > limit + DRAIN_LIMIT_BYTES:
                return b"".join(chunks) if size <= limit else too_large

    def _call(self, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app (on a pool thread): status, headers and the whole body."""
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            answer[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; RestApp never uses it

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = answer
        return (
            int(status[:3]),
            [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers],
            content,
        )

    def _count(self, path: str, status: int, seconds: float) -> None:
        match = INFERENCE_PATH.match(path)
        if match is not None:
            code = STATUS_CODE_NAMES.get(status, "UNKNOWN")
            self.settings.metrics.record(match["name"], match["verb"].lower(), "REST", code, seconds)


class _TooSlow(RequestError):
    """A body that missed its deadlines: HTTP 408 (Request Timeout), a client's fault, not the server's 504."""

    def __init__(self, settings: FrontEndSettings) -> None:
        super().__init__(
            f"The request body did not arrive in time (a pause over {settings.read_timeout_seconds:g} seconds, or "
            f"over {settings.body_timeout_seconds:g} seconds in all).",
            "DEADLINE_EXCEEDED",
        )


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], content: bytes) -> None:
    headers = [(name, value) for name, value in headers if name != b"content-length"]
    headers.append((b"content-length", str(len(content)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def _json(document: Any) -> bytes:
    return dumps(document).encode()


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
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
