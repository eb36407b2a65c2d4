"""The REST port's HTTP server: uvicorn (httptools parser, uvloop event loop) in a background thread, handing each
complete request to the WSGI RestApp on a thread pool.

Why this stack: werkzeug's development server parsed every request in Python on a thread per connection, and
cost more than the model call (a 1-client predict took 3.7 ms where Flask under gunicorn took 1.5 ms). uvicorn's
parser and event loop are C (httptools, uvloop): connections, keep-alive and bodies cost little and a slow or
idle client holds a few kilobytes, never a thread. The body is read in full (up to --max_request_bytes) on the
event loop before a pool thread runs the route, so threads only ever run model calls; the batch scheduler sees
REST and gRPC requests alike. The metrics page and its request counts live here too: they belong to the port,
not to the API's routes.

What a client cannot do to the port (each answered with {"error": "..."} and the connection closed):
- send a body over --max_request_bytes: 413, read to its end (for up to LINGER_SECONDS) before the connection
  closes, so that the client reads the answer instead of a reset; a client waiting for "100 Continue" is refused
  before it sends anything, and so is a chunked body as soon as a chunk declares more than the limit allows (a
  chunk size of ffffffffffffffff is answered at once, not after a deadline);
- send what is not HTTP/1.1 (a bad request line, header or chunked framing): 400, where uvicorn alone answers
  plain text; headers over MAX_HEADER_BYTES: 431;
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
import collections
import concurrent.futures
import dataclasses
import functools
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

import httptools
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.protocol.errors import HTTP_STATUS, RequestError
from serving.protocol.rest import dumps

logger = logging.getLogger("serving.tfserving")
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]
# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the answer
# instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
LISTEN_BACKLOG = 2048
# The inference paths the real server counts in its metrics: /v1/models/<name>[/versions/<n>|/labels/<l>]:<verb>
INFERENCE_PATH = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/(?:versions|labels)/[^/:]+)?:(?P<verb>predict|classify|regress)$", re.I)
STATUS_CODE_NAMES = {
    200: "OK",
    408: "DEADLINE_EXCEEDED",  # a request too slow to arrive (TF Serving's own 504 means a model too slow to answer)
    **{status: code for code, status in reversed(HTTP_STATUS.items())},
}
JSON_HEADERS = [(b"content-type", b"application/json")]
INTERNAL_ERROR = {"error": "The request failed inside the server; see the server log."}
# Request line and headers of one request; real clients send well under 8 KiB. More is 431.
MAX_HEADER_BYTES = 64 * 1024
READ_TIMEOUT_SECONDS = 10.0
BODY_TIMEOUT_SECONDS = 60.0
# After an answer that ends the connection while the client is still sending its body (a 413), the rest of the body
# is read and dropped for up to this long before closing: closing on unread data makes the kernel reset the
# connection, and the client would see the reset instead of the answer.
LINGER_SECONDS = 2.0
# Open files kept for everything but REST connections (models, gRPC, logs) when the limit follows the open-file limit.
FILE_RESERVE_FRACTION = 4
MAX_CONNECTIONS_CEILING = 16384
# Raw bytes kept from the previous read, where the start of a chunk-size line split across two reads is found.
CHUNK_LINE_TAIL_BYTES = 1024
HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclasses.dataclass(frozen=True)
class FrontEndSettings:
    """How the port behaves: body limit, pool size, idle keep-alive, read deadlines, connection limit (None: from
    the open-file limit), and the metrics page (None: no page)."""

    max_body_bytes: int
    threads: int
    keep_alive_seconds: float
    metrics_path: str | None = None
    metrics: Any = None  # serving.tfserving.monitoring.ServerMetrics when metrics_path is set
    read_timeout_seconds: float = READ_TIMEOUT_SECONDS
    body_timeout_seconds: float = BODY_TIMEOUT_SECONDS
    max_connections: int | None = None
    max_header_bytes: int = MAX_HEADER_BYTES


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


def _json_answer(status: int, message: str) -> bytes:
    """A whole HTTP response, {"error": message}, that closes the connection (for answers given before any app)."""
    content = _json({"error": message})
    head = STATUS_LINE[status] + b"content-type: application/json\r\nconnection: close\r\n"
    return head + b"content-length: " + str(len(content)).encode() + b"\r\n\r\n" + content


class _ConnectionGuard:
    """What every connection of one port shares: the settings and the idle connections, oldest first."""

    def __init__(self, settings: FrontEndSettings, max_connections: int) -> None:
        self.settings = settings
        self.max_connections = max_connections
        self.idle: collections.OrderedDict[Any, None] = collections.OrderedDict()
        self.evicted = 0
        self.refused = 0


class _RecordingParser:
    """httptools' parser, remembering why it refused the last data (uvicorn's own answer drops the reason)."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.error = ""

    def feed_data(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise
        except httptools.HttpParserError as error:
            self.error = str(error)
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


class _LingeringTransport:
    """The transport uvicorn writes one request's answer to: its close() waits for the rest of the body (see
    LINGER_SECONDS); everything else is the connection's own transport."""

    def __init__(self, protocol: "GuardedProtocol") -> None:
        self.protocol = protocol
        self.transport = protocol.transport

    def close(self) -> None:
        self.protocol.close_after_body()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _HeadersTooLarge(Exception):
    """Raised inside a parser callback to stop reading a request whose headers are over the limit."""


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with JSON answers for protocol errors, read deadlines, a header size limit,
    an idle timer from the moment a connection opens, and the connection limit (see the module's docstring)."""

    def __init__(self, *args: Any, guard: _ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard
        self.parser = _RecordingParser(self.parser)
        self.in_request = False  # from a request's first byte until its last
        self.headers_done = False  # from a request's end of headers until the next request begins
        self.header_bytes = 0  # bytes received since the last request's headers ended
        self.parsed_header_bytes = 0  # bytes of this request's URL and headers
        self.read_deadline: asyncio.TimerHandle | None = None
        self.lingering = False
        self.body_bytes = 0  # body bytes of this request so far (de-chunked)
        self.chunk_bytes: int | None = None  # body bytes since the last chunk-size line, while inside that chunk
        self.chunk_started = False  # whether a chunk-size line ended in the data being read
        self.raw_tail = b""  # the last bytes read, for a chunk-size line that began in the previous read

    # connection life ---------------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self.guard
        if len(self.connections) > guard.max_connections and not self._evict_idle():
            guard.refused += 1
            self.transport.write(_json_answer(503, "The server has too many open connections; try again."))
            self.transport.close()
            return
        self._become_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.idle.pop(self, None)
        self._cancel_read_deadline()
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def _evict_idle(self) -> bool:
        """Close the connection idle longest to make room for this one; False when none is idle."""
        idle = self.guard.idle
        while idle:
            oldest, _ = idle.popitem(last=False)
            if not oldest.transport.is_closing():
                self.guard.evicted += 1
                oldest.transport.close()
                return True
        return False

    def _become_idle(self) -> None:
        """No request in progress: count as idle and close after keep_alive_seconds unless a request begins."""
        self.guard.idle[self] = None
        self.guard.idle.move_to_end(self)
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            handler = self.timeout_keep_alive_handler
            self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive, handler)

    def _is_between_requests(self) -> bool:
        return not self.in_request and (self.cycle is None or self.cycle.response_complete)

    # reading -----------------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if not self.headers_done:
            self.header_bytes += len(data)
        self.chunk_started = False
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.chunk_started and self.chunk_bytes is not None and not self.lingering:
            self._check_chunk_size(data)
            if self.transport.is_closing():
                return
        self.raw_tail = (self.raw_tail + data[-CHUNK_LINE_TAIL_BYTES:])[-CHUNK_LINE_TAIL_BYTES:]
        if not self.headers_done and self.header_bytes > self.guard.settings.max_header_bytes:
            self._refuse_large_headers()
        elif self._is_between_requests():
            self._become_idle()  # bytes that start no request (blank lines) do not keep a connection open for ever

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_request = True
        self.headers_done = False
        self.parsed_header_bytes = 0
        self.body_bytes = 0
        self.chunk_bytes = None
        self.guard.idle.pop(self, None)
        self._cancel_read_deadline()
        self.read_deadline = self.loop.call_later(self.guard.settings.read_timeout_seconds, self._headers_too_slow)

    def on_url(self, url: bytes) -> None:
        self._count_header_bytes(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value) + 4)
        super().on_header(name, value)

    def _count_header_bytes(self, size: int) -> None:
        # Headers that arrive whole in one read are measured here; data_received measures those still arriving.
        self.parsed_header_bytes += size
        if self.parsed_header_bytes > self.guard.settings.max_header_bytes:
            raise _HeadersTooLarge()  # stops the parser; uvicorn then calls send_400_response

    def on_headers_complete(self) -> None:
        self.headers_done = True
        self.header_bytes = 0
        self._cancel_read_deadline()
        super().on_headers_complete()
        if self.cycle is not None and not isinstance(self.cycle.transport, _LingeringTransport):
            self.cycle.transport = _LingeringTransport(self)

    def close_after_body(self) -> None:
        """Close now, or, while the client is still sending this request's body, once it is read (or after
        LINGER_SECONDS)."""
        if not self.in_request or self.transport.is_closing():
            self.transport.close()
            return
        self.lingering = True
        self.loop.call_later(LINGER_SECONDS, self.transport.close)

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.chunk_bytes is not None:
            self.chunk_bytes += len(body)
        super().on_body(body)

    def on_chunk_header(self) -> None:
        # httptools calls this once a chunk-size line has been read (its CRLF included), but does not say the size.
        self.chunk_bytes = 0
        self.chunk_started = True

    def on_chunk_complete(self) -> None:
        self.chunk_bytes = None

    def _check_chunk_size(self, data: bytes) -> None:
        """Refuse at once (413) a chunk whose declared size takes the body past the limit, instead of waiting for
        bytes that a limit would refuse anyway; called after a read that ended inside a chunk's data.

        Every byte after that chunk's size line was chunk data, so the line ends chunk_bytes before the end of the
        read. A line that cannot be found or read is left to the parser and the read deadlines.
        """
        end = len(data) - self.chunk_bytes
        start = data.rfind(b"\n", 0, max(end - 2, 0))
        # The line with its CRLF; it may have begun in the previous read (perhaps only its LF is in this one).
        text = data[start + 1 : end] if start >= 0 else self.raw_tail + data[:end]
        if not text.endswith(b"\r\n"):
            return
        line_start = text.rfind(b"\n", 0, len(text) - 2) + 1 if start < 0 else 0
        if start < 0 and line_start == 0:
            return  # no line start within the tail: a line this long is not one to guess about
        line = text[line_start:-2]
        size_text = line.split(b";", 1)[0].strip(b" \t")  # chunk extensions (";name=value") do not count
        if not 0 < len(size_text) <= 16 or not HEX_DIGITS.issuperset(size_text):
            return
        size = int(size_text, 16)
        declared = self.body_bytes - self.chunk_bytes + size
        limit = self.guard.settings.max_body_bytes
        if declared > limit:
            message = f"The request body is larger than this server's limit of {limit} bytes (a chunk declares {size})."
            self._refuse(413, message, linger=True)

    def on_message_complete(self) -> None:
        self.in_request = False
        self.chunk_bytes = None
        super().on_message_complete()
        if self.lingering:
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._is_between_requests():
            self.guard.idle[self] = None  # uvicorn has armed its keep-alive timer
            self.guard.idle.move_to_end(self)

    def _headers_too_slow(self) -> None:
        self.read_deadline = None
        if not self.headers_done and not self.transport.is_closing():
            seconds = self.guard.settings.read_timeout_seconds
            self._refuse(408, f"The request's headers did not arrive within {seconds:g} seconds.")

    def _cancel_read_deadline(self) -> None:
        if self.read_deadline is not None:
            self.read_deadline.cancel()
            self.read_deadline = None

    # answers before any app --------------------------------------------------------------------------------------

    def send_400_response(self, msg: str) -> None:
        if self.parsed_header_bytes > self.guard.settings.max_header_bytes:
            self._refuse_large_headers()
            return
        reason = self.parser.error.rstrip(".") if isinstance(self.parser, _RecordingParser) else ""
        detail = f" ({reason})" if reason else ""
        self._refuse(400, f"The request is not valid HTTP/1.1{detail}.")

    def _refuse_large_headers(self) -> None:
        limit = self.guard.settings.max_header_bytes
        self._refuse(431, f"The request's headers are larger than this server's limit of {limit} bytes.")

    def _refuse(self, status: int, message: str, linger: bool = False) -> None:
        """Answer {"error": message} in place of the app and close; with linger, once the body is read (see
        close_after_body), so that a client still sending reads the answer instead of a reset."""
        self._cancel_read_deadline()
        if self.cycle is not None and not self.cycle.response_complete:
            if self.cycle.response_started:  # an answer is already on its way: it cannot be replaced, only cut
                self.transport.close()
                return
            self.cycle.response_complete = True  # the app's answer, should it come, is dropped
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        self.transport.write(_json_answer(status, message))
        if linger:
            self.flow.resume_reading()  # paused while the app had unread body; it will read no more of this one
            self.close_after_body()
        else:
            self.transport.close()


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
        self.guard = _ConnectionGuard(settings, settings.max_connections or connection_limit())
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
        too_large = RequestError(f"The request body is larger than this server's limit of {limit} bytes.", "RESOURCE_EXHAUSTED")
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
        return int(status[:3]), [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers], content

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
