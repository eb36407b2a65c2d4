"""What make test-containers checks against the running stack, besides the integration suite.

- a new version trained while the containers run reaches every server;
- stopping the stack under load loses no request a server accepted;
- after `down`, nothing of the stack is left.

HTTP goes through http.client and one fresh connection per request, so that each failure can be told apart at the
TCP level (see send_rest); gRPC uses TensorFlow Serving's official stubs.
"""

from __future__ import annotations

import collections
import dataclasses
import http.client
import json
import threading
import time
from collections.abc import Callable

import numpy as np

OK = "ok"
REFUSED = "refused"
LOST = "lost"
MODEL_NAME = "digits"


# ---- one request, one outcome ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """How one request ended: ok (right answer), refused (never accepted, or 503/UNAVAILABLE) or lost."""

    kind: str
    detail: str = ""


def send_rest(host: str, port: int, path: str, body: bytes, expected_classes: list[int], timeout: float) -> Outcome:
    """POST body on a fresh connection and classify the result.

    Refused: the connection could not be made; or the server reset it with the request unread (a socket closed with
    unread data answers RST: a listener closed with connections still queued, or an idle keep-alive connection); or
    it answered 503. Lost: it closed the connection cleanly without an answer (it had read the request: a socket
    with nothing unread closes with FIN), did not answer in time, answered anything else, or answered wrongly.
    """
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        try:
            connection.connect()
        except OSError as error:
            return Outcome(REFUSED, f"connect: {(error.strerror or str(error) or error.__class__.__name__).lower()}")
        try:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", "Connection": "close"}
            )
            response = connection.getresponse()
        except http.client.RemoteDisconnected:  # a ConnectionResetError subclass: it must be caught first
            return Outcome(LOST, "the server closed the connection without answering")
        except (ConnectionResetError, BrokenPipeError):
            return Outcome(REFUSED, "reset with the request unread")
        except TimeoutError:  # socket.timeout is TimeoutError
            return Outcome(LOST, f"no answer within {timeout:g} s")
        try:
            data = response.read()
        except (OSError, http.client.HTTPException) as error:
            return Outcome(LOST, f"answer cut off: {error.__class__.__name__}")
        if response.status == 503:
            return Outcome(REFUSED, "HTTP 503")
        if response.status != 200:
            return Outcome(LOST, f"HTTP {response.status}: {data[:160]!r}")
        return _check_classes(_classes_from_rest(data), expected_classes)
    finally:
        connection.close()


def _classes_from_rest(data: bytes) -> list[int] | None:
    """The classes of a TF Serving row-format answer ({"predictions": [{"classes": 3, ...}]}), None if malformed."""
    try:
        return [int(row["classes"]) for row in json.loads(data)["predictions"]]
    except (ValueError, KeyError, TypeError):
        return None


def _check_classes(classes: list[int] | None, expected: list[int]) -> Outcome:
    if classes != expected:
        return Outcome(LOST, f"wrong answer {classes} (expected {expected})")
    return Outcome(OK)


class GrpcPredictor:
    """TensorFlow Serving's PredictionService.Predict through the official stubs, one channel per instance."""

    def __init__(self, address: str, images: np.ndarray, timeout: float) -> None:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        self._grpc = grpc
        self._tf = tf
        self._channel = grpc.insecure_channel(address)
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._request = predict_pb2.PredictRequest()
        self._request.model_spec.name = MODEL_NAME
        self._request.model_spec.signature_name = "serving_default"
        self._request.inputs["images"].CopyFrom(tf.make_tensor_proto(images.astype(np.float32)))
        self._timeout = timeout

    def probabilities(self) -> np.ndarray:
        """Predict and return the probabilities (N, 10); raises grpc.RpcError."""
        response = self._stub.Predict(self._request, timeout=self._timeout)
        return self._tf.make_ndarray(response.outputs["probabilities"])

    def outcome(self, expected_classes: list[int]) -> Outcome:
        """One Predict, classified: UNAVAILABLE is a refusal (TF Serving's answer while not serving), else lost."""
        try:
            return _check_classes(self.probabilities().argmax(axis=1).tolist(), expected_classes)
        except self._grpc.RpcError as error:
            code = error.code()
            if code == self._grpc.StatusCode.UNAVAILABLE:
                return Outcome(REFUSED, "UNAVAILABLE")
            return Outcome(LOST, f"{code.name}: {error.details()}")

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


# ---- load while the stack stops -------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadTarget:
    """One endpoint under load: name, and a function that sends one request and returns its Outcome."""

    name: str
    send: Callable[[], Outcome]
    close: Callable[[], None] = lambda: None


