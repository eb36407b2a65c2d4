"""Raw HTTP over a socket: send exactly the bytes a case names, read whatever comes back, and say what happened.

The ordinary clients (requests, http.client) refuse to send broken framing and hide resets and timeouts behind
retries, so the robustness checks speak HTTP/1.1 themselves. Every exchange uses a fresh connection and a deadline
for the whole answer, so a server that never answers shows up as a hang, never as a stuck test.
"""

from __future__ import annotations

import dataclasses
import errno
import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterable

DEFAULT_ANSWER_TIMEOUT_S = 5.0  # a malformed request is refused at once; this long is a hang

# What an exchange can end as.
ANSWERED = "answered"  # a complete HTTP answer arrived
HANG = "hang"  # no complete answer before the deadline
REFUSED = "refused"  # the connection was refused (nothing listening): a clean refusal
NO_ANSWER = "no answer"  # the connection was accepted, then closed or reset without an HTTP answer

# Error bodies: one sentence, never a traceback, a file path or an exception's class name.
MAX_SENTENCE_CHARS = 500  # room for a quoted value, cut to a readable length
LEAKS = re.compile(r"Traceback|File \"|\.py\b|^\w+(Error|Exception)\b|<html", re.IGNORECASE)


@dataclasses.dataclass
class Answer:
    """How one exchange ended; status, headers and body when an HTTP answer arrived."""

    outcome: str
    status: int | None = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    body: bytes = b""
    seconds: float = 0.0
    detail: str = ""

    def json(self) -> object:
        """The body as JSON (ValueError when it is not)."""
        return json.loads(self.body.decode("utf-8"))


def request_bytes(
    method: str,
    path: str,
    host: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    chunked: bool = False,
) -> bytes:
    """An HTTP/1.1 request with Connection: close; a body gets Content-Length (or chunked framing in one chunk)."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    payload = b""
    if body is not None:
        if chunked:
            lines.append("Transfer-Encoding: chunked")
            payload = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else b"0\r\n\r\n"
        else:
            lines.append(f"Content-Length: {len(body)}")
            payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def exchange(
    host: str,
    port: int,
    data: bytes | Iterable[bytes],
    timeout: float = DEFAULT_ANSWER_TIMEOUT_S,
    pause_s: float = 0.0,
) -> Answer:
    """Send data (bytes, or pieces with pause_s between them) on a new connection; read one answer within timeout.

    A sender thread writes while this thread reads, so a server that answers early (a 413 before the whole body
    arrived) is seen answering, not as a broken pipe.
    """
    began = time.monotonic()
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Answer(REFUSED, seconds=time.monotonic() - began)
    except OSError as error:
        if error.errno == errno.ECONNREFUSED:
            return Answer(REFUSED, seconds=time.monotonic() - began)
        return Answer(NO_ANSWER, seconds=time.monotonic() - began, detail=f"connect: {error}")
    pieces = [data] if isinstance(data, (bytes, bytearray)) else data
    stop_sending = threading.Event()
    send_error: list[str] = []

    def send() -> None:
        try:
            for index, piece in enumerate(pieces):
                if stop_sending.is_set():
                    return
                if index and pause_s and stop_sending.wait(pause_s):
                    return
                sock.sendall(piece)
        except OSError as error:
            send_error.append(type(error).__name__)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    try:
        return _read_answer(sock, began, timeout, send_error)
    finally:
        stop_sending.set()
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
        sender.join(timeout=5)


def _read_answer(sock: socket.socket, began: float, timeout: float, send_error: list[str]) -> Answer:
    deadline = began + timeout

    class _DeadlineSocket:
        """makefile() for http.client, with the remaining time as the timeout of every read."""

        def makefile(self, mode: str):
            return _DeadlineReader(sock, deadline)

    response = http.client.HTTPResponse(_DeadlineSocket())  # type: ignore[arg-type]
    try:
        response.begin()
        body = response.read()
    except TimeoutError:
        return Answer(HANG, seconds=time.monotonic() - began, detail="no complete answer in time")
    except (
        http.client.RemoteDisconnected,
        http.client.IncompleteRead,
        ConnectionError,
        http.client.BadStatusLine,
    ) as error:
        detail = type(error).__name__ + (f" (while sending: {send_error[0]})" if send_error else "")
        return Answer(NO_ANSWER, seconds=time.monotonic() - began, detail=detail)
    except (http.client.HTTPException, OSError) as error:
        return Answer(NO_ANSWER, seconds=time.monotonic() - began, detail=f"{type(error).__name__}: {error}")
    headers = {name.lower(): value for name, value in response.getheaders()}
    return Answer(ANSWERED, response.status, headers, body, time.monotonic() - began)


class _DeadlineReader:
    """A buffered reader over a socket whose every read gives up at one deadline for the whole answer."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.buffer = bytearray()
        self.closed = False

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("deadline")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            return False
        self.buffer += chunk
        return True

    def readline(self, limit: int = -1) -> bytes:
        while b"\n" not in self.buffer and (limit < 0 or len(self.buffer) < limit):
            if not self._fill():
                break
        end = self.buffer.find(b"\n") + 1 or len(self.buffer)
        if limit >= 0:
            end = min(end, limit)
        line = bytes(self.buffer[:end])
        del self.buffer[:end]
        return line

    def read(self, amount: int | None = None) -> bytes:
        if amount is None or amount < 0:
            while self._fill():
                pass
            data = bytes(self.buffer)
            self.buffer.clear()
            return data
        while len(self.buffer) < amount:
            if not self._fill():
                break
        data = bytes(self.buffer[:amount])
        del self.buffer[:amount]
        return data

    def readinto(self, target) -> int:
        data = self.read(len(target))
        target[: len(data)] = data
        return len(data)

    def read1(self, amount: int = -1) -> bytes:
        if not self.buffer:
            self._fill()
        amount = len(self.buffer) if amount < 0 else min(amount, len(self.buffer))
        data = bytes(self.buffer[:amount])
        del self.buffer[:amount]
        return data

    def peek(self, amount: int = 0) -> bytes:
        if not self.buffer:
            self._fill()
        return bytes(self.buffer)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def error_problem(answer: Answer, torchserve_format: bool = False) -> str | None:
    """None when the body is a JSON error of one sentence; else what is wrong with it.

    The project's format is {"error": "<sentence>"}; with torchserve_format, TorchServe's own
    {"code": <int>, "type": <str>, "message": "<sentence>"} is accepted too.
    """
    try:
        document = answer.json()
    except (ValueError, UnicodeDecodeError):
        return f"body is not JSON: {answer.body[:80]!r}"
    if not isinstance(document, dict):
        return f"body is not a JSON object: {answer.body[:80]!r}"
    if isinstance(document.get("error"), str):
        sentence = document["error"]
    elif torchserve_format and isinstance(document.get("message"), str) and isinstance(document.get("code"), int):
        sentence = document["message"]
    else:
        return f"no error sentence in {answer.body[:120]!r}"
    if not sentence.strip():
        return "empty error sentence"
    if "\n" in sentence.strip() or len(sentence) > MAX_SENTENCE_CHARS:
        return f"error is not one sentence: {sentence[:120]!r}"
    if LEAKS.search(sentence):
        return f"error leaks internals: {sentence[:120]!r}"
    return None
