"""The cases of TensorFlow Serving's tensorflow_model_server_test.py, over gRPC and REST.

Each test names the reference test it ports; requests, expected answers and expected status codes are the
reference's. Our half_plus_two is version 123, as theirs. Cases left out are listed in docs/tfserving.md.
"""

from __future__ import annotations

import time

import grpc
import pytest
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_status_pb2,
    inference_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tests.serving.tfserving.support import (
    RPC_TIMEOUT_S,
    add_examples,
    model_spec_of,
    require_ours,
    rpc_error,
    x_request,
)

pytestmark = pytest.mark.slow  # a server with nine models, started once for the session


def verify_predict(
    prediction,
    expected: float,
    model_name: str = "default",
    signature_name: str = "serving_default",
    shape=(1,),
    output_filter=("y",),
    version: int = 123,
) -> None:
    """VerifyPredictRequest: y comes back as one DT_FLOAT in float_val, with the model spec that answered."""
    result = prediction.Predict(x_request(model_name, signature_name, shape, output_filter), RPC_TIMEOUT_S)
    assert "y" in result.outputs
    assert result.outputs["y"].dtype == types_pb2.DT_FLOAT
    assert list(result.outputs["y"].float_val) == [expected]  # typed field, not tensor_content
    assert model_spec_of(result.model_spec) == (model_name, signature_name, version)


def test_get_model_status(model_service):  # testGetModelStatus
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "default"
    (status,) = model_service.GetModelStatus(request, RPC_TIMEOUT_S).model_version_status
    assert (status.version, status.status.error_code) == (123, 0)


def test_classify(prediction):  # testClassify
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "classify_x_to_y"
    add_examples(request, 2.0)
    result = prediction.Classify(request, RPC_TIMEOUT_S)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert model_spec_of(result.model_spec) == ("default", "classify_x_to_y", 123)


def test_regress(prediction):  # testRegress
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "default", "regress_x_to_y"
    add_examples(request, 2.0)
    result = prediction.Regress(request, RPC_TIMEOUT_S)
    assert [regression.value for regression in result.result.regressions] == [3.0]
    assert model_spec_of(result.model_spec) == ("default", "regress_x_to_y", 123)


def test_multi_inference(prediction):  # testMultiInference
    check_multi_inference(prediction, "default")


def check_multi_inference(prediction, model_name: str) -> None:
    """_TestMultiInference: a regress and a classify task over the same Example, x = 2."""
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", "regress"), ("classify_x_to_y", "classify")):
        task = request.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = model_name, signature
        task.method_name = f"tensorflow/serving/{method}"
    add_examples(request, 2.0)
    result = prediction.MultiInference(request, RPC_TIMEOUT_S)
    assert len(result.results) == 2
    assert result.results[0].regression_result.regressions[0].value == 3.0
    assert result.results[1].classification_result.classifications[0].classes[0].score == 3.0
    for index, task in enumerate(request.tasks):
        assert model_spec_of(result.results[index].model_spec) == (model_name, task.model_spec.signature_name, 123)


# TF2 SavedModels write every signature with the predict method name; without --enable_signature_method_name_check
# (off by default, as in the real server) Classify, Regress and MultiInference serve them.


def test_classify_tf2(prediction):  # testClassifyTf2
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two_tf2", "classify_x_to_y"
    add_examples(request, 2.0)
    result = prediction.Classify(request, RPC_TIMEOUT_S)
    assert len(result.result.classifications) == 1 and len(result.result.classifications[0].classes) == 1
    assert result.result.classifications[0].classes[0].score == 3.0
    assert model_spec_of(result.model_spec) == ("half_plus_two_tf2", "classify_x_to_y", 123)


def test_regress_tf2(prediction):  # testRegressTf2
    request = regression_pb2.RegressionRequest()
    request.model_spec.name, request.model_spec.signature_name = "half_plus_two_tf2", "regress_x_to_y"
    add_examples(request, 2.0)
    result = prediction.Regress(request, RPC_TIMEOUT_S)
    assert [regression.value for regression in result.result.regressions] == [3.0]
    assert model_spec_of(result.model_spec) == ("half_plus_two_tf2", "regress_x_to_y", 123)


def test_multi_inference_tf2(prediction):  # testMultiInferenceTf2
    check_multi_inference(prediction, "half_plus_two_tf2")


def test_classify_and_regress_rest_tf2(served):  # testClassifyREST, testRegressREST on the TF2 model
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    assert served.rest("POST", "/v1/models/half_plus_two_tf2:classify", body)[:2] == (200, {"results": [[["", 3.0]]]})
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    assert served.rest("POST", "/v1/models/half_plus_two_tf2:regress", body)[:2] == (200, {"results": [3.0]})


def test_unknown_signature_key_is_failed_precondition_in_the_real_words(prediction):  # predict_util.cc's error
    error = rpc_error(prediction.Predict, x_request(signature_name="no_such_signature"))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error.details() == 'Serving signature key "no_such_signature" not found.'


