"""The robustness checks, each returning counts: shared by the tests (which assert on them) and the probe (which prints them).

Every check talks to servers the runtime started (serving.runtime); none starts or stops a server except the
SIGTERM check, which signals the one it is given.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from serving.runtime import ServerProcess
from tests.robustness import bodies, wire
from tests.robustness.targets import MEBIBYTE, RestTarget

VALID_ANSWER_TIMEOUT_S = 1.0  # what "a valid request is still answered" means under slow and idle clients


def valid_request(target: RestTarget, images: int = 1) -> bytes:
    """A well-formed predict request for the target."""
    headers = {"Content-Type": "application/json", **target.headers()}
    return wire.request_bytes("POST", target.predict_path(), target.host, bodies.valid_body(images), headers)


def predictions_problem(answer: wire.Answer, images: int = 1) -> str | None:
    """None when the answer is 200 with `images` predictions; else what is wrong."""
    if answer.outcome != wire.ANSWERED:
        return f"{answer.outcome} after {answer.seconds:.1f} s {answer.detail}".strip()
    if answer.status != 200:
        return f"HTTP {answer.status}: {answer.body[:160]!r}"
    try:
        document = answer.json()
    except (ValueError, UnicodeDecodeError):
        return f"200 with a body that is not JSON: {answer.body[:80]!r}"
    predictions = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(predictions, list) or len(predictions) != images:
        return f"200 without {images} predictions: {answer.body[:160]!r}"
    return None


def ask_valid(target: RestTarget, timeout: float = 10.0) -> str | None:
    """Send one valid request; None when it was answered with its prediction, else what went wrong."""
    return predictions_problem(wire.exchange(target.host, target.port, valid_request(target), timeout))


def grouped(failures: list[str], limit: int = 30) -> list[str]:
    """The distinct lines of failures, most frequent first, each with how often it happened."""
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure] = counts.get(failure, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return [f"{count:3d}x {failure}" for failure, count in ranked[:limit]]


# -- malformed bodies ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BodyReport:
    """How a server answered a list of malformed requests."""

    sent: int = 0
    answered_4xx: int = 0
    server_errors: int = 0  # 5xx
    hangs: int = 0
    silent_cuts: int = 0  # a 1xx/2xx/3xx answer to a request that is wrong
    no_answer: int = 0  # closed or reset without an HTTP answer
    bad_error_bodies: int = 0  # a 4xx whose body is not one JSON sentence
    wrong_status: int = 0  # a 4xx other than the one required (413 for a body over the limit)
    valid_after: str | None = None  # what went wrong with a valid request afterwards (None: it was answered)
    failures: list[str] = dataclasses.field(default_factory=list)

    def summary(self, limit: int = 30) -> list[str]:
        """The distinct failures, most frequent first, each with how often it happened."""
        return grouped(self.failures, limit)

    @property
    def failed(self) -> int:
        """Malformed requests that did not get a proper 4xx."""
        return self.sent - self.answered_4xx

    def add(self, case: bodies.Case, answer: wire.Answer, torchserve_format: bool) -> None:
        """Count one answer."""
        self.sent += 1
        label = f"[{case.category}] {case.description}"
        if answer.outcome == wire.HANG:
            self.hangs += 1
            self.failures.append(f"{label}: hang ({answer.seconds:.1f} s)")
        elif answer.outcome != wire.ANSWERED:
            self.no_answer += 1
            self.failures.append(f"{label}: {answer.outcome} {answer.detail}")
        elif answer.status >= 500:
            self.server_errors += 1
            self.failures.append(f"{label}: HTTP {answer.status} {answer.body[:120]!r}")
        elif answer.status < 400:
            self.silent_cuts += 1
            self.failures.append(f"{label}: HTTP {answer.status} for a malformed request {answer.body[:80]!r}")
        elif case.expected_status is not None and answer.status != case.expected_status:
            self.wrong_status += 1
            self.failures.append(f"{label}: HTTP {answer.status}, expected {case.expected_status}")
        elif (problem := wire.error_problem(answer, torchserve_format)) is not None:
            self.bad_error_bodies += 1
            self.failures.append(f"{label}: HTTP {answer.status}, {problem}")
        else:
            self.answered_4xx += 1


def send_malformed(
    target: RestTarget, cases: list[bodies.Case], timeout: float = wire.DEFAULT_ANSWER_TIMEOUT_S
) -> BodyReport:
    """Send each case that applies to the target on its own connection; then check a valid request is answered."""
    report = BodyReport()
    for case in cases:
        data = case.request(target)
        if data is None:
            continue
        report.add(case, wire.exchange(target.host, target.port, data, timeout), target.torchserve)
    report.valid_after = ask_valid(target)
    return report


def over_limit_chunked(target: RestTarget, timeout: float = 30.0) -> wire.Answer:
    """A valid request padded with spaces to 1 MiB past the body limit, sent chunked (no Content-Length).

    Only a 413 is right: a server that cuts the body at its limit sees valid JSON followed by spaces and answers 200.
    """
    headers = {"Content-Type": "application/json", **target.headers()}
    head = wire.request_bytes("POST", target.predict_path(), target.host, None, headers)
    head = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
    body = bodies.valid_body()
    padding = b" " * MEBIBYTE
    total_padding = target.body_limit + MEBIBYTE - len(body)

    def pieces():
        yield head + f"{len(body):x}\r\n".encode() + body + b"\r\n"
        left = total_padding
        while left > 0:
            piece = padding[: min(left, len(padding))]
            left -= len(piece)
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    return wire.exchange(target.host, target.port, pieces(), timeout)


# -- poisoned batches ---------------------------------------------------------------------------------------------

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
    work = [item for pair in zip(valid_work, poison_work) for item in pair] + valid_work[paired:] + poison_work[paired:]
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


# -- SIGTERM under load -------------------------------------------------------------------------------------------


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

        stub_request, call = _grpc_predict(grpc_address, model_name)
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


def _grpc_predict(address: str, model_name: str):
    """(a one-image PredictRequest, the bound Predict call with its channel attached) for the TF server."""
    import grpc
    import numpy as np
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    from serving.protocol.tensors import array_to_tensor

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = "serving_default"
    request.inputs["images"].CopyFrom(array_to_tensor(np.ones((1, 8, 8), np.float32)))
    channel = grpc.insecure_channel(address)
    call = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
    call.channel = channel  # type: ignore[attr-defined]
    return request, call


# -- gRPC shape cases ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class GrpcCaseResult:
    """One malformed Predict: its answer's code, how long it took, and how much the server's memory grew."""

    name: str
    code: str
    seconds: float
    details: str
    memory_growth_bytes: int = 0


GRPC_SHAPE_CASES = (
    "shape [2^20, 8, 8] with one float_val",
    "shape of 2^40 elements with one float_val",
    "shape of 2^40 elements, no values",
    "shape [1, 8, 8] with 3 float_vals",
    "tensor_content of 10 bytes for [1, 8, 8]",
    "tensor_content of 256 floats for [1, 8, 8]",
    "tensor_content for shape [2^20, 8, 8]",
    "negative dimension",
)


def _shape_tensors() -> dict:
    """GRPC_SHAPE_CASES' tensors: declared shape and values (or tensor_content) that disagree."""
    from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

    def tensor(shape: list[int], float_values: list[float] | None = None, content: bytes | None = None):
        proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT)
        proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape]))  # fmt: skip
        if float_values is not None:
            proto.float_val.extend(float_values)
        if content is not None:
            proto.tensor_content = content
        return proto

    tensors = [
        tensor([1 << 20, 8, 8], [1.0]),
        tensor([1 << 34, 8, 8], [1.0]),
        tensor([1 << 34, 8, 8]),
        tensor([1, 8, 8], [1.0, 2.0, 3.0]),
        tensor([1, 8, 8], content=b"\x00" * 10),
        tensor([1, 8, 8], content=b"\x00" * 1024),
        tensor([1 << 20, 8, 8], content=b"\x00" * 256),
        tensor([-5, 8, 8], [1.0]),
    ]
    return dict(zip(GRPC_SHAPE_CASES, tensors))


