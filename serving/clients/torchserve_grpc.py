"""TorchServe's own gRPC APIs (`inference.proto` on 7070, `management.proto` on 7071) behind the common interface.

The stubs are generated from the proto files inside the installed torchserve (`serving.clients.torchserve_protos`).
A prediction sends TensorFlow Serving's JSON body as the request's `body` input, exactly what the REST API carries,
so the handler answers both the same way. Token authorization sends the key as `authorization: Bearer <key>`
metadata, from the same key file as the REST client; an expired key is renewed once through the token API, which
TorchServe offers over REST only.

TorchServe's gRPC API answers differently from its REST API in two ways the client evens out, so that every client
raises the same errors for the same mistakes:
- every refusal of TorchServe itself arrives as INTERNAL with the Java exception's name in its details; an unknown
  model or version (ModelNotFoundException, ModelVersionNotFoundException) becomes status NOT_FOUND, as the REST
  API's 404 and TensorFlow Serving's gRPC API say;
- a request the handler refuses (a wrong shape, a body that is not JSON) arrives as OK with the handler's
  `{"error": ...}` body, since TorchServe's gRPC front end drops the status the handler set; it becomes status
  INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from experiment.json_types import JSONDict, JSONValue
from serving.clients import errors
from serving.clients.base import DEFAULT_TIMEOUT_S, as_batch, poll_until
from serving.clients.errors import ServingError
from serving.clients.torchserve import (
    TorchServeKeys,
    first_description,
    metadata_from_description,
    predictions_from_answer,
    workers_ready,
)

if TYPE_CHECKING:
    import grpc

ResponseT = TypeVar("ResponseT", covariant=True)


class UnaryCall(Protocol[ResponseT]):
    """A stub's unary method: one request message in, one response message out, within a deadline, with metadata."""

    def __call__(self, request: object, *, timeout: float, metadata: list[tuple[str, str]]) -> ResponseT: ...


# Large enough for a whole test split in one call; the default gRPC limit of 4 MiB is not.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# TorchServe names the exception in an INTERNAL error's details; these mean "no such model or version".
NOT_FOUND_EXCEPTIONS = ("ModelNotFoundException", "ModelVersionNotFoundException")
BODY_INPUT = "body"  # the input the handler reads, as TorchServe's REST front end names a request's body


