"""tensorflow.serving's gRPC API through the official stubs: the real TensorFlow Serving and `serving.tfserving`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from experiment.json_types import JSONDict, as_array
from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES, SIGNATURE_NAME
from serving.clients import errors
from serving.clients.base import DEFAULT_TIMEOUT_S, as_batch, wait_for_available_version
from serving.clients.errors import ServingError

if TYPE_CHECKING:
    from tensorflow_serving.apis.model_pb2 import ModelSpec
    from tensorflow_serving.apis.predict_pb2 import PredictRequest, PredictResponse

ResponseT = TypeVar("ResponseT", covariant=True)


class UnaryCall(Protocol[ResponseT]):
    """A stub's unary method: one request message in, one response message out, within a deadline."""

    def __call__(self, request: object, *, timeout: float) -> ResponseT: ...


# Large enough for a whole test split in one call; the default gRPC limit of 4 MiB is not.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


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
        # Imported here: the stubs pull in TensorFlow's protos, which a process that never calls gRPC should not pay.
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

    def _fill_model_spec(self, spec: ModelSpec) -> None:
        spec.name = self.model_name
        if self.version is not None:
            spec.version.value = self.version

    def predict_response(self, images: npt.ArrayLike) -> PredictResponse:
        """The raw PredictResponse (its model_spec says which version answered)."""
        from tensorflow.core.framework import types_pb2
        from tensorflow_serving.apis import predict_pb2

        batch = as_batch(images)  # (N, H, W)
        request: PredictRequest = predict_pb2.PredictRequest()
        self._fill_model_spec(request.model_spec)
        request.model_spec.signature_name = self.signature_name
        tensor = request.inputs[INPUT_NAME]
        tensor.dtype = types_pb2.DT_FLOAT
        for size in batch.shape:
            tensor.tensor_shape.dim.add(size=size)
        tensor.tensor_content = batch.tobytes()  # raw bytes: no per-element float_val encoding
        return self._call(self._prediction.Predict, request)

    def predict(self, images: npt.ArrayLike) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """images (N, H, W) → probabilities (N, C) float32, classes (N,) int64."""
        from serving.protocol.tensors import tensor_to_array

        response = self.predict_response(images)
        try:
            probabilities = tensor_to_array(response.outputs[PROBABILITIES], PROBABILITIES)
            classes = tensor_to_array(response.outputs[CLASSES], CLASSES)
        except Exception as error:  # noqa: BLE001 (a response without the outputs the serving signature promises)
            raise ServingError(f"{self.description} answered without usable outputs: {error}") from None
        return probabilities.astype(np.float32, copy=False), classes.astype(np.int64, copy=False)

    def get_metadata(self) -> JSONDict:
        """GetModelMetadata(signature_def) as a dict, as the REST metadata route shows it."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._fill_model_spec(request.model_spec)
        response = self._call(self._prediction.GetModelMetadata, request)
        metadata: JSONDict = json_format.MessageToDict(response, preserving_proto_field_name=True)
        return metadata

    def get_status(self) -> list[JSONDict]:
        """GetModelStatus: one dict per version (version, state, status)."""
        from google.protobuf import json_format
        from tensorflow_serving.apis import get_model_status_pb2

        request = get_model_status_pb2.GetModelStatusRequest()
        self._fill_model_spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        status: JSONDict = json_format.MessageToDict(response, preserving_proto_field_name=True)
        return [version for version in as_array(status.get("model_version_status", [])) if isinstance(version, dict)]

    def wait_until_available(self, timeout: float) -> None:
        """Poll GetModelStatus until a version is AVAILABLE."""
        wait_for_available_version(self, timeout)

    def _call(self, method: UnaryCall[ResponseT], request: object) -> ResponseT:
        import grpc

        try:
            return method(request, timeout=self.timeout_s)  # a deadline on every call
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or "no details"
            if code == grpc.StatusCode.UNAVAILABLE:
                raise errors.unreachable(self.description, code.name) from None
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise errors.timed_out(self.description, self.timeout_s, code.name) from None
            if code == grpc.StatusCode.NOT_FOUND:
                raise errors.unknown_model(self.description, self.model_name, code.name, details) from None
            raise errors.refused(self.description, code.name, details) from None

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()
