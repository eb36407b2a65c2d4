"""SIGTERM under load: clients keep sending over REST (and gRPC) while the server is told to stop, and every
request is counted as answered, refused cleanly or lost."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import threading
import time

from serving.runtime import ServerProcess
from tests.robustness import wire
from tests.robustness.checks import valid_request
from tests.robustness.grpc_cases import predict_call
from tests.robustness.targets import RestTarget


@dataclasses.dataclass
class SigtermReport:
    """Requests sent before and after SIGTERM, and how each ended."""

    answered_ok: int = 0
    answered_error: int = 0  # an HTTP answer other than 200 (a clean 503 while draining is one)
    server_errors_not_503: int = 0
    refused: int = 0  # connection refused, or gRPC UNAVAILABLE: the clean way to turn a request away
    lost: int = 0  # accepted, then reset, closed or left without an answer
    ok_before_signal: int = 0
    exit_seconds: float | None = None  # from SIGTERM to the server's exit (None: still running at the deadline)
    exit_status: int | None = None
    failures: list[str] = dataclasses.field(default_factory=list)


def sigterm_under_load(
    server: ServerProcess,
    target: RestTarget,
    grpc_address: str | None = None,
    model_name: str = "digits",
    clients: int = 8,
    load_seconds: float = 2.0,
    grace_seconds: float = 40.0,
) -> SigtermReport:
    """Load the server from REST (and gRPC) clients, send SIGTERM to its process group, and count every request.

    The process group gets the signal, as `make stop`, a terminal's Ctrl-C or a container runtime's stop deliver it
    to a server and its workers. Clients keep sending until the port refuses them for a second, so requests that
    arrive while the server drains are counted too.
    """
    report = SigtermReport()
    lock = threading.Lock()
    signalled = threading.Event()
    finished = threading.Event()
    request = valid_request(target)

    def record(outcome: str, detail: str = "") -> None:
        with lock:
            if outcome == "ok":
                report.answered_ok += 1
                if not signalled.is_set():
                    report.ok_before_signal += 1
            elif outcome == "refused":
                report.refused += 1
            elif outcome == "error":
                report.answered_error += 1
                if detail:
                    report.server_errors_not_503 += 1
                    report.failures.append(detail)
            else:
                report.lost += 1
                report.failures.append(detail)

    def turned_away(since: float | None) -> tuple[float, bool]:
        """(when the refusals began, whether to stop): a client stops after a second of clean refusals after the
        signal, as a load balancer stops sending to a server that says it is going away."""
        since = since or time.monotonic()
        time.sleep(0.05)
        return since, signalled.is_set() and time.monotonic() - since > 1.0

    def rest_client() -> None:
        refused_since = None
        while not finished.is_set():
            answer = wire.exchange(target.host, target.port, request, timeout=grace_seconds)
            if answer.outcome == wire.REFUSED:
                record("refused")
            elif answer.outcome != wire.ANSWERED:
                record("lost", f"REST {answer.outcome} {answer.detail} after {answer.seconds:.1f} s")
            elif answer.status == 200:
                record("ok")
            else:
                not_503 = answer.status >= 500 and answer.status != 503
                record("error", f"REST HTTP {answer.status} {answer.body[:80]!r}" if not_503 else "")
            if answer.outcome == wire.REFUSED or answer.status == 503:
                refused_since, stop = turned_away(refused_since)
                if stop:
                    return
            else:
                refused_since = None

    def grpc_client() -> None:
        import grpc

        stub_request, call = predict_call(grpc_address, model_name)
        refused_since = None
        try:
            while not finished.is_set():
                try:
                    call(stub_request, timeout=grace_seconds)
                    record("ok")
                    refused_since = None
                    continue
                except grpc.RpcError as error:
                    code, details = error.code(), error.details() or ""
                # UNAVAILABLE is how a server turns a call away (not listening, or draining); the same code for a
                # call whose connection broke while the server held it ("Socket closed") is a lost call.
                if code == grpc.StatusCode.UNAVAILABLE and not GRPC_BROKEN.search(details):
                    record("refused")
                    refused_since, stop = turned_away(refused_since)
                    if stop:
                        return
                else:
                    record("lost", f"gRPC {code.name}: {details[:160]}")
                    refused_since = None
        finally:
            call.channel.close()  # type: ignore[attr-defined]

    workers = [threading.Thread(target=rest_client, daemon=True) for _ in range(clients)]
    if grpc_address is not None:
        workers += [threading.Thread(target=grpc_client, daemon=True) for _ in range(max(1, clients // 2))]
    for worker in workers:
        worker.start()
    time.sleep(load_seconds)
    signalled.set()
    began = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    while time.monotonic() - began < grace_seconds and server.is_running():
        time.sleep(0.05)
    if not server.is_running():
        report.exit_seconds = time.monotonic() - began
        with contextlib.suppress(subprocess.TimeoutExpired):
            report.exit_status = server.wait(timeout=5)
    for worker in workers:
        worker.join(timeout=max(1.0, grace_seconds - (time.monotonic() - began)))
    finished.set()
    for worker in workers:
        worker.join(timeout=5)
    return report


GRPC_BROKEN = re.compile(r"socket closed|connection reset|broken pipe|stream removed|RST_STREAM|end of file|EOF", re.I)
