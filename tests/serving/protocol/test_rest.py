"""serving.protocol.rest: TensorFlow Serving's REST predict body, parsed and answered as every server does."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serving.protocol import rest
from serving.protocol.errors import RequestError
from serving.protocol.signatures import TensorSpec

IMAGE = [[float(row + column) for column in range(3)] for row in range(2)]  # one (2, 3) example
IMAGES = {"images": TensorSpec("images", np.dtype(np.float32), (None, 2, 3))}
TWO_INPUTS = {
    "images": TensorSpec("images", np.dtype(np.float32), (None, 2, 3)),
    "ids": TensorSpec("ids", np.dtype(np.int64), (None,)),
}


@pytest.mark.parametrize(
    "body, row_format",
    [
        ({"instances": [IMAGE, IMAGE]}, True),
        ({"instances": [{"images": IMAGE}]}, True),
        ({"inputs": [IMAGE]}, False),
        ({"inputs": {"images": [IMAGE, IMAGE, IMAGE]}}, False),
    ],
)
def test_row_and_columnar_bodies_become_float32_arrays(body, row_format):
    parsed = rest.parse_predict_body(body, IMAGES)
    images = parsed.inputs["images"]
    assert parsed.row_format is row_format and parsed.signature_name is None
    assert images.dtype == np.float32 and images.shape[1:] == (2, 3)
    np.testing.assert_array_equal(images[0], IMAGE)


def test_named_instances_with_several_inputs_and_a_signature_name():
    body = {"signature_name": "other", "instances": [{"images": IMAGE, "ids": 7}, {"images": IMAGE, "ids": 8}]}
    parsed = rest.parse_predict_body(body, TWO_INPUTS)
    assert parsed.signature_name == "other"
    assert parsed.inputs["ids"].dtype == np.int64 and parsed.inputs["ids"].tolist() == [7, 8]


BAD_BODIES = {
    "not an object": ([IMAGE], IMAGES, "must be a JSON object"),
    "neither key": ({"examples": [IMAGE]}, IMAGES, "exactly one of"),
    "both keys": ({"instances": [IMAGE], "inputs": [IMAGE]}, IMAGES, "exactly one of"),
    "signature name not a string": ({"instances": [IMAGE], "signature_name": 3}, IMAGES, "must be a string"),
    "instances not a list": ({"instances": 3}, IMAGES, "must be a list"),
    "empty instances": ({"instances": []}, IMAGES, "empty batch"),
    "empty columnar batch": ({"inputs": []}, IMAGES, "has shape [0] but the model expects"),
    "mixed instances": ({"instances": [IMAGE, {"images": IMAGE}]}, IMAGES, "not a mix"),
    "unknown input": ({"inputs": {"pixels": [IMAGE]}}, IMAGES, "Unknown input 'pixels'"),
    "missing input": ({"inputs": {"images": [IMAGE]}}, TWO_INPUTS, "Missing input 'ids'"),
    "unnamed values, several inputs": ({"instances": [IMAGE]}, TWO_INPUTS, "each instance must be an object"),
    "instances naming different inputs": ({"instances": [{"images": IMAGE}, {"ids": 1}]}, TWO_INPUTS, "same inputs"),
    "ragged": ({"instances": [IMAGE, IMAGE[:1]]}, IMAGES, "ragged"),
    "strings": ({"instances": [[["x"] * 3] * 2]}, IMAGES, "must hold numbers, got string values"),
    "booleans": ({"instances": [[[True] * 3] * 2]}, IMAGES, "got boolean values"),
    "wrong shape": ({"instances": [[1.0, 2.0]]}, IMAGES, "has shape [1, 2] but the model expects float32 [N, 2, 3]"),
    "floats for integers": ({"inputs": {"images": [IMAGE], "ids": [1.5]}}, TWO_INPUTS, "expects integers (int64)"),
    "different batch sizes": ({"inputs": {"images": [IMAGE], "ids": [1, 2]}}, TWO_INPUTS, "different batch sizes"),
}


@pytest.mark.parametrize("body, inputs, message", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_client_mistakes_are_one_sentence_invalid_argument(body, inputs, message):
    with pytest.raises(RequestError) as raised:
        rest.parse_predict_body(body, inputs)
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.http_status == 400
    assert message in raised.value.message and raised.value.message.endswith(".")


def test_non_finite_values_are_refused_only_when_asked():
    body = {"instances": [[[math.inf] * 3] * 2]}
    assert np.isinf(rest.parse_predict_body(body, IMAGES).inputs["images"]).all()
    with pytest.raises(RequestError, match="NaN or infinity"):
        rest.parse_predict_body(body, IMAGES, allow_non_finite=False)
    too_large_for_float32 = {"instances": [[[1e39] * 3] * 2]}
    with pytest.raises(RequestError, match="NaN or infinity"):
        rest.parse_predict_body(too_large_for_float32, IMAGES, allow_non_finite=False)
    for value in (math.nan, -math.inf):
        one_bad = {"instances": [[[1.0, 2.0, 3.0], [4.0, 5.0, value]]]}
        with pytest.raises(RequestError, match="NaN or infinity"):
            rest.parse_predict_body(one_bad, IMAGES, allow_non_finite=False)
    largest = float(np.finfo(np.float32).max)
    assert rest.parse_predict_body({"instances": [[[largest] * 3] * 2]}, IMAGES, allow_non_finite=False)


def test_batch_size_limit():
    limit = 3
    assert (
        len(rest.parse_predict_body({"instances": [IMAGE] * limit}, IMAGES, max_batch_size=limit).inputs["images"]) == 3
    )
    with pytest.raises(RequestError) as raised:
        rest.parse_predict_body({"inputs": [IMAGE] * (limit + 1)}, IMAGES, max_batch_size=limit)
    assert raised.value.message == "The batch has 4 instances; this server accepts at most 3."


@pytest.mark.parametrize("raw", [b'{"instances": [', b"\xff\xfe", "not json"])
def test_bad_json_is_one_sentence(raw):
    with pytest.raises(RequestError, match="not valid JSON") as raised:
        rest.load_json(raw)
    assert "\n" not in raised.value.message


def test_answers_follow_the_request_format():
    outputs = {"probabilities": np.array([[0.25, 0.75], [1.0, 0.0]], np.float32), "classes": np.array([1, 0])}
    assert rest.format_predict_response(outputs, row_format=True) == {
        "predictions": [{"probabilities": [0.25, 0.75], "classes": 1}, {"probabilities": [1.0, 0.0], "classes": 0}]
    }
    assert rest.format_predict_response(outputs, row_format=False) == {
        "outputs": {"probabilities": [[0.25, 0.75], [1.0, 0.0]], "classes": [1, 0]}
    }
    single = {"classes": np.array([1, 0])}
    assert rest.format_predict_response(single, row_format=True) == {"predictions": [1, 0]}
    assert rest.format_predict_response(single, row_format=False) == {"outputs": [1, 0]}


def test_dumps_is_compact_and_writes_non_finite_floats_as_tensorflow_serving_does():
    text = rest.dumps({"outputs": [math.nan, math.inf, 1.5]})
    assert text == '{"outputs":[NaN,Infinity,1.5]}'
    assert json.loads(text)["outputs"][2] == 1.5


def test_is_finite_number():
    assert rest.is_finite_number(3) and rest.is_finite_number(0.5)
    assert not any(rest.is_finite_number(value) for value in (math.nan, math.inf, True, "3", None))
