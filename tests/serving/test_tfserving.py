"""python -m serving.tfserving as a real subprocess on free ports serving the digits model: official stubs, REST, load.

Versions, batching and SIGTERM: test_tfserving_lifecycle.py. TensorFlow Serving's own cases: tests/serving/tfserving.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import requests
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import runtime
from serving.clients import RestClient, ServingError, TFServingGrpcClient
from serving.runtime import ServerProcess, tfserving

START_TIMEOUT_S = 180  # importing TensorFlow on a busy 2-core machine
POLL_SECONDS = 1.0
REQUEST_LIMIT_BYTES = 1024 * 1024


@dataclasses.dataclass
class Server:
    """A running `python -m serving.tfserving`, started by the runtime, and where to reach it."""

    process: ServerProcess
    grpc_address: str
    rest_url: str
    base_path: Path

    def log(self) -> str:
        """Everything the server wrote so far."""
        return self.process.log()

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL if it does not exit) and its exit status."""
        return self.process.stop()


def new_base_path(root: Path, export_path: Path) -> Path:
    """A fresh model base path holding a copy of export_path as version 1."""
    base_path = root / "digits"
    shutil.copytree(export_path, base_path / "1")
    return base_path


def publish_version(base_path: Path, source: Path, version: int) -> None:
    """Copy a version in under a hidden name, then rename: the server sees all of it or nothing (as exports do)."""
    staging = base_path / f".staging-{version}"
    shutil.copytree(source, staging)
    os.rename(staging, base_path / str(version))


def start_server(base_path: Path, log_dir: Path, *flags: str) -> Server:
    """Start the server on free ports and wait until it is ready (its health service says SERVING)."""
    ports = tfserving.TFServingPorts.free()
    spec = tfserving.spec(ports, "digits", base_path, [f"--file_system_poll_wait_seconds={POLL_SECONDS}", *flags])
    process = runtime.start(spec, log_dir / f"tfserving-{ports.grpc}.log", START_TIMEOUT_S)
    return Server(process, spec.endpoint("tf-grpc").address, spec.endpoint("tf-rest").address, base_path)


@pytest.fixture(scope="module")
def in_process(tf_trained, digits):
    """The exported signature called in this process over the whole test split: (probabilities, classes)."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(tf_trained.export_path)).signatures["serving_default"]
    outputs = signature(images=tf.constant(digits.test.images))
    return outputs["probabilities"].numpy(), outputs["classes"].numpy()


@pytest.fixture(scope="module")
def server(tf_trained, tmp_path_factory):
    """One server for the API tests, with a 1 MiB request limit (so 413 / RESOURCE_EXHAUSTED can be provoked)."""
    root = tmp_path_factory.mktemp("tfserving_api")
    running = start_server(
        new_base_path(root, tf_trained.export_path), root, f"--max_request_bytes={REQUEST_LIMIT_BYTES}"
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stubs(server):
    """Official PredictionService and ModelService stubs on one channel to the server."""
    channel = grpc.insecure_channel(server.grpc_address)
    yield prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)
    channel.close()


def predict_request(images: np.ndarray, name: str = "digits", **spec) -> predict_pb2.PredictRequest:
    """A PredictRequest with images packed into tensor_content."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for field, value in spec.items():
        if field == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, field, value)
    tensor = request.inputs["images"]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=size) for size in images.shape])
    tensor.tensor_content = images.astype(np.float32).tobytes()
    return request


