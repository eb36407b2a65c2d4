"""What the reference cases share: the server under test, and the request shapes TensorFlow Serving's tests send."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grpc
import pytest
import requests

from serving.runtime import ServerProcess

RPC_TIMEOUT_S = 10.0  # TensorFlow Serving's tests use 5 s; a busy 2-core machine gets twice that


@dataclasses.dataclass
class ServerUnderTest:
    """Where the server answers, the folder of models it serves, and (for ours) its process."""

    grpc_address: str
    rest_url: str
    models_dir: Path
    process: ServerProcess | None = None
    socket_path: Path | None = None

    @property
    def is_ours(self) -> bool:
        """True for the server this suite started (its log can be read, its flags are known)."""
        return self.process is not None

    def rest(self, method: str, path: str, body: object = None) -> tuple[int, object, requests.Response]:
        """One REST call: status, the JSON answer (or the raw text if it is not JSON), and the response."""
        data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
        response = requests.request(method, self.rest_url + path, data=data, timeout=30)
        try:
            answer = response.json()
        except ValueError:
            answer = response.text
        return response.status_code, answer, response


def require_ours(server: ServerUnderTest, why: str) -> None:
    """Skip the calling test when the server under test is not ours."""
    if not server.is_ours:
        pytest.skip(f"needs this suite's own server: {why}")


def rpc_error(method, request) -> grpc.RpcError:
    """The RpcError method raises for request (the test fails if it answers)."""
    with pytest.raises(grpc.RpcError) as raised:
        method(request, RPC_TIMEOUT_S)
    return raised.value


def x_request(model_name: str = "default", signature_name: str = "serving_default", shape=(1,), output_filter=("y",)):
    """The Predict TensorFlow Serving's VerifyPredictRequest sends: x = 2.0 as float_val, shape [1] (or [1, 1])."""
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    tensor = request.inputs["x"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.float_val.append(2.0)
    for size in shape:
        tensor.tensor_shape.dim.add(size=size)
    request.output_filter.extend(output_filter)
    return request


def add_examples(request, *values: float, feature: str = "x") -> None:
    """Append one tf.Example per value, each with a single float feature (as the reference tests build them)."""
    for value in values:
        example = request.input.example_list.examples.add()
        example.features.feature[feature].float_list.value.append(value)


def model_spec_of(spec) -> tuple[str, str, int]:
    """(name, signature_name, version) of a ModelSpec, for comparing with what a reference test expects."""
    return spec.name, spec.signature_name, spec.version.value