class TorchServeGrpcClient:
    """TorchServe's InferenceAPIsService and ManagementAPIsService over gRPC; version None asks the default one."""

    def __init__(
        self,
        address: str = "127.0.0.1:7070",
        model_name: str = "digits",
        key_file: str | Path | None = None,
        management_address: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        version: str | int | None = None,
        token_url: str | None = None,
    ) -> None:
        """management_address defaults to the inference port + 1 (TorchServe's 7070/7071); token_url is the REST
        management URL whose token API renews expired keys (without it, no renewal)."""
        import grpc

        from serving.clients import torchserve_protos

        self.address = address
        self.model_name = model_name
        self.timeout = timeout
        self.version = None if version is None else str(version)
        self.description = f"TorchServe (gRPC) at {address}"
        host, port = address.rsplit(":", 1)
        self.management_address = management_address or f"{host}:{int(port) + 1}"
        self.keys = TorchServeKeys(key_file, token_url, timeout)
        self._stubs = torchserve_protos.load()
        options = [
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ]
        self._inference_channel = grpc.insecure_channel(address, options=options)
        self._management_channel = grpc.insecure_channel(self.management_address, options=options)
        self._inference = self._stubs.inference_pb2_grpc.InferenceAPIsServiceStub(self._inference_channel)
        self._management = self._stubs.management_pb2_grpc.ManagementAPIsServiceStub(self._management_channel)

    @property
    def key_file(self) -> Path | None:
        """TorchServe's key_file.json, or None when token authorization is off."""
        return self.keys.key_file

    def _call(self, method: UnaryCall[ResponseT], request: object, api: str) -> ResponseT:
        """One call with a deadline and the api's key; renews an expired key once; errors as ServingError."""
        import grpc

        def send() -> ResponseT:
            key = self.keys.key(api)
            metadata = [("authorization", f"Bearer {key}")] if key else []
            return method(request, timeout=self.timeout, metadata=metadata)

        try:
            try:
                return send()
            except grpc.RpcError as error:
                if error.code() != grpc.StatusCode.PERMISSION_DENIED or not self.keys.renew(api):
                    raise
                return send()
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _error(self, error: grpc.RpcError) -> ServingError:
        import grpc

        code, details = error.code(), (error.details() or "no details").strip()
        message = details.splitlines()[0]
        if code == grpc.StatusCode.UNAVAILABLE:
            return errors.unreachable(self.description, code.name)
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return errors.timed_out(self.description, self.timeout, code.name)
        if code == grpc.StatusCode.INTERNAL and any(name in details for name in NOT_FOUND_EXCEPTIONS):
            return errors.unknown_model(self.description, self.model_name, "NOT_FOUND", message)
        if code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
            return errors.key_refused(self.description, code.name, message)
        return errors.refused(self.description, code.name, message)

    # The common client interface ---------------------------------------------------------------------------

    def predict_answer(self, images: npt.ArrayLike) -> JSONValue:
        """The handler's decoded JSON answer for images (N, H, W); ServingError for a refused request."""
        return self.send_body(json.dumps({"instances": as_batch(images).tolist()}, separators=(",", ":")).encode())

    def send_body(self, body: bytes) -> JSONValue:
        """Send a request body as it is (TensorFlow Serving's JSON, as over REST); the decoded answer."""
        request = self._stubs.inference_pb2.PredictionsRequest(model_name=self.model_name, input={BODY_INPUT: body})
        if self.version is not None:
            request.model_version = self.version
        response = self._call(self._inference.Predictions, request, "inference")
        try:
            document: JSONValue = json.loads(response.prediction)
        except ValueError:
            raise ServingError(f"{self.description} answered with a prediction that is not JSON.") from None
        if isinstance(document, dict) and "error" in document:
            raise errors.refused(self.description, "INVALID_ARGUMENT", str(document["error"]))
        return document

    def predict(self, images: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Probabilities (N, C) float32 and classes (N,) int64 for images (N, H, W) of raw pixel values."""
        document = self.predict_answer(images)
        try:
            return predictions_from_answer(document)
        except (KeyError, TypeError, ValueError):
            raise ServingError(f"{self.description} answered without 'predictions' rows.") from None

    def describe(self, customized: bool = False, version: str | int | None = None) -> JSONDict:
        """DescribeModel: the default version's description, or `version`'s (workers, batching, signature)."""
        request = self._stubs.management_pb2.DescribeModelRequest(model_name=self.model_name, customized=customized)
        if version is not None:
            request.model_version = str(version)
        response = self._call(self._management.DescribeModel, request, "management")
        try:
            return first_description(json.loads(response.msg))
        except ValueError:
            raise ServingError(f"{self.description} described the model in a message that is not JSON.") from None

    def get_metadata(self) -> JSONDict:
        """Model name, version, input and output signature (from the handler), batching and worker states."""
        return metadata_from_description(self.describe(customized=True, version=self.version), self.model_name)

    def is_available(self) -> bool:
        """True when the model's workers are READY: at least minWorkers of them (and at least one)."""
        try:
            return workers_ready(self.describe(version=self.version))
        except ServingError:
            return False

    def wait_until_available(self, timeout: float = 60.0) -> None:
        """Block until is_available(); TimeoutError naming the management address after timeout seconds."""
        poll_until(
            lambda: None if self.is_available() else "workers not READY",
            timeout,
            lambda problem: (
                f"TorchServe's {self.model_name!r} workers were not READY at {self.management_address} "
                f"(gRPC) within {timeout:g} s."
            ),
        )

    def ping(self) -> str:
        """The Ping method's health string ("Healthy" once the front end is up)."""
        from google.protobuf import empty_pb2

        return str(json.loads(self._call(self._inference.Ping, empty_pb2.Empty(), "inference").health)["status"])

    def close(self) -> None:
        """Close both channels."""
        self._inference_channel.close()
        self._management_channel.close()

    def __enter__(self) -> TorchServeGrpcClient:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()
