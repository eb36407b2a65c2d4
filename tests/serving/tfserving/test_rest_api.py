"""The REST API as TensorFlow Serving tests and documents it: http_rest_api_handler_test.cc and g3doc/api_rest.md.

The handler test's model is half_plus_two as "saved_model_half_plus_two_2_versions" with a label for version 123;
ours is half_plus_two_2_versions, versions 123 and 124, labels stable → 123 and canary → 124.
"""

from __future__ import annotations

import base64

import pytest

from tests.serving.tfserving.models import TWO_VERSIONS

pytestmark = pytest.mark.slow  # a server with nine models, started once for the session

MODEL = f"/v1/models/{TWO_VERSIONS}"
UNSUPPORTED = [  # UnsupportedApiCalls: (method, path, words of the INVALID_ARGUMENT answer)
    ("GET", "/v1/foo", "Malformed request"),
    ("POST", "/v1/foo", "Malformed request"),
    ("GET", "/v1/models", "Missing model name"),
    ("GET", "/v1/models/debug/model_name", "Malformed request"),
    ("POST", "/v1/models", "Malformed request"),
    ("GET", "/v1/models/foo:predict", "Malformed request"),
    ("GET", "/v1/models/foo/version/50:predict", "Malformed request"),
    ("POST", "/v1/models/foo/version/50:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/HELLO:regress", "Malformed request"),
    ("POST", f"/v1/models/foo/versions/{2**64 - 1}:regress", "Failed to convert version"),
    ("POST", "/v1/models/foo/metadata", "Malformed request"),
    ("POST", "/v1/models/foo/label/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/50/labels/some_label:regress", "Malformed request"),
    ("POST", "/v1/models/foo/versions/some_label:regress", "Malformed request"),
    ("PUT", "/v1/models/foo:predict", "Malformed request"),
]


@pytest.mark.parametrize(
    "method, path, words", UNSUPPORTED, ids=[f"{method} {path}" for method, path, _ in UNSUPPORTED]
)
def test_unsupported_api_calls(served, method, path, words):
    status, answer, response = served.rest(method, path)
    assert status == 400 and words in answer["error"]
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("path", ["/statuspage", "/index", "/v2/models/default"])
def test_paths_outside_the_api_are_not_found(served, path):  # kPathRegex: only /v1/... reaches the API
    assert served.rest("GET", path)[0] == 404


@pytest.mark.parametrize(
    "path", ["/v1/models/foo:predict", "/v1/models/foo/versions/50:predict", f"/v1/models/{TWO_VERSIONS}99:predict"]
)
def test_predict_model_name_version_errors(served, path):  # PredictModelNameVersionErrors
    assert served.rest("POST", path, {"instances": [1]})[0] == 404


PREDICT_ERRORS = [  # PredictRequestErrors: (path, body, HTTP status, words)
    (f"{MODEL}:predict", b"", 400, "JSON Parse error: The document is empty"),
    (f"{MODEL}:predict", b"instances = [1, 2]", 400, "JSON Parse error: Invalid value"),
    (f"{MODEL}:predict", {"instances": ["x", "y"]}, 400, "not of expected type: float"),
    (
        f"{MODEL}/labels/Version_Nonexistent:predict",
        {"instances": ["x", "y"]},
        400,
        "Unrecognized servable version label",
    ),
    (f"{MODEL}:predict", {"signature_name": 100}, 400, "'signature_name' key must be a string value."),
]


@pytest.mark.parametrize("path, body, status, words", PREDICT_ERRORS, ids=[words for *_, words in PREDICT_ERRORS])
def test_predict_request_errors(served, path, body, status, words):
    answer_status, answer, _ = served.rest("POST", path, body)
    assert answer_status == status and words in answer["error"]


PREDICTIONS = [  # Predict: (path, body, answer)
    (f"{MODEL}:predict", {"instances": [[1.0, 2.0], [3.0, 4.0]]}, {"predictions": [[2.5, 3.0], [3.5, 4.0]]}),
    (f"{MODEL}/versions/123:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    (f"{MODEL}/labels/stable:predict", {"instances": [1.0, 2.0]}, {"predictions": [2.5, 3.0]}),
    (
        f"{MODEL}/versions/123:predict",
        {"signature_name": "serving_default", "instances": [3.0, 4.0]},
        {"predictions": [3.5, 4.0]},
    ),
    (
        f"{MODEL}/versions/123:predict",
        {"signature_name": "serving_default", "inputs": [3.0, 4.0]},
        {"outputs": [3.5, 4.0]},
    ),
]


@pytest.mark.parametrize("path, body, expected", PREDICTIONS, ids=[f"{path} {body}" for path, body, _ in PREDICTIONS])
def test_predict(served, path, body, expected):
    status, answer, response = served.rest("POST", path, body)
    assert (status, answer) == (200, expected)
    assert response.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("where", ["", "/versions/123", "/labels/stable"])
def test_regress(served, where):  # Regress: x = 80 → 0.5 × 80 + 2
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 80.0}]}
    assert served.rest("POST", f"{MODEL}{where}:regress", body)[:2] == (200, {"results": [42]})


