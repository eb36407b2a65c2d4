"""Predict over gRPC: TensorFlow Serving's predict_impl_test.cc cases, and every dtype, scalars, strings, several
inputs and outputs, answered in the typed fields (float_val, int64_val, ...) as the real server writes them."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from tests.serving.tfserving.models import ECHO_DTYPES
from tests.serving.tfserving.support import RPC_TIMEOUT_S, rpc_error, x_request

pytestmark = pytest.mark.slow  # a server with nine models, started once for the session


def request_for(model: str, signature: str = "", version: int | None = 123, **inputs: tensor_pb2.TensorProto):
    """A PredictRequest for model (and version), with the given input tensors."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = model, signature
    if version is not None:
        request.model_spec.version.value = version
    for alias, tensor in inputs.items():
        request.inputs[alias].CopyFrom(tensor)
    return request


def float_tensor(*values: float, shape=None) -> tensor_pb2.TensorProto:
    tensor = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=values)
    for size in shape or ():
        tensor.tensor_shape.dim.add(size=size)
    return tensor


def test_missing_or_empty_model_spec(prediction):  # MissingOrEmptyModelSpec
    assert rpc_error(prediction.Predict, predict_pb2.PredictRequest()).code() == grpc.StatusCode.INVALID_ARGUMENT
    empty_name = request_for("", version=None)
    empty_name.model_spec.SetInParent()
    assert rpc_error(prediction.Predict, empty_name).code() == grpc.StatusCode.INVALID_ARGUMENT
    assert rpc_error(prediction.Predict, request_for("test", version=None)).code() == grpc.StatusCode.NOT_FOUND


def test_empty_input_list(prediction):  # EmptyInputList
    error = rpc_error(prediction.Predict, request_for("default"))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "input size does not match signature" in error.details()


def test_input_tensors_dont_match_the_signature_inputs(prediction):  # InputTensorsDontMatchModelSpecInputs
    key = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"any_key"])
    key.tensor_shape.dim.add(size=1)
    error = rpc_error(prediction.Predict, request_for("default", key=key))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "input tensor alias not found in signature: key" in error.details()  # one input each: names compared


def test_output_filters_dont_match_the_signature_outputs(prediction):  # OutputFiltersDontMatchModelSpecOutputs
    request = request_for("default", x=float_tensor(2.0))
    request.output_filter.append("output_filter")
    error = rpc_error(prediction.Predict, request)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "output tensor alias not found in signature" in error.details()
    )
    request.ClearField("output_filter")
    request.output_filter.append("y")
    assert prediction.Predict(request, RPC_TIMEOUT_S).outputs["y"].float_val == [3.0]
    request.output_filter.append("y")
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "duplicate output tensor alias: y" in error.details()


def test_input_tensors_have_the_wrong_type(prediction):  # InputTensorsHaveWrongType: the graph refuses them
    strings = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"any_key"])
    strings.tensor_shape.dim.add(size=1)
    request = request_for("default", x=strings)
    request.output_filter.append("y")
    assert rpc_error(prediction.Predict, request).code() == grpc.StatusCode.INVALID_ARGUMENT


def test_model_missing_signatures(prediction):  # ModelMissingSignatures
    assert rpc_error(prediction.Predict, request_for("bad_half_plus_two")).code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize(
    "signature, input_alias, output_alias, expected",
    [
        ("", "x", "y", 3.0),
        ("regress_x2_to_y3", "inputs", "outputs", 4.0),
        ("classify_x2_to_y3", "inputs", "scores", 4.0),
    ],
    ids=["PredictionSuccess", "PredictionWithNamedRegressionSignature", "PredictionWithNamedClassificationSignature"],
)
def test_prediction_success_with_a_scalar_on_predict_regress_and_classify_signatures(
    prediction, signature, input_alias, output_alias, expected
):
    response = prediction.Predict(request_for("default", signature, **{input_alias: float_tensor(2.0)}), RPC_TIMEOUT_S)
    assert dict(response.outputs) == {
        output_alias: tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={}, float_val=[expected])
    }


def _echo_value(name: str) -> np.ndarray:
    if name == "string":
        return np.array([[b"a", b"\xff\x00"]], dtype=object)
    if name == "bool":
        return np.array([[True, False]])
    dtype = np.dtype(name)
    return np.array([[np.iinfo(dtype).max if dtype.kind in "iu" else 1.5, 3]], dtype=dtype)  # extremes survive


def test_every_dtype_goes_in_as_typed_fields_and_comes_back_in_the_typed_fields(prediction):
    request = request_for("multi_io", "echo", **{name: tf.make_tensor_proto(_echo_value(name)) for name in ECHO_DTYPES})
    response = prediction.Predict(request, RPC_TIMEOUT_S)
    for name in ECHO_DTYPES:
        output = response.outputs[f"{name}_out"]
        assert not output.tensor_content, name  # typed fields, as the real server answers
        np.testing.assert_array_equal(tf.make_ndarray(output), _echo_value(name), err_msg=name)


