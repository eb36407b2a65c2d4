"""One suite, every endpoint: the same requests to TF Serving (gRPC, REST), Flask and TorchServe (REST, gRPC)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from tests.integration.conftest import endpoint_for

ENDPOINTS = ["tf-grpc", "tf-rest", "flask-rest", "torchserve-rest", "torchserve-grpc"]
BATCH = 60  # the test split (360 images) in six requests


@pytest.fixture(params=ENDPOINTS)
def endpoint(request, stack):
    return endpoint_for(stack, request.param)


def _predict_split(endpoint, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    client = endpoint.client("digits")
    try:
        parts = [client.predict(images[start : start + BATCH]) for start in range(0, len(images), BATCH)]
    finally:
        client.close()
    return np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts])


@pytest.fixture(scope="session")
def served_predictions(stack, digits):
    """Each endpoint's answers for the whole test split, asked once per session."""
    answers = {}
    for name in ENDPOINTS:
        try:
            endpoint = endpoint_for(stack, name)
        except pytest.skip.Exception:
            continue
        answers[name] = _predict_split(endpoint, digits.test.images)
    return answers


def test_whole_test_split_accuracy(endpoint, served_predictions, digits):
    probabilities, classes = served_predictions[endpoint.name]
    assert probabilities.shape == (len(digits.test), 10) and probabilities.dtype == np.float32
    assert classes.shape == (len(digits.test),) and classes.dtype == np.int64
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    assert (classes == digits.test.labels).mean() >= 0.95


def test_server_agrees_with_in_process_artifact(endpoint, served_predictions, in_process_predictions):
    probabilities, classes = served_predictions[endpoint.name]
    expected_probabilities, expected_classes = in_process_predictions[endpoint.framework]
    assert np.array_equal(classes, expected_classes)
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)


def _signature_names(document, key: str) -> set[str]:
    """Names found under every `key` ('inputs' or 'outputs') anywhere in a metadata document."""
    names: set[str] = set()
    if isinstance(document, dict):
        for name, value in document.items():
            if name == key and isinstance(value, dict):
                names.update(value)
            elif name == key and isinstance(value, list):
                names.update(item["name"] for item in value if isinstance(item, dict) and "name" in item)
            else:
                names |= _signature_names(value, key)
    elif isinstance(document, list):
        for item in document:
            names |= _signature_names(item, key)
    return names


def test_metadata_names_the_signature(endpoint):
    client = endpoint.client("digits")
    try:
        metadata = client.get_metadata()
    finally:
        client.close()
    assert "images" in _signature_names(metadata, "inputs")
    assert {"probabilities", "classes"} <= _signature_names(metadata, "outputs")


def _status_of(error: BaseException):
    return getattr(error, "status", None) or getattr(error, "status_code", None)


def test_unknown_model_is_not_found(endpoint, digits):
    client = endpoint.client("no-such-model")
    try:
        with pytest.raises(Exception) as raised:
            client.predict(digits.test.images[:1])
    finally:
        client.close()
    assert _status_of(raised.value) in (404, "NOT_FOUND"), raised.value
    assert "no-such-model" in str(raised.value) or "not found" in str(raised.value).lower()


def test_bad_shape_is_invalid_argument(endpoint):
    client = endpoint.client("digits")
    try:
        with pytest.raises(Exception) as raised:
            client.predict(np.zeros((2, 7, 8), dtype=np.float32))
    finally:
        client.close()
    assert _status_of(raised.value) in (400, "INVALID_ARGUMENT"), raised.value


def _torchserve_headers(endpoint) -> dict[str, str]:
    client = endpoint.client("digits")
    try:
        return client.authorization_headers("inference")
    finally:
        client.close()


def _rest_predict_url(endpoint) -> str:
    if endpoint.name == "torchserve-rest":
        return f"{endpoint.address}/predictions/digits"
    return f"{endpoint.address}/v1/models/digits:predict"


def test_non_numeric_values_are_refused(endpoint, stack):
    body = {"instances": [[["a"] * 8] * 8]}
    if endpoint.name == "torchserve-grpc":
        # TorchServe's gRPC API carries the same JSON body as its REST API; the handler refuses it the same way.
        from serving.clients import ServingError

        client = endpoint.client("digits")
        try:
            with pytest.raises(ServingError) as raised:
                client.send_body(json.dumps(body).encode())
        finally:
            client.close()
        assert raised.value.status == "INVALID_ARGUMENT"
        assert "Traceback" not in raised.value.message and "images" in raised.value.message
        return
    if endpoint.protocol == "gRPC":
        import grpc
        from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        request.inputs["images"].CopyFrom(
            tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING,
                tensor_shape=tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)]),
                string_val=[b"a"],
            )
        )
        with grpc.insecure_channel(endpoint.address) as channel, pytest.raises(grpc.RpcError) as raised:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=10)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return
    headers = _torchserve_headers(endpoint) if endpoint.name == "torchserve-rest" else {}
    response = requests.post(_rest_predict_url(endpoint), data=json.dumps(body), headers=headers, timeout=10)
    assert response.status_code == 400
    message = response.json().get("error") or response.json().get("message")
    assert message and "Traceback" not in message


def test_torchserve_answers_the_same_over_grpc_and_rest(served_predictions):
    if not {"torchserve-rest", "torchserve-grpc"} <= set(served_predictions):
        pytest.skip("the stack under test lacks one of TorchServe's two endpoints")
    rest, grpc = served_predictions["torchserve-rest"], served_predictions["torchserve-grpc"]
    assert np.array_equal(rest[1], grpc[1])
    np.testing.assert_array_equal(rest[0], grpc[0])  # the same handler, the same JSON: bit for bit


def test_the_two_frameworks_agree(stack, served_predictions, in_process_predictions):
    """Trained with the same seed, data and hyperparameters, the models agree on ≥ 95% of the test split."""
    tf_classes = served_predictions.get("tf-grpc", in_process_predictions["tf"])[1]
    torch_classes = served_predictions.get("flask-rest", in_process_predictions["torch"])[1]
    assert (tf_classes == torch_classes).mean() >= 0.95