@dataclasses.dataclass
class LoadResult:
    """Outcome counts per endpoint, before and after the stop began; how refusals looked; what was lost."""

    counts: dict[str, collections.Counter]
    refusals: dict[str, collections.Counter]
    examples: dict[str, list[str]]

    def lost(self) -> dict[str, int]:
        """Lost requests per endpoint (the figure that must be 0)."""
        return {
            name: counter[f"{LOST} before stop"] + counter[f"{LOST} after stop"]
            for name, counter in self.counts.items()
        }

    def table(self) -> str:
        """One line per endpoint: answered before the stop began, answered after, refused, lost; kinds of refusal."""
        lines = [f"{'endpoint':16} {'ok before':>9} {'ok after':>8} {'refused':>7} {'lost':>4}  refused as"]
        for name, counter in self.counts.items():
            kinds = ", ".join(f"{detail} ×{count}" for detail, count in self.refusals[name].most_common())
            refused = counter[f"{REFUSED} before stop"] + counter[f"{REFUSED} after stop"]
            lines.append(
                f"{name:16} {counter[f'{OK} before stop']:9d} {counter[f'{OK} after stop']:8d} "
                f"{refused:7d} {self.lost()[name]:4d}  {kinds}"
            )
        return "\n".join(lines)


def load_during(
    targets: list[tuple[LoadTarget, int]],
    action: Callable[[], None],
    warm_up_seconds: float = 2.0,
    give_up_after_refused_seconds: float = 3.0,
) -> LoadResult:
    """Send requests from `threads` threads per target; run action() once every target has answered; count outcomes.

    A thread stops when action() has returned, or once its endpoint has refused everything for a few seconds.
    """
    counts = {target.name: collections.Counter() for target, _ in targets}
    refusals = {target.name: collections.Counter() for target, _ in targets}
    examples: dict[str, list[str]] = {target.name: [] for target, _ in targets}
    lock = threading.Lock()
    stopping = threading.Event()
    done = threading.Event()

    def work(target: LoadTarget) -> None:
        refused_since = None
        while not done.is_set():
            phase = "after stop" if stopping.is_set() else "before stop"
            outcome = target.send()
            with lock:
                counts[target.name][f"{outcome.kind} {phase}"] += 1
                if outcome.kind == REFUSED:
                    refusals[target.name][outcome.detail] += 1
                if outcome.kind == LOST and len(examples[target.name]) < 5:
                    examples[target.name].append(outcome.detail)
            if outcome.kind == REFUSED and stopping.is_set():
                refused_since = refused_since or time.monotonic()
                if time.monotonic() - refused_since > give_up_after_refused_seconds:
                    return
                time.sleep(0.05)  # a refusing endpoint answers at once: do not spin
            else:
                refused_since = None

    threads = [
        threading.Thread(target=work, args=(target,), daemon=True) for target, count in targets for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with lock:
            if all(counts[name][f"{OK} before stop"] > 0 for name in counts):
                break
        time.sleep(0.1)
    time.sleep(warm_up_seconds)
    stopping.set()
    try:
        action()
    finally:
        done.set()
        for thread in threads:
            thread.join(60)
        for target, _ in targets:
            target.close()
    return LoadResult(counts, refusals, examples)


# ---- a new version --------------------------------------------------------------------------------------------


def get_json(url: str, timeout: float = 10.0) -> object:
    """GET url and return its JSON document; raises for an HTTP error."""
    import requests

    response = requests.get(url, timeout=timeout)
    response.raise_for_status()
    return response.json()


def rest_probabilities(url: str, images: np.ndarray, timeout: float = 10.0) -> np.ndarray:
    """POST the row-format body to url and return the answer's probabilities (N, 10)."""
    import requests

    response = requests.post(url, json={"instances": images.tolist()}, timeout=timeout)
    response.raise_for_status()
    return np.asarray([row["probabilities"] for row in response.json()["predictions"]], dtype=np.float32)


def wait_until_serving(
    name: str, probabilities: Callable[[], np.ndarray], expected: np.ndarray, timeout: float
) -> float:
    """Seconds until probabilities() equals expected (within 1e-5); AssertionError naming the server otherwise."""
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < timeout:
        try:
            last = probabilities()
            if np.allclose(last, expected, atol=1e-5):
                return time.monotonic() - started
        except Exception as error:  # noqa: BLE001 (any failure is retried until the deadline; the last is reported)
            last = error
        time.sleep(0.5)
    raise AssertionError(f"{name} did not serve the new version within {timeout:g} s; last answer: {last!r:.300}")
