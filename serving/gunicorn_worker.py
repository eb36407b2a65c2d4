"""The gunicorn worker the Flask app runs in: gevent, with read deadlines, a bounded body and JSON for its own errors.

Why gevent: gunicorn's thread worker gives each connection a thread while it reads, so a few hundred idle or slow
clients take every thread and valid requests wait (200 idle connections stalled 2 workers x 4 threads completely).
Under gevent a connection is a greenlet of a few kilobytes: idle ones and slow senders only wait on the event loop,
up to `worker_connections` per worker, and the deadlines below close them. The prediction itself is short CPU work
(about a millisecond per image) that runs without yielding; TorchScript inference is unaffected by gevent's
monkey-patching (torch's own thread pool is native and pinned to one thread per worker in gunicorn_conf.py).

What this worker adds to gunicorn's gevent worker:
- the request head (line and headers) must arrive within `keepalive` seconds of the connection opening or of the
  previous answer, else the connection is closed without an answer (gunicorn's gevent keep-alive timeout);
- the body is read in full before the app runs, within the app's BODY_TIMEOUT_SECONDS (408 after that) and up to its
  MAX_CONTENT_LENGTH, for chunked bodies too (413 as soon as the limit is passed or a chunk declares more);
- gunicorn's own refusals (bad request line, bad chunk framing, headers too large, ...) are one JSON sentence with a
  4xx status instead of an HTML page;
- on SIGTERM the connections already waiting in the listen queue are accepted and answered before the listening
  socket closes, so closing it resets none of them; requests in flight finish within graceful_timeout.
"""

from __future__ import annotations

import io
import json
import time
from functools import partial
from ssl import SSLError
from typing import Any

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.http import errors
from gunicorn.http.body import Body, ChunkedReader
from gunicorn.workers.ggevent import GeventWorker

DEFAULT_BODY_TIMEOUT_SECONDS = 10.0
SHUTDOWN_POLL_SECONDS = 0.1  # how soon the worker notices SIGTERM and stops listening
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
}


class BodyRefused(Exception):
    """A request body the worker will not pass on: the HTTP status and the sentence to answer with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyDeadline(Exception):
    """Raised by gevent.Timeout when a body has not arrived in time."""


class _BytesReader:
    """A body already read: what gunicorn's Body reads from instead of the socket."""

    def __init__(self, data: bytes) -> None:
        self._stream = io.BytesIO(data)

    def read(self, size: int) -> bytes:
        return self._stream.read(size)


def describe_parse_error(error: BaseException) -> tuple[int, str]:
    """The status and the sentence for one of gunicorn's request parsing errors (500 for anything else)."""
    if isinstance(error, (errors.InvalidResponseHeader, errors.InvalidResponseHeaderName)):
        return 500, "Internal server error; see the server log."  # a header the app wrote: not the client's fault
    if isinstance(error, errors.LimitRequestLine):
        return 414, "The request line is too long."
    if isinstance(error, errors.LimitRequestHeaders):
        return 431, "The request headers are too large or too many."
    if isinstance(error, (errors.InvalidChunkSize, errors.ChunkMissingTerminator, errors.InvalidChunkExtension)):
        return 400, "The chunked request body is malformed."
    if isinstance(error, errors.UnsupportedTransferCoding):
        # RFC 9112 suggests 501, but this is the client's mistake: send the body with Content-Length or chunked.
        return 400, "The request's Transfer-Encoding is not supported; send Content-Length or chunked."
    if isinstance(error, errors.ExpectationFailed):
        return 417, "The request's Expect header cannot be met; only 100-continue is supported."
    if isinstance(error, errors.ForbiddenProxyRequest):
        return 403, "Requests from this address may not use the PROXY protocol."
    if isinstance(error, errors.InvalidRequestMethod):
        return 400, "The request method is not valid."
    if isinstance(error, errors.InvalidHTTPVersion):
        return 400, "The request's HTTP version is not supported; use HTTP/1.0 or HTTP/1.1."
    if isinstance(error, (errors.InvalidHeader, errors.InvalidHeaderName, errors.ObsoleteFolding)):
        return 400, "A request header is malformed."
    if isinstance(error, (errors.ParseException, errors.NoMoreData, SSLError)):
        return 400, "The request is not valid HTTP/1.1."
    return 500, "Internal server error; see the server log."


