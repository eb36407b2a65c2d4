"""The Python REST servers' front end: uvicorn, configured through its public Config only, serving a WSGI app.

uvicorn parses HTTP in C (httptools) on a C event loop (uvloop) in a background thread: a slow or idle connection
costs a few kilobytes, never a thread. The ASGI bridge below reads each body on the event loop, within its limit and
deadlines, and hands the complete request to the WSGI app on a thread pool, so pool threads only ever run routes
(the TF server's batch scheduler sees REST and gRPC requests alike). The metrics page and its request counts live
here too: they belong to the port, not to the API's routes.

What the front end refuses, and how (docs/performance.md, "The front end's own refusals", has the whole list):
- a body over max_body_bytes: 413, one JSON sentence, and the connection stays open: what the client still sends of
  that body, uvicorn reads and drops (closing on unread data would make the kernel reset the connection, and the
  client would see the reset instead of the answer). A body in progress is read (and dropped) up to DRAIN_LIMIT_BYTES
  past the limit before the answer, for clients that asked to close; a declared length beyond that is answered at
  once, and a client waiting for "100 Continue" is answered at once and the connection closed;
- a body that pauses for read_timeout_seconds, or takes body_timeout_seconds in all: 408, one JSON sentence;
- a request arriving while max_connections are open (by default three quarters of the open-file limit, raised to its
  hard maximum): uvicorn's limit_concurrency answers 503 (plain text) and closes;
- malformed HTTP (request line, headers, chunked framing): uvicorn answers 400 "Invalid HTTP request received."
  (plain text) and closes;
- a kept-alive connection idle for keep_alive_seconds after an answer is closed (uvicorn's timeout_keep_alive).
uvicorn has no deadline for headers, no limit on their size, and no timer on a connection idle before its first
request; a proxy in front (nginx) adds those where the port faces the network.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import io
import logging
import re
import resource
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from serving.protocol.errors import HTTP_STATUS
from serving.protocol.rest import dumps

logger = logging.getLogger("serving.frontend")
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the answer
# instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
LISTEN_BACKLOG = 2048
# Open files kept for everything but REST connections (models, gRPC, logs) when the cap follows the open-file limit.
FILE_RESERVE_FRACTION = 4
MAX_CONNECTIONS_CEILING = 16384
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


@dataclasses.dataclass(frozen=True)
class FrontEndSettings:
    """How the port behaves: body limit, pool size, idle keep-alive, body deadlines, connection cap (None: from the
    open-file limit), and the metrics page (None: no page)."""

    max_body_bytes: int
    threads: int
    keep_alive_seconds: float
    metrics_path: str | None = None
    metrics: Any = None  # with exposition() and record(...), e.g. serving.tfserving.monitoring.ServerMetrics
    read_timeout_seconds: float = 10.0  # the longest pause inside a body
    body_timeout_seconds: float = 60.0  # the longest a whole body may take
    max_connections: int | None = None


def connection_limit() -> int:
    """REST connections one process may hold: the open-file limit, raised to its hard maximum, less a reserve.

    Raising the soft limit is what a server facing many clients is expected to do (the common default of 1024 would
    let 1,000 idle sockets take every file); a quarter is kept for models, gRPC and logs.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CEILING
    wanted = max(soft, MAX_CONNECTIONS_CEILING * 2) if hard == resource.RLIM_INFINITY else hard
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):  # some systems refuse; the soft limit then stays what it was
            pass
    return max(16, min(MAX_CONNECTIONS_CEILING, soft - soft // FILE_RESERVE_FRACTION))


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
        config = uvicorn.Config(
            _Bridge(app, settings, self.executor),
            http="httptools",
            loop="uvloop",
            ws="none",
            lifespan="off",
            interface="asgi3",
            log_config=None,  # the server's own logging set-up stays in charge
            access_log=False,  # a line per request would cost more than the request
            proxy_headers=False,  # the port is the server itself, not behind a proxy it should trust
            server_header=False,  # as TensorFlow Serving's evhttp answers: a Date header, no Server header
            date_header=True,
            timeout_keep_alive=max(round(settings.keep_alive_seconds), 1),
            limit_concurrency=settings.max_connections or connection_limit(),
            backlog=LISTEN_BACKLOG,
        )
        # uvicorn warns once per malformed request and per refused connection: any client could fill the log.
        logging.getLogger("uvicorn.error").setLevel(logging.ERROR)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, args=([sock],), name="rest-server", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.sock.getsockname()[1]

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
        if settings.metrics is not None:
            self._count(scope["path"], status, time.perf_counter() - started)

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
        deadline = asyncio.get_running_loop().time() + settings.body_timeout_seconds
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await asyncio.wait_for(receive(), settings.read_timeout_seconds)
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

    def _call(self, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the WSGI app (on a pool thread): status, headers and the whole body."""
        answer: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            answer[:] = [status, headers]
            return lambda data: None  # the legacy write() callable; the apps served here never use it

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
