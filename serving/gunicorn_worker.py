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
- a drain on SIGTERM (gunicorn's graceful stop) that loses no request, described below.

Why the drain keeps listening: the master closes its copies of the listening sockets at once, but the kernel keeps
handing connections to the workers' copies until the last one is closed, and closing it resets every connection still
in its accept queue (the client has connected and sent its request: a lost request, not a refusal). So each worker
keeps accepting and answers every new request 503 with `Connection: close`, lets the admitted requests finish, and
closes its listeners and idle kept-alive connections only once the whole group has seen no new connection or request
for QUIET_SECONDS: clients told 503 have moved on by then, so nothing is left in the queue to reset.
A worker stopped while the master keeps its listeners (a reload, a restart after max_requests) needs none of this:
the master's copy keeps the queue for the other workers, so it stops accepting and lets its requests finish.
"""

from __future__ import annotations

import io
import json
import mmap
import os
import struct
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
SHUTDOWN_POLL_SECONDS = 0.1  # how soon the worker notices SIGTERM, and how often it checks the drain's progress
# The listeners close once the worker group has seen no new connection or request for this long while draining.
QUIET_SECONDS = 0.5
# Listeners close at the latest this long before graceful_timeout ends, whatever still arrives, so that the requests
# refused or admitted until then can finish; the requests still running FORCE_MARGIN_SECONDS before the end are cut
# (gunicorn's master kills the worker at graceful_timeout).
CLOSE_MARGIN_SECONDS = 3.0
# A stopping worker waits up to this long to see whether the master closes its listeners too (a whole-server stop,
# when SIGTERM reached the workers with the master, or first) or keeps them (a worker of a running server stops).
MASTER_CLOSE_WAIT_SECONDS = 1.0
FORCE_MARGIN_SECONDS = 1.5
SHUTTING_DOWN_MESSAGE = "The server is shutting down; retry on another server."
REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    408: "Request Timeout",
    413: "Content Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
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


class GroupClock:
    """The latest activity (a monotonic time) of a group of forked workers, in memory the forks share.

    Created in the master before it forks the workers (a MAP_SHARED anonymous mapping survives fork); CLOCK_MONOTONIC
    is the same clock in every process of the machine, so the workers' times compare.
    """

    def __init__(self) -> None:
        self._memory = mmap.mmap(-1, 8)
        self.mark(0.0)

    def mark(self, moment: float) -> None:
        """Record activity at moment (an aligned 8-byte store: no lock needed for a single timestamp)."""
        struct.pack_into("d", self._memory, 0, moment)

    def latest(self) -> float:
        """The latest moment any worker of the group marked."""
        return struct.unpack_from("d", self._memory, 0)[0]


class FlaskGeventWorker(GeventWorker):
    """gunicorn's gevent worker with read deadlines, a bounded body, JSON errors and a lossless stop."""

    body_limit: int | None = None
    body_timeout: float = DEFAULT_BODY_TIMEOUT_SECONDS
    # One clock for every worker a master forks: gunicorn builds each worker object in the master, before the fork.
    group_clock: GroupClock | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if FlaskGeventWorker.group_clock is None:
            FlaskGeventWorker.group_clock = GroupClock()
        self.draining = False
        # Greenlets of kept-alive connections waiting for their next request: the only ones the drain closes.
        self._idle: set = set()

    def _mark_activity(self) -> None:
        self.group_clock.mark(time.monotonic())

    def load_wsgi(self) -> None:
        """Load the app, then take the body limits from its configuration (FLASK_MAX_CONTENT_LENGTH, ...)."""
        super().load_wsgi()
        config: Any = getattr(self.wsgi, "config", {})
        self.body_limit = config.get("MAX_CONTENT_LENGTH")
        self.body_timeout = float(config.get("BODY_TIMEOUT_SECONDS") or DEFAULT_BODY_TIMEOUT_SECONDS)

    # ---- requests ----------------------------------------------------------------------------------------------

    def handle(self, listener, client, addr) -> None:
        """Serve one connection; its arrival counts as activity for the drain's quiet period."""
        self._mark_activity()
        try:
            super().handle(listener, client, addr)
        finally:
            self._idle.discard(gevent.getcurrent())

    def handle_request(self, listener_name, req, sock, addr) -> bool:
        """Read the whole body (deadline, limit) before the app sees the request; refuse it in JSON otherwise.

        While draining, every request is answered 503 with `Connection: close` once its body is read (closing with
        the body unread would reset the connection before the client reads the answer).
        """
        current = gevent.getcurrent()
        self._idle.discard(current)
        self._mark_activity()
        kept_alive = False
        try:
            try:
                self._buffer_body(req, sock)
            except BodyRefused as refusal:
                self.log.info("Refused a request body from %s: %s", addr[0] if addr else "?", refusal.message)
                self._answer_and_close(sock, refusal.status, refusal.message)
                raise StopIteration() from None
            if self.draining:
                self._answer_and_close(sock, 503, SHUTTING_DOWN_MESSAGE)
                raise StopIteration()
            # gunicorn's gevent worker returns None where its base returns True: a request that returns (rather than
            # raising StopIteration) leaves its connection open for the next one.
            super().handle_request(listener_name, req, sock, addr)
            kept_alive = True
            return True
        finally:
            if kept_alive:
                self._idle.add(current)

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
            raise BodyRefused(408, f"The request body did not arrive within {self.body_timeout:g} seconds.") from None
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
        if isinstance(exc, gevent.GreenletExit):
            return  # an idle connection closed by the drain: nothing was asked, nothing to answer
        status, message = describe_parse_error(exc)
        if status == 500:
            self.log.exception("Error handling request")
        else:
            self.log.info("Invalid request from %s: %s", addr[0] if addr else "?", exc)
        self._answer_and_close(client, status, message)

    # ---- the serving loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM, then drain: refuse new requests (503) until the group is quiet, close, finish."""
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
        self._drain(servers)

    def _drain(self, servers: list[StreamServer]) -> None:
        """Stop serving within graceful_timeout without resetting a connection: drain when the whole server stops."""
        began = time.monotonic()
        grace = float(self.cfg.graceful_timeout)
        close_by = began + max(grace - CLOSE_MARGIN_SECONDS, 0.0)
        force_at = began + max(grace - FORCE_MARGIN_SECONDS, 0.0)
        for server in servers:
            server.stop_accepting()  # while the master holds the listeners, the other workers take the connections
        whole_server_stops = not self._master_holds_listeners(servers)
        while not whole_server_stops and time.monotonic() < began + MASTER_CLOSE_WAIT_SECONDS:
            self.notify()
            gevent.sleep(SHUTDOWN_POLL_SECONDS)
            whole_server_stops = not self._master_holds_listeners(servers)
        if whole_server_stops:
            self._refuse_until_quiet(servers, began, close_by)
        for server in servers:
            self._accept_queued(server)
            server.close()
        if whole_server_stops:
            # Kept-alive connections waiting for a next request: no client is sending (the group is quiet), so
            # closing them now resets nothing. Requests in progress, and connections whose first request has yet to
            # arrive (those accepted from the queue just now among them), keep running: the head deadline bounds them.
            for greenlet in list(self._idle):
                greenlet.kill(block=False)
        while any(len(server.pool) for server in servers) and time.monotonic() < force_at:
            self.notify()
            gevent.sleep(SHUTDOWN_POLL_SECONDS)
        if any(len(server.pool) for server in servers):
            self.log.warning("Worker graceful timeout (pid:%s): closing the remaining connections.", self.pid)
            for server in servers:
                server.stop(timeout=1)

    def _refuse_until_quiet(self, servers: list[StreamServer], began: float, close_by: float) -> None:
        """Accept again and answer every request 503 until the group has been quiet for QUIET_SECONDS (or close_by)."""
        self.draining = True
        self._mark_activity()
        for server in servers:
            server.start_accepting()
        self.log.info("Draining (pid:%s): new requests are answered 503 until none arrives.", self.pid)
        while True:
            now = time.monotonic()
            quiet_at = max(self.group_clock.latest(), began) + QUIET_SECONDS
            if now >= quiet_at or now >= close_by:
                return
            self.notify()
            gevent.sleep(min(quiet_at - now, SHUTDOWN_POLL_SECONDS))

    def _master_holds_listeners(self, servers: list[StreamServer]) -> bool:
        """Whether the master still has a listening socket open (Linux's /proc; False when that cannot be told)."""
        names = {f"socket:[{os.fstat(server.socket.fileno()).st_ino}]" for server in servers}
        folder = f"/proc/{self.ppid}/fd"
        try:
            descriptors = os.listdir(folder)
        except OSError:
            return False  # the drain is the safe side
        for descriptor in descriptors:
            try:
                if os.readlink(os.path.join(folder, descriptor)) in names:
                    return True
            except OSError:
                continue
        return False

    def _accept_queued(self, server: StreamServer) -> None:
        """Accept every connection the kernel has queued before the listener closes (closing would reset them)."""
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