def _bad_requests(images: np.ndarray) -> dict[str, tuple[predict_pb2.PredictRequest, grpc.StatusCode]]:
    no_spec = predict_request(images)
    no_spec.ClearField("model_spec")
    unknown_alias = predict_request(images)
    unknown_alias.inputs["pixels"].CopyFrom(unknown_alias.inputs.pop("images"))
    wrong_dtype = predict_request(images)
    wrong_dtype.inputs["images"].dtype = types_pb2.DT_DOUBLE
    wrong_dtype.inputs["images"].tensor_content = images.astype(np.float64).tobytes()
    short_content = predict_request(images)
    short_content.inputs["images"].tensor_content = b"\0" * 12
    strings = predict_request(images)
    strings.inputs["images"].Clear()
    strings.inputs["images"].dtype = types_pb2.DT_STRING
    strings.inputs["images"].string_val.append(b"seven")
    unknown_output = predict_request(images)
    unknown_output.output_filter.append("logits")
    return {
        "unknown model": (predict_request(images, name="cats"), grpc.StatusCode.NOT_FOUND),
        "unknown version": (predict_request(images, version=99), grpc.StatusCode.NOT_FOUND),
        "unknown version label": (predict_request(images, version_label="canary"), grpc.StatusCode.INVALID_ARGUMENT),
        "missing model spec": (no_spec, grpc.StatusCode.INVALID_ARGUMENT),
        "unknown input alias": (unknown_alias, grpc.StatusCode.INVALID_ARGUMENT),
        "wrong shape (the graph refuses it)": (predict_request(images[:, :4, :4]), grpc.StatusCode.INVALID_ARGUMENT),
        "wrong dtype": (wrong_dtype, grpc.StatusCode.INVALID_ARGUMENT),
        "tensor_content of the wrong size": (short_content, grpc.StatusCode.INVALID_ARGUMENT),
        "non-numeric values": (strings, grpc.StatusCode.INVALID_ARGUMENT),
        "unknown output alias": (unknown_output, grpc.StatusCode.INVALID_ARGUMENT),
        "unknown signature": (
            predict_request(images, signature_name="classify_x"),
            grpc.StatusCode.FAILED_PRECONDITION,
        ),
    }


BAD_GRPC_CASES = sorted(_bad_requests(np.zeros((2, 8, 8), np.float32)))