def test_several_inputs_and_outputs_of_different_dtypes(prediction):
    inputs = {
        "x": np.array([[1, 2], [3, 4]], np.float32),
        "count": np.array([3, 4], np.int64),
        "flag": np.array([True, False]),
        "weight": np.array([0.5, 2.0]),
        "tag": np.array([b"foo", b"barbaz"], dtype=object),
    }
    response = prediction.Predict(
        request_for("multi_io", **{k: tf.make_tensor_proto(v) for k, v in inputs.items()}), RPC_TIMEOUT_S
    )
    assert list(response.outputs["total"].float_val) == [1.5, 14.0]
    assert list(response.outputs["doubled"].int64_val) == [6, 8]
    assert list(response.outputs["negated"].bool_val) == [False, True]
    assert list(response.outputs["weight_squared"].double_val) == [0.25, 4.0]
    assert list(response.outputs["tag_length"].int_val) == [3, 6]
    assert response.model_spec.signature_name == "serving_default"


def test_string_inputs_and_outputs(prediction):
    text = tf.make_tensor_proto(np.array(["héllo".encode(), b"tf"], dtype=object))
    response = prediction.Predict(request_for("strings", text=text), RPC_TIMEOUT_S)
    assert list(response.outputs["length"].int_val) == [5, 2]  # DT_INT32 goes in int_val
    assert list(response.outputs["upper"].string_val) == ["HéLLO".encode(), b"TF"]
    assert list(response.outputs["text_bytes"].string_val) == ["héllo".encode(), b"tf"]


def test_a_scalar_signature_and_tensor_content_inputs(prediction):
    request = request_for("multi_io", "scalar", x=tf.make_tensor_proto(np.float32(2.5)))
    response = prediction.Predict(request, RPC_TIMEOUT_S)
    assert response.outputs["y"].tensor_shape.dim == [] and list(response.outputs["y"].float_val) == [5.0]
    packed = x_request(shape=(2, 1), output_filter=())
    packed.inputs["x"].ClearField("float_val")
    packed.inputs["x"].tensor_content = np.array(
        [[2.0], [4.0]], np.float32
    ).tobytes()  # how this project's client sends
    assert list(prediction.Predict(packed, RPC_TIMEOUT_S).outputs["y"].float_val) == [3.0, 4.0]


def test_labels_choose_the_version(prediction):
    request = x_request("half_plus_two_2_versions")
    for label, version in (("stable", 123), ("canary", 124)):
        request.model_spec.version_label = label
        assert prediction.Predict(request, RPC_TIMEOUT_S).model_spec.version.value == version
    request.model_spec.version_label = "nope"
    error = rpc_error(prediction.Predict, request)
    assert (
        error.code() == grpc.StatusCode.INVALID_ARGUMENT
        and "Unrecognized servable version label: nope" in error.details()
    )
    request.model_spec.version.value = 125
    error = rpc_error(prediction.Predict, request)
    assert (
        error.code() == grpc.StatusCode.NOT_FOUND
        and "Servable not found for request: Specific(half_plus_two_2_versions, 125)" in error.details()
    )


def _memory_mib(pid: int) -> tuple[int, int]:
    """(resident, peak resident) MiB of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024


@pytest.mark.parametrize(
    "tensor",
    [
        float_tensor(1.0, shape=(1 << 20, 8, 8)),
        float_tensor(1.0, shape=(1 << 40,)),
        float_tensor(shape=(1 << 16, 1)),
        float_tensor(1.0, 2.0, 3.0, shape=(2, 1)),
    ],
    ids=["2^26 elements from one value", "2^40 elements", "no values", "more values than the shape"],
)
def test_value_count_disagreeing_with_the_shape_is_refused_before_allocation(served, prediction, tensor):
    import time

    from tests.serving.tfserving.support import require_ours

    require_ours(served, "the real server fills a short float_val with its last value (docs/tfserving.md)")
    request = request_for("default", x=tensor)
    before = _memory_mib(served.process.pid)[1]
    started = time.monotonic()
    error = rpc_error(prediction.Predict, request)
    seconds = time.monotonic() - started
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert error.details().startswith("tensor parsing error: x.") and "\n" not in error.details()
    # Before: 5 s and a 4 GiB peak for the first case, INTERNAL (MemoryError) for the second.
    assert seconds < 2 and _memory_mib(served.process.pid)[1] - before < 64
    assert list(prediction.Predict(x_request(), RPC_TIMEOUT_S).outputs["y"].float_val) == [3.0]  # still serving