def json_error(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying {"error": message}, closing the connection."""
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class FlaskGeventWorker(GeventWorker):
    """gunicorn's gevent worker with read deadlines, a bounded body, JSON errors and a lossless stop."""

    body_limit: int | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS

    def load_wsgi(self) -> None:
        """Load the app, then take the body limits from its configuration (FLASK_MAX_CONTENT_LENGTH, ...)."""
        super().load_wsgi()
        config: Any = getattr(self.wsgi, "config", {})
        self.body_limit = config.get("MAX_CONTENT_LENGTH")
        self.body_timeout = float(config.get("BODY_TIMEOUT_SECONDS") or DEFAULT_BODY_TIMEOUT_SECONDS)

    def patch(self) -> None:
        """Monkey-patch for gevent, then keep torch to one thread before the app imports it for real."""
        super().patch()
        import torch

        torch.set_num_threads(1)
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:
            pass  # only settable before torch's first parallel work

    # ---- requests ----------------------------------------------------------------------------------------------

    def handle_request(self, listener_name, req, sock, addr) -> bool:
        """Read the whole body (deadline, limit) before the app sees the request; refuse it in JSON otherwise."""
        try:
            self._buffer_body(req, sock)
        except BodyRefused as refusal:
            self.log.info("Refused a request body from %s: %s", addr[0] if addr else "?", refusal.message)
            self._answer_and_close(sock, refusal.status, refusal.message)
            raise StopIteration() from None
        return super().handle_request(listener_name, req, sock, addr)

    def _buffer_body(self, req, sock) -> None:
        """Replace req.body by its bytes, read within body_timeout seconds and up to body_limit bytes."""
        if req.body is None:
            return
        limit = self.body_limit
        declared = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), None)
        if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
            raise BodyRefused(413, self._too_large(limit))
        if getattr(req, "_expected_100_continue", False):
            # The client waits for this before sending its body; gunicorn would send it only once the app runs.
            req._expected_100_continue = False
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        reader = getattr(req.body, "reader", None)
        if limit is not None and isinstance(reader, ChunkedReader):
            parse_chunk_size = reader.parse_chunk_size

            def bounded_chunk_size(unreader, data=None):
                # A chunk declaring more than the limit is refused before any of it is read.
                size, rest = parse_chunk_size(unreader, data)
                if size > limit:
                    raise BodyRefused(413, self._too_large(limit))
                return size, rest

            reader.parse_chunk_size = bounded_chunk_size
        pieces: list[bytes] = []
        total = 0
        try:
            with gevent.Timeout(self.body_timeout, BodyDeadline):
                while True:
                    piece = req.body.read(64 * 1024)
                    if not piece:
                        break
                    total += len(piece)
                    if limit is not None and total > limit:
                        raise BodyRefused(413, self._too_large(limit))
                    pieces.append(piece)
        except BodyDeadline:
            raise BodyRefused(
                408, f"The request body did not arrive within {self.body_timeout:g} seconds."
            ) from None
        except errors.NoMoreData:
            raise BodyRefused(400, "The request body ended before its declared length.") from None
        except errors.ParseException as error:
            raise BodyRefused(*describe_parse_error(error)) from None
        except ValueError:
            raise BodyRefused(400, "The request body could not be read.") from None
        req.body = Body(_BytesReader(b"".join(pieces)))

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"The request body is larger than this server's limit of {limit} bytes."

    def _answer_and_close(self, sock, status: int, message: str) -> None:
        """Send one JSON error and close after draining a little of what the client still sends (no reset)."""
        try:
            sock.sendall(json_error(status, message))
        except OSError:
            return
        util.close_graceful(sock)

    def handle_error(self, req, client, addr, exc) -> None:
        """gunicorn's own refusals as one JSON sentence (its default answers an HTML page)."""
        status, message = describe_parse_error(exc)
        if status == 500:
            self.log.exception("Error handling request")
        else:
            self.log.info("Invalid request from %s: %s", addr[0] if addr else "?", exc)
        self._answer_and_close(client, status, message)

    # ---- the serving loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM; then accept what is queued, close the listeners and let requests finish."""
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=Pool(self.worker_connections))
            if self.cfg.workers > 1:
                server.max_accept = 1  # take one connection per wake-up, so the workers share them
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            gevent.sleep(SHUTDOWN_POLL_SECONDS)

        for server in servers:
            self._accept_queued(server)
            server.close()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(len(server.pool) for server in servers) and time.monotonic() < deadline:
            self.notify()
            gevent.sleep(SHUTDOWN_POLL_SECONDS)
        if any(len(server.pool) for server in servers):
            self.log.warning("Worker graceful timeout (pid:%s): closing the remaining connections.", self.pid)
            for server in servers:
                server.stop(timeout=1)

    def _accept_queued(self, server: StreamServer) -> None:
        """Accept every connection the kernel has queued: closing the listener would reset them."""
        server.stop_accepting()
        listener = _ClosedListener(server.socket.getsockname())
        while True:
            try:
                accepted = server.do_read()  # None once the queue is empty (the listener never blocks)
            except OSError:
                return
            if not accepted:
                return
            client, address = accepted
            server.pool.spawn(self.handle, listener, client, address)


class _ClosedListener:
    """What gunicorn's handler asks of a listener (its address) once the listening socket itself is closed."""

    def __init__(self, name: Any) -> None:
        self._name = name

    def getsockname(self) -> Any:
        return self._name