@pytest.mark.slow
def test_health_and_status_report_version_1_available(server, stubs):
    _, models = stubs
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "digits"
    (status,) = models.GetModelStatus(request, timeout=10).model_version_status
    assert (status.version, status.state, status.status.error_code) == (
        1,
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        0,
    )
    assert requests.get(f"{server.rest_url}/v1/models/digits", timeout=10).json() == {
        "model_version_status": [
            {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert "Loaded model digits version 1" in server.log()
    # The export's own warm-up record (assets.extra/tf_serving_warmup_requests) was replayed before serving.
    assert "Number of warmup records read: 1." in server.log()


@pytest.mark.slow
def test_predict_names_the_version_and_honours_output_filter(stubs, digits, in_process):
    prediction, _ = stubs
    request = predict_request(digits.test.images[:3])
    request.output_filter.append("classes")
    response = prediction.Predict(request, timeout=10)
    assert (response.model_spec.name, response.model_spec.version.value) == ("digits", 1)
    assert response.model_spec.signature_name == "serving_default"
    assert list(response.outputs) == ["classes"]
    classes = response.outputs["classes"]
    assert not classes.tensor_content  # the typed field, as TensorFlow Serving answers
    np.testing.assert_array_equal(classes.int64_val, in_process[1][:3])


@pytest.mark.slow
def test_predict_accepts_typed_float_val_and_an_explicit_version(stubs, digits, in_process):
    prediction, _ = stubs
    request = predict_request(digits.test.images[:2], version=1, signature_name="")
    tensor = request.inputs["images"]
    tensor.ClearField("tensor_content")
    tensor.float_val.extend(digits.test.images[:2].ravel().tolist())
    response = prediction.Predict(request, timeout=10)
    np.testing.assert_array_equal(response.outputs["classes"].int64_val, in_process[1][:2])
    np.testing.assert_allclose(
        np.reshape(response.outputs["probabilities"].float_val, (2, 10)), in_process[0][:2], atol=1e-6
    )


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_GRPC_CASES)
def test_bad_predict_gets_tensorflow_servings_status_code(stubs, case):
    prediction, _ = stubs
    request, expected = _bad_requests(np.zeros((2, 8, 8), np.float32))[case]
    with pytest.raises(grpc.RpcError) as raised:
        prediction.Predict(request, timeout=10)
    assert raised.value.code() == expected, raised.value.details()
    details = raised.value.details()
    assert details and "Traceback" not in details and "\n" not in details


@pytest.mark.slow
def test_other_status_codes(stubs):
    prediction, models = stubs
    status_request = get_model_status_pb2.GetModelStatusRequest()
    status_request.model_spec.name = "cats"
    version_request = get_model_status_pb2.GetModelStatusRequest()
    version_request.model_spec.name = "digits"
    version_request.model_spec.version.value = 7
    no_field = get_model_metadata_pb2.GetModelMetadataRequest()
    no_field.model_spec.name = "digits"
    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name = "digits"
    huge = predict_request(np.zeros((REQUEST_LIMIT_BYTES // 256 + 10, 8, 8), np.float32))
    calls = [
        (models.GetModelStatus, status_request, grpc.StatusCode.NOT_FOUND),
        (models.GetModelStatus, version_request, grpc.StatusCode.NOT_FOUND),
        (prediction.GetModelMetadata, no_field, grpc.StatusCode.INVALID_ARGUMENT),
        (prediction.Classify, classify, grpc.StatusCode.INVALID_ARGUMENT),  # serving_default is no classify signature
        (prediction.Predict, huge, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ]
    for method, request, expected in calls:
        with pytest.raises(grpc.RpcError) as raised:
            method(request, timeout=10)
        assert raised.value.code() == expected, (method, raised.value.details())


@pytest.mark.slow
def test_metadata_over_grpc_and_rest_describes_the_signature(server):
    client = TFServingGrpcClient(server.grpc_address)
    try:
        metadata = client.get_metadata()
    finally:
        client.close()
    signature = metadata["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert signature["inputs"]["images"]["dtype"] == "DT_FLOAT"
    assert [dim["size"] for dim in signature["inputs"]["images"]["tensor_shape"]["dim"]] == ["-1", "8", "8"]
    assert set(signature["outputs"]) == {"probabilities", "classes"}
    assert signature["outputs"]["classes"]["dtype"] == "DT_INT64"
    rest = RestClient(server.rest_url).get_metadata()
    assert rest["model_spec"]["version"] == "1"
    assert (
        rest["metadata"]["signature_def"]["signature_def"]["serving_default"]["inputs"]["images"]["dtype"] == "DT_FLOAT"
    )


@pytest.mark.slow
def test_rest_row_and_columnar_formats(server, digits, in_process):
    images = digits.test.images[:3]
    row = requests.post(f"{server.rest_url}/v1/models/digits:predict", json={"instances": images.tolist()}, timeout=10)
    assert row.status_code == 200
    predictions = row.json()["predictions"]
    assert [prediction["classes"] for prediction in predictions] == in_process[1][:3].tolist()
    np.testing.assert_allclose(
        [prediction["probabilities"] for prediction in predictions], in_process[0][:3], atol=1e-6
    )
    columnar = requests.post(
        f"{server.rest_url}/v1/models/digits/versions/1:predict",
        json={"inputs": {"images": images.tolist()}},
        timeout=10,
    )
    assert columnar.json()["outputs"]["classes"] == in_process[1][:3].tolist()


REST_CASES = {
    "unknown model": ("POST", "/v1/models/cats:predict", {"instances": [[[0] * 8] * 8]}, 404),
    "unknown version": ("POST", "/v1/models/digits/versions/9:predict", {"instances": [[[0] * 8] * 8]}, 404),
    "unknown label": ("POST", "/v1/models/digits/labels/canary:predict", {"instances": [[[0] * 8] * 8]}, 400),
    "status of unknown model": ("GET", "/v1/models/cats", None, 404),
    "status of unknown version": ("GET", "/v1/models/digits/versions/9", None, 404),
    "metadata of unknown model": ("GET", "/v1/models/cats/metadata", None, 404),
    "not JSON": ("POST", "/v1/models/digits:predict", b"{not json", 400),
    "neither instances nor inputs": ("POST", "/v1/models/digits:predict", {"images": []}, 400),
    "wrong shape (the graph refuses it)": ("POST", "/v1/models/digits:predict", {"instances": [[1, 2, 3]]}, 400),
    "ragged": ("POST", "/v1/models/digits:predict", {"instances": [[[0] * 8] * 8, [[0] * 7] * 8]}, 400),
    "strings": ("POST", "/v1/models/digits:predict", {"instances": [[["a"] * 8] * 8]}, 400),
    "unknown input name": ("POST", "/v1/models/digits:predict", {"inputs": {"pixels": [[[0] * 8] * 8]}}, 400),
    "unknown signature": (
        "POST",
        "/v1/models/digits:predict",
        {"signature_name": "nope", "instances": [[[0] * 8] * 8]},
        400,
    ),
    "body over the limit": ("POST", "/v1/models/digits:predict", b" " * (REQUEST_LIMIT_BYTES + 1), 413),
    "classify without examples": ("POST", "/v1/models/digits:classify", {"examples": []}, 400),
    "classify on a predict signature": ("POST", "/v1/models/digits:classify", {"examples": [{"x": 1.0}]}, 400),
    "malformed path": ("GET", "/v1/models/digits:predict", None, 400),
    "outside the API": ("GET", "/index.html", None, 404),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REST_CASES))
def test_bad_rest_request_gets_tensorflow_servings_http_status(server, case):
    method, path, body, expected = REST_CASES[case]
    data = body if isinstance(body, bytes) else (json.dumps(body) if body is not None else None)
    response = requests.request(method, server.rest_url + path, data=data, timeout=30)
    assert response.status_code == expected, response.text
    error = response.json()["error"]
    assert error and "Traceback" not in error and "\n" not in error


@pytest.mark.slow
def test_server_accuracy_equals_in_process_accuracy(server, digits, in_process):
    expected_probabilities, expected_classes = in_process
    in_process_accuracy = float(np.mean(expected_classes == digits.test.labels))
    grpc_client, rest_client = TFServingGrpcClient(server.grpc_address), RestClient(server.rest_url)
    try:
        probabilities, classes = grpc_client.predict(digits.test.images)
        one_by_one = np.concatenate([grpc_client.predict(image)[1] for image in digits.test.images])
        _, rest_classes = rest_client.predict(digits.test.images)
    finally:
        grpc_client.close()
        rest_client.close()
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-6)
    for served in (classes, one_by_one, rest_classes):
        np.testing.assert_array_equal(served, expected_classes)
        assert float(np.mean(served == digits.test.labels)) == in_process_accuracy
    assert in_process_accuracy > 0.9


def _hammer(client_count: int, request_count: int, make_client, images: np.ndarray, expected: np.ndarray) -> list[str]:
    """client_count threads × request_count single-image predicts; returns the failures."""
    failures: list[str] = []

    def work(index: int) -> None:
        client = make_client()
        try:
            for number in range(request_count):
                row = (index * request_count + number) % len(images)
                try:
                    _, classes = client.predict(images[row])
                    if classes[0] != expected[row]:
                        failures.append(f"image {row}: got {classes[0]}, expected {expected[row]}")
                except (ServingError, TimeoutError) as error:
                    failures.append(str(error))
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(index,)) for index in range(client_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


@pytest.mark.slow
def test_16_concurrent_clients_times_200_requests_without_an_error(server, digits, in_process):
    started = time.monotonic()
    failures = _hammer(
        16, 200, lambda: TFServingGrpcClient(server.grpc_address, timeout_s=60), digits.test.images, in_process[1]
    )
    grpc_seconds = time.monotonic() - started
    rest_failures = _hammer(8, 25, lambda: RestClient(server.rest_url, timeout_s=60), digits.test.images, in_process[1])
    assert failures == [] and rest_failures == []
    print(f"16 × 200 gRPC requests in {grpc_seconds:.1f} s")


@pytest.mark.slow
def test_no_bad_request_killed_the_server(server, digits):
    assert server.process.is_running()
    client = TFServingGrpcClient(server.grpc_address)
    try:
        assert client.predict(digits.test.images[:1])[1].shape == (1,)
    finally:
        client.close()
    assert "Traceback" not in server.log()
