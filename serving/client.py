"""Clients for every server in the project behind one interface, and `python -m serving.client` to query them.

TFServingGrpcClient speaks tensorflow.serving's gRPC API through the official stubs and works unchanged against
the real tensorflow/serving container and against `python -m serving.tfserving`. RestClient speaks TensorFlow
Serving's REST API, which the Flask app serves too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np

from experiment.errors import UsageError
from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES, SIGNATURE_NAME

DEFAULT_TIMEOUT_S = 10.0
# Large enough for a whole test split in one call; the default gRPC limit of 4 MiB is not.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ServingError(Exception):
    """The server answered with an error (message is one sentence, status its gRPC code or HTTP status)."""

    def __init__(self, message: str, status: str | int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailableError(ServingError):
    """The server could not be reached (not running, wrong address, or shutting down)."""


class PredictionClient(Protocol):
    """What every client offers, whichever server it talks to."""

    description: str

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (N, H, W) float32 → probabilities (N, C) float32, classes (N,) int64."""

    def get_metadata(self) -> dict:
        """The server's description of the model (signature, versions)."""

    def wait_until_available(self, timeout: float) -> None:
        """Block until the model answers; TimeoutError naming the server otherwise."""

    def close(self) -> None:
        """Release connections."""


def _as_batch(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images, dtype=np.float32)
    return images[np.newaxis] if images.ndim == 2 else np.ascontiguousarray(images)


def _poll_until_available(client: "TFServingGrpcClient | RestClient", timeout: float) -> None:
    """Poll client.get_status() until a version is AVAILABLE; TimeoutError naming the server otherwise."""
    deadline = time.monotonic() + timeout
    last_problem = "no answer yet"
    while True:
        try:
            if any(status.get("state") == "AVAILABLE" for status in client.get_status()):
                return
            last_problem = "no version is AVAILABLE yet"
        except ServingError as error:
            last_problem = str(error)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{client.description} did not have model '{client.model_name}' available within {timeout:g} s "
                f"({last_problem})."
            )
        time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))


