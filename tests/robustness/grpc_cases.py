"""gRPC Predicts on the TF server whose declared shape and values disagree, and a valid Predict to compare."""

from __future__ import annotations

import contextlib
import dataclasses
import time

from serving.runtime import ServerProcess


def predict_call(address: str, model_name: str):
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
        proto.tensor_shape.CopyFrom(
            tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in shape])
        )
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
    return dict(zip(GRPC_SHAPE_CASES, tensors, strict=True))


def grpc_shape_cases(
    address: str, server: ServerProcess | None = None, model_name: str = "digits"
) -> list[GrpcCaseResult]:
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

    request, call = predict_call(address, model_name)
    try:
        call(request, timeout=10)
        return None
    except grpc.RpcError as error:
        return f"{error.code().name}: {error.details()}"
    finally:
        call.channel.close()  # type: ignore[attr-defined]
