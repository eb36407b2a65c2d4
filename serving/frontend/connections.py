"""The REST port's connections: what a client can do to them before any route runs, and how each is refused.

uvicorn's httptools protocol, extended (GuardedProtocol) with read deadlines for headers and bodies, a limit on
header bytes, an idle timer from the moment a connection opens, a chunk-size check against the body limit, a cap on
open connections that closes the longest-idle one first, and JSON answers ({"error": "..."}) for every refusal
uvicorn alone would answer in plain text. serving.frontend.http runs it; the module docstring there lists
what each refusal is.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import resource
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from serving.protocol.rest import dumps

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
    metrics: Any = None  # with exposition() and record(...), e.g. serving.tfserving.monitoring.ServerMetrics
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
    content = dumps({"error": message}).encode()
    head = STATUS_LINE[status] + b"content-type: application/json\r\nconnection: close\r\n"
    return head + b"content-length: " + str(len(content)).encode() + b"\r\n\r\n" + content


class ConnectionGuard:
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

    def __init__(self, protocol: GuardedProtocol) -> None:
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

    def __init__(self, *args: Any, guard: ConnectionGuard, **kwargs: Any) -> None:
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