def grpc_shape_cases(address: str, server: ServerProcess | None = None, model_name: str = "digits") -> list[GrpcCaseResult]:
    """Predicts whose declared shape and values disagree; each must be INVALID_ARGUMENT, quickly, allocating nothing."""
    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    results = []
    with grpc.insecure_channel(address) as channel:
        predict = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict
        for name, proto in _shape_tensors().items():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = model_name
            request.inputs["images"].CopyFrom(proto)
            memory_before = _tree_memory(server)
            began = time.monotonic()
            try:
                predict(request, timeout=30)
                code, details = "OK", ""
            except grpc.RpcError as error:
                code, details = error.code().name, error.details() or ""
            seconds = time.monotonic() - began
            growth = _tree_memory(server) - memory_before if server is not None else 0
            results.append(GrpcCaseResult(name, code, seconds, details, growth))
    return results


def _tree_memory(server: ServerProcess | None) -> int:
    """Resident bytes of the server and every process under it (its workers)."""
    import psutil

    if server is None:
        return 0
    total = 0
    with contextlib.suppress(psutil.Error):
        for process in [server.leader, *server.leader.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
    return total


def grpc_valid_predict(address: str, model_name: str = "digits") -> str | None:
    """None when a valid one-image Predict succeeds over gRPC; else its code and details."""
    import grpc

    request, call = _grpc_predict(address, model_name)
    try:
        call(request, timeout=10)
        return None
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    finally:
        call.channel.close()  # type: ignore[attr-defined]


# -- corrupt newest version ---------------------------------------------------------------------------------------


def add_corrupt_tf_version(base_path: Path, good_version: int, corrupt_version: int) -> None:
    """A copy of a good SavedModel as corrupt_version, with saved_model.pb overwritten by garbage."""
    shutil.copytree(base_path / str(good_version), base_path / str(corrupt_version))
    (base_path / str(corrupt_version) / "saved_model.pb").write_bytes(b"\x00not a SavedModel\xff" * 64)


def add_corrupt_torch_version(base_path: Path, good_version: int, corrupt_version: int) -> None:
    """A copy of a good TorchScript export as corrupt_version, with model.pt overwritten by garbage."""
    shutil.copytree(base_path / str(good_version), base_path / str(corrupt_version))
    (base_path / str(corrupt_version) / "model.pt").write_bytes(b"PK\x03\x04 not a TorchScript archive" * 64)


def add_corrupt_archive(model_store: Path, model_name: str, corrupt_version: int) -> None:
    """A corrupt <model>-<version>.mar, also installed as <model>.mar, as a training run that wrote garbage would.

    The good archive of the previous version stays as <model>-<previous>.mar.
    """
    garbage = b"PK\x03\x04 not a model archive" * 256
    (model_store / f"{model_name}-{corrupt_version}.mar").write_bytes(garbage)
    (model_store / f"{model_name}.mar").write_bytes(garbage)


def wait_for_predictions(target: RestTarget, server: ServerProcess, timeout: float, settle: float) -> str | None:
    """Poll with valid requests until one succeeds (None) or the server gave no success for `settle` seconds after it
    first answered anything (or `timeout` in all, or it exited): then the last problem seen."""
    began = time.monotonic()
    first_answer = None
    problem = "no answer yet"
    while time.monotonic() - began < timeout:
        if not server.is_running():
            return f"the server exited (status {server.exit_status()}); last problem: {problem}"
        answer = wire.exchange(target.host, target.port, valid_request(target), timeout=10.0)
        problem = predictions_problem(answer)
        if problem is None:
            return None
        if answer.outcome == wire.ANSWERED and first_answer is None:
            first_answer = time.monotonic()
        if first_answer is not None and time.monotonic() - first_answer > settle:
            return problem
        time.sleep(0.5)
    return f"nothing served within {timeout:.0f} s; last problem: {problem}"


def versions_in_status(target: RestTarget) -> dict[str, dict]:
    """TensorFlow Serving's status of every version (version → its entry), from the REST status route."""
    path = target.status_path()
    answer = wire.exchange(target.host, target.port, wire.request_bytes("GET", path, target.host), 10.0)
    if answer.outcome != wire.ANSWERED or answer.status != 200:
        return {}
    try:
        entries = answer.json().get("model_version_status", [])
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    return {str(entry.get("version")): entry for entry in entries if isinstance(entry, dict)}
