"""Load with hostile company: valid requests beside poisoned ones (a batching server mixes them), and valid requests
while idle connections and slow senders hold the server."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import socket
import threading
import time

from tests.robustness import wire
from tests.robustness.checks import VALID_ANSWER_TIMEOUT_S, predictions_problem, valid_request
from tests.robustness.targets import RestTarget

POISON = (
    b'{"instances": ' + b"[" * 10_000 + b"1" + b"]" * 10_000 + b"}",
    b'{"instances": [[[' + b"9" * 5_000 + b"]]]}",
    json.dumps({"instances": [[[1.0] * 7] * 8]}).encode(),
)


@dataclasses.dataclass
class BatchReport:
    """Valid requests sent among poisoned ones, and how each kind was answered."""

    valid_sent: int = 0
    valid_failed: int = 0
    poison_sent: int = 0
    poison_not_4xx: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def poisoned_batch(target: RestTarget, valid: int = 120, poison: int = 60, threads: int = 24) -> BatchReport:
    """Valid and malformed requests at once, so a batching server mixes them: every valid one must succeed."""
    headers = {"Content-Type": "application/json", **target.headers()}
    poison_requests = [
        wire.request_bytes("POST", target.predict_path(), target.host, POISON[index % len(POISON)], headers)
        for index in range(poison)
    ]
    valid_work = [("valid", valid_request(target))] * valid
    poison_work = [("poison", data) for data in poison_requests]
    # Interleaved so poison arrives throughout, not in one lump at the end.
    paired = min(valid, poison)
    work = (
        [item for pair in zip(valid_work, poison_work, strict=False) for item in pair]
        + valid_work[paired:]
        + poison_work[paired:]
    )
    report = BatchReport()
    lock = threading.Lock()

    def send(item: tuple[str, bytes]) -> None:
        kind, data = item
        answer = wire.exchange(target.host, target.port, data, 30.0)
        with lock:
            if kind == "valid":
                report.valid_sent += 1
                problem = predictions_problem(answer)
                if problem is not None:
                    report.valid_failed += 1
                    report.failures.append(f"valid request: {problem}")
            else:
                report.poison_sent += 1
                if answer.outcome != wire.ANSWERED or not 400 <= answer.status < 500:
                    report.poison_not_4xx += 1
                    report.failures.append(f"poisoned request: {answer.outcome} {answer.status} {answer.body[:80]!r}")

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, work))
    return report


# -- slow and idle clients ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class SlowClientReport:
    """Valid requests sent while idle connections and slow senders held the server."""

    idle_opened: int = 0
    slow_opened: int = 0
    probes: int = 0
    stalled: int = 0  # valid requests not answered 200 within VALID_ANSWER_TIMEOUT_S
    slowest_seconds: float = 0.0
    failures: list[str] = dataclasses.field(default_factory=list)


def slow_and_idle_clients(
    target: RestTarget, idle: int = 200, slow: int = 64, hold_seconds: float = 6.0, probe_every_seconds: float = 1.0
) -> SlowClientReport:
    """Open idle connections and slow senders, and time valid requests meanwhile.

    The slow senders take turns among three kinds, each sending one byte a second: headers that never end, a body
    under a Content-Length, and a chunked body of one-byte chunks.
    """
    report = SlowClientReport()
    sockets: list[socket.socket] = []
    dripping: list[tuple[socket.socket, bytes]] = []  # (connection, what it sends each second)
    stop = threading.Event()
    headers = {"Content-Type": "application/json", **target.headers()}
    head = wire.request_bytes("POST", target.predict_path(), target.host, None, headers)
    kinds = (
        (head[: head.index(b"\r\n") + 2], b"X"),  # the request line, then a header a byte at a time
        (head.replace(b"\r\n\r\n", b"\r\nContent-Length: 4096\r\n\r\n{", 1), b" "),
        (head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n1\r\n{\r\n", 1), b"1\r\n \r\n"),
    )

    def drip() -> None:
        # One piece a second on every slow connection; a connection the server closed is simply dropped.
        while not stop.wait(1.0):
            for entry in list(dripping):
                try:
                    entry[0].send(entry[1])
                except OSError:
                    dripping.remove(entry)

    try:
        for _ in range(idle):
            with contextlib.suppress(OSError):
                sockets.append(socket.create_connection((target.host, target.port), timeout=5))
                report.idle_opened += 1
        for index in range(slow):
            start, piece = kinds[index % len(kinds)]
            with contextlib.suppress(OSError):
                sock = socket.create_connection((target.host, target.port), timeout=5)
                sockets.append(sock)
                sock.sendall(start)
                dripping.append((sock, piece))
                report.slow_opened += 1
        dripper = threading.Thread(target=drip, daemon=True)
        dripper.start()
        deadline = time.monotonic() + hold_seconds
        time.sleep(min(1.5, hold_seconds / 2))  # let the slow senders settle on the server's threads first
        while time.monotonic() < deadline:
            began = time.monotonic()
            answer = wire.exchange(target.host, target.port, valid_request(target), timeout=5.0)
            problem = predictions_problem(answer)
            report.probes += 1
            report.slowest_seconds = max(report.slowest_seconds, answer.seconds)
            if problem is not None or answer.seconds > VALID_ANSWER_TIMEOUT_S:
                report.stalled += 1
                report.failures.append(problem or f"answered after {answer.seconds:.2f} s")
            time.sleep(max(0.0, probe_every_seconds - (time.monotonic() - began)))
    finally:
        stop.set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
    return report