class TFServingGrpcClient:
    """tensorflow.serving.PredictionService / ModelService over gRPC with the official stubs."""

    def __init__(
        self,
        address: str,
        model_name: str = "digits",
        signature_name: str = SIGNATURE_NAME,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        version: int | None = None,
    ) -> None:
        import grpc
        from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

        self.address = address
        self.model_name = model_name
        self.signature_name = signature_name
        self.timeout_s = timeout_s
        self.version = version
        self.description = f"TensorFlow Serving (gRPC) at {address}"
        self._channel = grpc.insecure_channel(
            address,
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ],
        )
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def _fill_model_spec(self, spec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version

    def predict_response(self, images: np.ndarray):
        """The raw PredictResponse (its model_spec says which version answered)."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2

        batch = _as_batch(images)  # (N, H, W)
        request = predict_pb2.PredictRequest()
        self._fill_model_spec(request.model_spec)
        request.model_spec.signature_name = self.signature_name
        tensor = request.inputs[INPUT_NAME]
        tensor.dtype = types_pb2.DT_FLOAT
        for size in batch.shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = batch.tobytes()  # raw bytes: no per-element float_val encoding
        return self._call(self._prediction.Predict, request)

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """images (N, H, W) → probabilities (N, C) float32, classes (N,) int64."""
        from serving.protocol.tensors import tensor_to_array

        response = self.predict_response(images)
        try:
            probabilities = tensor_to_array(response.outputs[PROBABILITIES], PROBABILITIES)
            classes = tensor_to_array(response.outputs[CLASSES], CLASSES)
        except Exception as error:  # a response without the outputs DESIGN.md promises
            raise ServingError(f"{self.description} answered without usable outputs: {error}") from None
        return probabilities.astype(np.float32, copy=False), classes.astype(np.int64, copy=False)

    def get_metadata(self) -> dict:
        """GetModelMetadata(signature_def) as a dict, as the REST metadata route shows it."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_model_spec(request.model_spec)
        response = self._call(self._prediction.GetModelMetadata, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True)

    def get_status(self) -> list[dict]:
        """GetModelStatus: one dict per version (version, state, status)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_model_spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        return json_format.MessageToDict(response, preserving_proto_field_name=True).get("model_version_status", [])

    def wait_until_available(self, timeout: float) -> None:
        """Poll GetModelStatus until a version is AVAILABLE."""
        _poll_until_available(self, timeout)

    def _call(self, method, request):
        import grpc

        try:
            return method(request, timeout=self.timeout_s)  # a deadline on every call
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or "no details"
            if code == grpc.StatusCode.UNAVAILABLE:
                raise ServerUnavailableError(f"Cannot reach {self.description}: {details}.", code.name) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServerUnavailableError(
                    f"{self.description} did not answer within {self.timeout_s:g} s.", code.name
                ) from None
            raise ServingError(f"{self.description} refused the request ({code.name}): {details}", code.name) from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


class RestClient:
    """TensorFlow Serving's REST API (also served by the Flask app): /v1/models/{name}[:predict|/metadata]."""

    def __init__(self, base_url: str, model_name: str = "digits", timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        import requests

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.timeout_s = timeout_s
        self.description = f"the REST server at {self.base_url}"
        self._session = requests.Session()  # keep-alive: one TCP connection for many calls

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import requests

        url = f"{self.base_url}/v1/models/{self.model_name}{path}"
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise ServerUnavailableError(f"{self.description} did not answer within {self.timeout_s:g} s.") from None
        except requests.ConnectionError:
            raise ServerUnavailableError(f"Cannot reach {self.description}: the connection was refused or dropped.") from None
        try:
            document = response.json()
        except ValueError:
            document = None
        if response.status_code != 200:
            message = document.get("error") if isinstance(document, dict) else None
            message = message or (response.text.strip()[:200] or response.reason)
            error_type = ServerUnavailableError if response.status_code == 503 else ServingError
            raise error_type(f"{self.description} answered HTTP {response.status_code}: {message}", response.status_code)
        if document is None:
            raise ServingError(f"{self.description} answered with a body that is not JSON.", response.status_code)
        return document

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """POST :predict in the columnar format; images (N, H, W) → probabilities (N, C), classes (N,)."""
        batch = _as_batch(images)
        document = self._request("POST", ":predict", json={"inputs": {INPUT_NAME: batch.tolist()}})
        outputs = document.get("outputs") if isinstance(document, dict) else None
        if not isinstance(outputs, dict) or PROBABILITIES not in outputs or CLASSES not in outputs:
            raise ServingError(f"{self.description} answered without outputs '{PROBABILITIES}' and '{CLASSES}'.")
        return np.asarray(outputs[PROBABILITIES], dtype=np.float32), np.asarray(outputs[CLASSES], dtype=np.int64)

    def get_metadata(self) -> dict:
        """GET /v1/models/{name}/metadata."""
        return self._request("GET", "/metadata")

    def get_status(self) -> list[dict]:
        """GET /v1/models/{name}: one dict per version."""
        document = self._request("GET", "")
        return document.get("model_version_status", []) if isinstance(document, dict) else []

    def wait_until_available(self, timeout: float) -> None:
        """Poll GET /v1/models/{name} until a version is AVAILABLE."""
        _poll_until_available(self, timeout)

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


# ---- command line ---------------------------------------------------------------------------------------

DEFAULT_URLS = {"flask": "http://127.0.0.1:5000", "torchserve": "http://127.0.0.1:8080"}


def build_parser() -> argparse.ArgumentParser:
    """`tf`, `flask` and `torchserve` subcommands sharing the sample and timing options."""
    parser = argparse.ArgumentParser(prog="python -m serving.client", description="Query a model server and time each call.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model-name", default="digits", help="served model name (default digits)")
    source = common.add_mutually_exclusive_group()
    source.add_argument("--sample", type=int, default=10, help="send the first N test-split images (default 10)")
    source.add_argument("--images", type=Path, help="send the images in this .npy file, shape (N, 8, 8) or (8, 8)")
    common.add_argument("--batch-size", type=int, default=1, help="images per call (default 1: one call per image)")
    common.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per call (default 10)")
    common.add_argument("--wait", type=float, default=0.0, help="first wait up to this many seconds for the model")
    commands = parser.add_subparsers(dest="server", required=True)
    tf_parser = commands.add_parser("tf", parents=[common], help="TensorFlow Serving (real or python -m serving.tfserving)")
    endpoint = tf_parser.add_mutually_exclusive_group()
    endpoint.add_argument("--grpc", metavar="HOST:PORT", help="gRPC address (the default: 127.0.0.1:8500)")
    endpoint.add_argument("--rest", metavar="URL", help="REST base URL, e.g. http://127.0.0.1:8501")
    flask_parser = commands.add_parser("flask", parents=[common], help="the Flask app (REST)")
    flask_parser.add_argument("--rest", metavar="URL", default=DEFAULT_URLS["flask"], help="base URL (default %(default)s)")
    torchserve_parser = commands.add_parser("torchserve", parents=[common], help="TorchServe's inference API")
    torchserve_parser.add_argument("--rest", metavar="URL", default=DEFAULT_URLS["torchserve"], help="base URL (default %(default)s)")
    torchserve_parser.add_argument("--key-file", type=Path, help="TorchServe's key file, when token auth is on")
    return parser


def make_client(arguments: argparse.Namespace) -> PredictionClient:
    """The client the subcommand names."""
    if arguments.server == "tf":
        if arguments.rest:
            return RestClient(arguments.rest, arguments.model_name, arguments.timeout)
        return TFServingGrpcClient(arguments.grpc or "127.0.0.1:8500", arguments.model_name, timeout_s=arguments.timeout)
    if arguments.server == "flask":
        return RestClient(arguments.rest, arguments.model_name, arguments.timeout)
    try:
        from serving.torchserve.client import TorchServeClient
    except ModuleNotFoundError as error:
        if error.name in ("serving.torchserve.client", "serving.torchserve"):
            raise UsageError("The TorchServe client (serving/torchserve/client.py) is not available in this checkout yet.") from None
        raise
    return TorchServeClient(base_url=arguments.rest, model_name=arguments.model_name, key_file=arguments.key_file)


def load_images(arguments: argparse.Namespace) -> tuple[np.ndarray, np.ndarray | None]:
    """The images to send and their true labels (None for a .npy file)."""
    if arguments.images is not None:
        try:
            images = np.load(arguments.images, allow_pickle=False)
        except (OSError, ValueError) as error:
            raise UsageError(f"Cannot read --images {arguments.images} as a .npy array: {error}.") from None
        if images.dtype.kind not in "iuf":
            raise UsageError(f"--images {arguments.images} holds {images.dtype} values; it must hold numbers.")
        if images.ndim == 2:
            images = images[np.newaxis]
        if images.ndim != 3 or len(images) == 0:
            raise UsageError(f"--images {arguments.images} has shape {list(images.shape)}; expected (N, 8, 8) or (8, 8).")
        return images.astype(np.float32), None
    if arguments.sample < 1:
        raise UsageError(f"--sample must be at least 1, got {arguments.sample}.")
    from experiment.data import load_dataset

    test = load_dataset().test
    count = min(arguments.sample, len(test))
    return test.images[:count], test.labels[:count]


def run(arguments: argparse.Namespace) -> int:
    """Send the images in calls of --batch-size, print class, label and latency per image, then a summary."""
    if arguments.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {arguments.batch_size}.")
    if arguments.timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {arguments.timeout}.")
    images, labels = load_images(arguments)
    client = make_client(arguments)
    try:
        if arguments.wait > 0:
            client.wait_until_available(arguments.wait)
        description = getattr(client, "description", None) or f"{arguments.server} at {arguments.rest}"
        print(f"{description}, model '{arguments.model_name}'")
        print(f"{'image':>5}  {'predicted':>9}  {'true':>4}  {'probability':>11}  {'call ms':>8}")
        latencies, correct = [], 0
        for start in range(0, len(images), arguments.batch_size):
            batch = images[start : start + arguments.batch_size]
            started = time.perf_counter()
            probabilities, classes = client.predict(batch)
            latency_ms = (time.perf_counter() - started) * 1000
            latencies.append(latency_ms)
            for offset, predicted in enumerate(classes):
                index = start + offset
                true = "-" if labels is None else str(labels[index])
                correct += labels is not None and int(labels[index]) == int(predicted)
                print(f"{index:>5}  {int(predicted):>9}  {true:>4}  {probabilities[offset, predicted]:>11.4f}  {latency_ms:>8.2f}")
        summary = f"{len(latencies)} calls, median {np.median(latencies):.2f} ms, max {np.max(latencies):.2f} ms"
        if labels is not None:
            summary += f"; {correct}/{len(images)} correct"
        print(summary)
        return 0
    finally:
        client.close()


def _client_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean 'the server refused or was unreachable', including the TorchServe client's own type."""
    errors: tuple[type[BaseException], ...] = (ServingError, TimeoutError)
    torchserve_client = sys.modules.get("serving.torchserve.client")
    torchserve_error = getattr(torchserve_client, "TorchServeError", None)
    if isinstance(torchserve_error, type) and issubclass(torchserve_error, BaseException):
        errors += (torchserve_error,)
    return errors


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.client`; unreachable servers end in one sentence and exit 1."""
    arguments = build_parser().parse_args(argv)

    def body() -> int:
        try:
            return run(arguments)
        except _client_errors() as error:
            print(f"python -m serving.client: error: {error}", file=sys.stderr)
            return 1
        except OSError as error:  # includes requests' ConnectionError, should a client let one through
            target = getattr(arguments, "rest", None) or getattr(arguments, "grpc", None) or arguments.server
            print(f"python -m serving.client: error: Cannot reach {target}: {type(error).__name__}.", file=sys.stderr)
            return 1

    from experiment.cli import run_main

    return run_main("python -m serving.client", body)


if __name__ == "__main__":
    raise SystemExit(main())