@pytest.mark.parametrize("where, x, score", [("", 20.0, 12), ("/versions/123", 10.0, 7), ("/labels/stable", 10.0, 7)])
def test_classify(served, where, x, score):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": x}]}
    assert served.rest("POST", f"{MODEL}{where}:classify", body)[:2] == (200, {"results": [[["", score]]]})


def _status(version: int) -> dict:
    return {"version": str(version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}


@pytest.mark.parametrize(
    "where, versions",
    [("", [124, 123]), ("/versions/123", [123]), ("/labels/stable", [123]), ("/labels/canary", [124])],
)
def test_get_status(served, where, versions):
    assert served.rest("GET", f"{MODEL}{where}")[:2] == (200, {"model_version_status": [_status(v) for v in versions]})


@pytest.mark.parametrize("where, version", [("", "124"), ("/versions/123", "123"), ("/labels/stable", "123")])
def test_get_model_metadata(served, where, version):
    status, answer, _ = served.rest("GET", f"{MODEL}{where}/metadata")
    assert status == 200
    assert answer["model_spec"] == {"name": TWO_VERSIONS, "signature_name": "", "version": version}
    regress = answer["metadata"]["signature_def"]["signature_def"]["regress_x_to_y"]
    assert regress["method_name"] == "tensorflow/serving/regress"
    assert regress["inputs"]["inputs"] == {
        "dtype": "DT_STRING",
        "tensor_shape": {"dim": [{"size": "-1", "name": ""}], "unknown_rank": False},
        "name": "tf_example:0",
    }


def test_url_matching_ignores_case_as_the_real_server_does(served):
    assert served.rest("GET", "/V1/MODELS/default")[0] == 200
    assert served.rest("POST", "/V1/Models/default:predict", {"instances": [2.0]})[:2] == (200, {"predictions": [3.0]})
    # The verb itself is compared as written: an upper-case one matches the path but is not an API.
    assert served.rest("POST", "/v1/models/default:PREDICT", {"instances": [2.0]})[0] == 400


# ---- g3doc/api_rest.md's examples -------------------------------------------------------------------------------


def test_documented_predict_regress_and_not_found(served):
    assert served.rest("POST", "/v1/models/half_plus_three:predict", {"instances": [1.0, 2.0, 5.0]})[:2] == (
        200,
        {"predictions": [3.5, 4.0, 5.5]},
    )
    regress = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}, {"x": 2.0}]}
    assert served.rest("POST", "/v1/models/half_plus_three:regress", regress)[:2] == (200, {"results": [3.5, 4.0]})
    status, answer, _ = served.rest("POST", "/v1/models/half:predict", {"instances": [1.0, 5.0]})
    assert (status, answer) == (404, {"error": "Servable not found for request: Latest(half)"})


def test_documented_named_instances_and_their_columnar_form(served):
    """The doc's row example (tag, signal, sensor) in our multi_io model's inputs, and its columnar twin."""
    rows = [
        {"x": [1.0, 2.0], "count": 3, "flag": True, "weight": 0.5, "tag": "foo"},
        {"x": [3.0, 4.0], "count": 4, "flag": False, "weight": 2.0, "tag": "barbaz"},
    ]
    expected = [
        {"total": 1.5, "doubled": 6, "negated": False, "weight_squared": 0.25, "tag_length": 3},
        {"total": 14.0, "doubled": 8, "negated": True, "weight_squared": 4.0, "tag_length": 6},
    ]
    assert served.rest("POST", "/v1/models/multi_io:predict", {"instances": rows})[:2] == (
        200,
        {"predictions": expected},
    )
    columns = {name: [row[name] for row in rows] for name in rows[0]}
    outputs = {name: [row[name] for row in expected] for name in expected[0]}
    assert served.rest("POST", "/v1/models/multi_io:predict", {"inputs": columns})[:2] == (200, {"outputs": outputs})


def test_documented_binary_values_in_and_out(served):
    """{"b64": ...} in; outputs named *_bytes come back as {"b64": ...}, other strings as text."""
    body = {"instances": [{"b64": base64.b64encode("ünïcode".encode()).decode()}, "plain"]}
    status, answer, _ = served.rest("POST", "/v1/models/strings:predict", body)
    assert status == 200
    assert answer["predictions"][0] == {
        "length": 7,
        "upper": "üNïCODE",
        "text_bytes": {"b64": body["instances"][0]["b64"]},
    }
    assert answer["predictions"][1] == {"length": 5, "upper": "PLAIN", "text_bytes": {"b64": "cGxhaW4="}}


def test_documented_json_conformance_nan_and_infinity(served):
    status, _answer, response = served.rest(
        "POST", "/v1/models/default:predict", b'{"instances": [NaN, Infinity, -Infinity]}'
    )
    assert (
        status == 200 and response.text.replace(" ", "").replace("\n", "") == '{"predictions":[NaN,Infinity,-Infinity]}'
    )


def test_documented_float_precision_and_short_float_output(served):
    status, _, response = served.rest("POST", "/v1/models/default:predict", {"instances": [0.1]})
    assert (
        status == 200 and "2.05" in response.text and "2.0499" not in response.text
    )  # float32 written in its own digits