def test_a_rest_call_over_the_rest_timeout_is_cut_at_the_deadline(served):  # --rest_api_timeout_in_ms=5000
    # The slow model's loop stops at max(x): 1000 finishes at once, 1e30 never would (its float counter stalls).
    assert served.rest("POST", "/v1/models/slow:predict", {"instances": [1000.0]})[0] == 200
    status, answer, _ = served.rest("POST", "/v1/models/slow:predict", {"instances": [1e30]})
    assert (status, answer) == (504, {"error": "Timed out waiting for notification"})
    assert served.rest("POST", "/v1/models/slow:predict", {"instances": [1000.0]})[0] == 200, "serving on afterwards"


@pytest.mark.parametrize("output_filter", [("y",), ()], ids=["output y", "every output"])
@pytest.mark.parametrize("shape", [(1,), (1, 1)], ids=["x of shape [1]", "batch input [1, 1]"])
def test_predict_saved_model(prediction, output_filter, shape):  # testPredictSavedModel (and batch_input)
    verify_predict(prediction, 3.0, shape=shape, output_filter=output_filter)


def test_bad_model(prediction):  # _TestBadModel: a model without signatures
    error = rpc_error(prediction.Predict, x_request("bad_half_plus_two", signature_name=""))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION


@pytest.mark.parametrize("output_filter", [("y",), ()], ids=["output y", "every output"])
def test_good_model_config(prediction, output_filter):  # testGoodModelConfig
    verify_predict(prediction, 3.0, model_name="half_plus_two", output_filter=output_filter)
    verify_predict(prediction, 4.0, model_name="half_plus_three", output_filter=output_filter)


def test_good_grpc_channel_args(prediction, served):  # testGoodGrpcChannelArgs
    require_ours(served, "the reference starts its server with --grpc_channel_arguments")
    verify_predict(prediction, 3.0, output_filter=())


def test_predict_over_a_unix_socket(served):  # testPredictUDS
    require_ours(served, "the socket is a flag of the server's command line")
    with grpc.insecure_channel(f"unix:{served.socket_path}") as channel:
        verify_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel), 3.0, output_filter=())


def test_classify_rest(served):  # testClassifyREST
    status, answer, _ = served.rest(
        "POST", "/v1/models/default:classify", {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert (status, answer) == (200, {"results": [[["", 3.0]]]})


def test_regress_rest(served):  # testRegressREST
    status, answer, _ = served.rest(
        "POST", "/v1/models/default:regress", {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    )
    assert (status, answer) == (200, {"results": [3.0]})


@pytest.mark.parametrize("key, answer_key", [("instances", "predictions"), ("inputs", "outputs")])
def test_predict_rest_row_and_columnar(served, key, answer_key):  # testPredictREST, testPredictColumnarREST
    status, answer, _ = served.rest("POST", "/v1/models/default:predict", {key: [2.0, 3.0, 4.0]})
    assert (status, answer) == (200, {answer_key: [3.0, 3.5, 4.0]})


def test_get_status_rest(served):  # testGetStatusREST
    status, answer, _ = served.rest("GET", "/v1/models/default")
    assert status == 200
    assert answer == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }


def test_get_model_metadata_rest(served):  # testGetModelMetadataREST
    status, answer, _ = served.rest("GET", "/v1/models/default/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": "default", "signature_name": "", "version": "123"}
    signatures = answer["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "classify_x_to_y", "regress_x_to_y", "regress_x_to_y2", "regress_x2_to_y3"} <= set(
        signatures
    )
    serving_default = signatures["serving_default"]
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    assert serving_default["inputs"]["x"]["dtype"] == "DT_FLOAT" and serving_default["inputs"]["x"]["name"] == "x:0"
    assert [dim["size"] for dim in serving_default["inputs"]["x"]["tensor_shape"]["dim"]] == ["-1", "1"]
    assert serving_default["outputs"]["y"]["name"] == "y:0"
    assert signatures["classify_x_to_y"]["inputs"]["inputs"]["dtype"] == "DT_STRING"
    assert set(signatures["classify_x_to_y"]["outputs"]) == {"scores"}


def test_prometheus_endpoint(served):  # testPrometheusEndpoint
    require_ours(served, "the reference starts its server with --monitoring_config_file")
    response = served.rest("GET", "/monitoring/prometheus/metrics")[2]
    assert response.status_code == 200 and "# TYPE" in response.text


def test_tf_saved_model_save(prediction):  # test_tf_saved_model_save: v1 * v2 * x with x of unknown rank
    verify_predict(prediction, 12.0, model_name="tf2_unknown_rank", output_filter=())


def test_tf_saved_model_save_multiple_signatures(prediction):  # test_tf_saved_model_save_multiple_signatures
    verify_predict(prediction, 2.0, model_name="tf2_two_signatures", signature_name="custom_signature_key")
    verify_predict(prediction, 1.0, model_name="tf2_two_signatures")


def test_readiness_probe_answers_servable_not_found(prediction):  # WaitForServerReady
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "intentionally_missing_model"
    started = time.monotonic()
    error = rpc_error(prediction.Predict, request)
    assert error.code() == grpc.StatusCode.NOT_FOUND and "Servable" in error.details()
    assert time.monotonic() - started < RPC_TIMEOUT_S
