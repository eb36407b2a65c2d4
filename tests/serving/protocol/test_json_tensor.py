"""serving.protocol's JSON ⇄ tensor mapping, with the cases of TensorFlow Serving's own util/json_tensor_test.cc.

Each case keeps the reference test's name; the expected tensors, texts and error words are the reference's.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serving.protocol.errors import RequestError
from serving.protocol.json_examples import format_classifications, format_regressions, parse_examples
from serving.protocol.json_predict import format_predict, parse_predict
from serving.protocol.json_values import load_document, signature_name


def parse(text: str, dtypes: dict[str, str]) -> tuple[dict[str, np.ndarray], bool]:
    """FillPredictRequestFromJson: the body's tensors and whether it was in row format."""
    document = load_document(text)
    signature_name(document)
    return parse_predict(document, dtypes)


def refusal(text: str, dtypes: dict[str, str]) -> RequestError:
    with pytest.raises(RequestError) as raised:
        parse(text, dtypes)
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.http_status == 400
    return raised.value


def test_single_unnamed_tensor():
    tensors, row = parse('{"instances": [[1,2],[3,4],[5,6]]}', {"default": "DT_INT32"})
    assert row and tensors["default"].dtype == np.int32 and tensors["default"].tolist() == [[1, 2], [3, 4], [5, 6]]


def test_mixed_input_for_float_and_double_tensors():
    floats, _ = parse('{"instances": [1, 2.0, 3, 4, 5.003, 0.007, 0.0]}', {"default": "DT_FLOAT"})
    np.testing.assert_array_equal(floats["default"], np.array([1, 2, 3, 4, 5.003, 0.007, 0], np.float32))
    doubles, _ = parse('{"instances": [1.0, 2, 3, 4, 0.662, 0, 0.0]}', {"default": "DT_DOUBLE"})
    assert doubles["default"].dtype == np.float64 and doubles["default"].tolist() == [1, 2, 3, 4, 0.662, 0, 0]


def test_single_unnamed_tensor_with_signature():
    document = load_document('{"signature_name": "predict_images", "instances": [[1,2]]}')
    assert signature_name(document) == "predict_images"
    assert parse_predict(document, {"default": "DT_INT32"})[0]["default"].shape == (1, 2)


def test_base64_scalars_lists_and_named():
    scalars, _ = parse('{"instances": [{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}]}', {"default": "DT_STRING"})
    assert scalars["default"].tolist() == [b"hello", b"world"]
    lists, _ = parse('{"instances": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}', {"default": "DT_STRING"})
    assert lists["default"].shape == (2, 1)
    named, _ = parse(
        '{"instances": [{"default": [[{"b64": "aGVsbG8="}], [{"b64": "d29ybGQ="}]]}]}', {"default": "DT_STRING"}
    )
    assert named["default"].shape == (1, 2, 1) and named["default"].ravel().tolist() == [b"hello", b"world"]


MULTIPLE = {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING", "float_tensor": "DT_FLOAT", "dbl_tensor": "DT_DOUBLE"}


def test_multiple_named_tensors_with_non_finite_values():
    tensors, row = parse(
        '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"], "float_tensor": [1.0, NaN],'
        ' "dbl_tensor": [NaN]}, {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"],'
        ' "float_tensor": [2.0, Infinity], "dbl_tensor": [2.0]}]}',
        MULTIPLE,
    )
    assert (
        row
        and tensors["int_tensor"].shape == (2, 3, 2)
        and tensors["str_tensor"].tolist() == [[b"foo", b"bar"], [b"baz", b"bat"]]
    )
    assert tensors["float_tensor"].dtype == np.float32 and tensors["float_tensor"][1, 1] == math.inf
    assert math.isnan(tensors["dbl_tensor"][0, 0]) and tensors["dbl_tensor"].shape == (2, 1)


def test_columnar_format_named_unnamed_and_base64():
    named, row = parse('{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]]}}', {"int_tensor": "DT_INT32"})
    unnamed, _ = parse('{"inputs": [[[1,2],[3,4],[5,6]]]}', {"int_tensor": "DT_INT32"})
    assert not row and named["int_tensor"].shape == unnamed["int_tensor"].shape == (1, 3, 2)
    several, _ = parse(
        '{"inputs": {"int_tensor": [[[1,2],[3,4],[5,6]]], "str_tensor": ["foo", "bar"], "bin_tensor": {"b64": "aGVsbG8="}}}',
        {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING", "bin_tensor": "DT_STRING"},
    )
    assert several["bin_tensor"].shape == () and several["bin_tensor"].item() == b"hello"  # a scalar tensor


SINGLE_TENSOR_ERRORS = {
    "empty document": ("", "DT_INT32", "document is empty"),
    "signature name not a string": (
        '{"signature_name": 5, "instances": [[1,2],[3,4],[5,6,7]]}',
        "DT_INT32",
        "must be a string value",
    ),
    "both keys": ('{"instances": [[1,2]], "inputs": [[1,2]]}', "DT_INT32", "Not formatted correctly"),
    "different sizes": ('{"instances": [[1,2],[3,4],[5,6,7]]}', "DT_INT32", "Expecting tensor size"),
    "different shapes": ('{"instances": [[1,2],[3,4],[[5,6]]]}', "DT_INT32", "Expecting shape"),
    "scalar then list": ('{"instances": [1, [1]]}', "DT_INT32", "Expecting shape"),
    "strings for integers": ('{"instances": [[1,2],["a", "b"]]}', "DT_INT32", "not of expected type"),
    "double max for float": (
        f'{{"instances": [{float(np.finfo(np.float64).max)!r}]}}',
        "DT_FLOAT",
        "loss of precision",
    ),
    "2^24 + 1 for float": ('{"instances": [16777217]}', "DT_FLOAT", "loss of precision"),
    "2^53 + 1 for double": ('{"instances": [9007199254740993]}', "DT_DOUBLE", "loss of precision"),
}


@pytest.mark.parametrize("text, dtype, words", SINGLE_TENSOR_ERRORS.values(), ids=SINGLE_TENSOR_ERRORS.keys())
def test_single_unnamed_tensor_errors(text, dtype, words):
    assert words in refusal(text, {"default": dtype}).message


TWO = {"int_tensor": "DT_INT32", "str_tensor": "DT_STRING"}
MULTIPLE_TENSOR_ERRORS = {
    "different shapes": (
        '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]},'
        ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
        TWO,
        "Expecting shape",
    ),
    "different sizes": (
        '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6],[7,8]], "str_tensor": ["foo", "bar"]},'
        ' {"int_tensor": [[7,8],[9,0],[1,2]], "str_tensor": ["baz", "bat"]}]}',
        TWO,
        "Expecting tensor size",
    ),
    "object then list": (
        '{"instances": [{"int_tensor": [[1,2],[3,4],[5,6]], "str_tensor": ["foo", "bar"]}, [1, 20, 30],'
        ' {"int_tensor": [[[7,8],[9,0],[1,2]]], "str_tensor": ["baz", "bat"]}]}',
        TWO,
        "Expecting object but got list",
    ),
    "list then object": (
        '{"instances": [["baz", "bar"], {"str_tensor": ["baz", "bat"]}]}',
        {"str_tensor": "DT_STRING"},
        "Expecting value/list but got object",
    ),
}


@pytest.mark.parametrize("text, dtypes, words", MULTIPLE_TENSOR_ERRORS.values(), ids=MULTIPLE_TENSOR_ERRORS.keys())
def test_multiple_named_tensor_errors(text, dtypes, words):
    assert words in refusal(text, dtypes).message


def _outputs(**arrays):
    return {name: np.asarray(value) for name, value in arrays.items()}


INT_TENSOR = np.array([[[1, 2], [3, 4], [5, 6]], [[7, 8], [9, 0], [1, 2]]], np.int32)


def test_from_json_single_tensor_and_scalars():
    assert json.loads(format_predict(_outputs(int_tensor=INT_TENSOR), True)) == {"predictions": INT_TENSOR.tolist()}
    assert json.loads(format_predict(_outputs(int_tensor=INT_TENSOR), False)) == {"outputs": INT_TENSOR.tolist()}
    five = _outputs(int_tensor=np.arange(1, 6, dtype=np.int32))
    assert (
        format_predict(five, True) == '{"predictions":[1,2,3,4,5]}'
        and format_predict(five, False) == '{"outputs":[1,2,3,4,5]}'
    )


def test_from_json_single_bytes_tensor():
    strings = np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object)
    assert json.loads(format_predict({"str_tensor_bytes": strings}, True)) == {
        "predictions": [[{"b64": "aGVsbG8="}, {"b64": "d29ybGQ="}], [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}]]
    }


def test_six_digit_precision_and_non_finite_floats_are_written_as_the_real_server_writes_them():
    floats = np.array([[9000000, 999999, 0.5], [0.0003, 0.00003, 555557.5]], np.float32)
    assert (
        format_predict({"float_tensor": floats}, True)
        == '{"predictions":[[9e+06,999999.0,0.5],[0.0003,3e-05,555557.5]]}'
    )
    non_finite = np.array([[math.nan, math.inf], [3, -math.inf]], np.float32)
    assert format_predict({"float_tensor": non_finite}, True) == '{"predictions":[[NaN,Infinity],[3.0,-Infinity]]}'
    assert format_predict({"y": np.array([2.05], np.float32)}, False) == '{"outputs":[2.05]}'  # not 2.049999952316284


def test_from_json_tensor_errors():
    with pytest.raises(RequestError, match="empty tensor map"):
        format_predict({}, True)
    with pytest.raises(RequestError, match="tensor type: complex64"):
        format_predict({"tensor": np.array([1 + 2j], np.complex64)}, True)
    with pytest.raises(RequestError, match="no shape information"):
        format_predict({"tensor": np.array(1, np.int32)}, True)
    with pytest.raises(RequestError, match="inconsistent batch size"):
        format_predict(
            {"int_tensor": np.zeros((2, 3), np.int32), "str_tensor": np.array([[b"a"] * 3], dtype=object)}, True
        )


def test_from_json_multiple_named_tensors():
    outputs = _outputs(
        int_tensor=INT_TENSOR,
        str_tensor=np.array([[b"foo", b"bar"], [b"baz", b"bat"]], dtype=object),
        float_tensor=np.array([[1.0], [2.0]], np.float32),
        double_scalar_tensor=np.array([8.0, 9.0], np.float64),
        str_tensor_bytes=np.array([[b"hello", b"world"], [b"tf", b"serving"]], dtype=object),
    )
    rows = json.loads(format_predict(outputs, True))["predictions"]
    assert rows[1] == {
        "double_scalar_tensor": 9.0,
        "float_tensor": [2.0],
        "int_tensor": [[7, 8], [9, 0], [1, 2]],
        "str_tensor": ["baz", "bat"],
        "str_tensor_bytes": [{"b64": "dGY="}, {"b64": "c2VydmluZw=="}],
    }
    columns = json.loads(format_predict(outputs, False))["outputs"]
    assert columns["double_scalar_tensor"] == [8.0, 9.0] and columns["float_tensor"] == [[1.0], [2.0]]


def test_classify_regress_request_without_context():
    context, examples = parse_examples(
        load_document(
            '{"examples": [{"names": ["foo", "bar"], "ratings": [8.0, 9.0], "age": 20}, {"names": ["baz"], "ratings": 6.0}]}'
        )
    )
    assert context is None
    assert examples == [
        {"names": ("bytes_list", [b"foo", b"bar"]), "ratings": ("float_list", [8.0, 9.0]), "age": ("int64_list", [20])},
        {"names": ("bytes_list", [b"baz"]), "ratings": ("float_list", [6.0])},
    ]


def test_classify_regress_request_with_context_and_signature():
    document = load_document(
        '{"signature_name": "custom_signture", "context": {"query": "pizza", "location": ["sfo"]}, "examples": ['
        '{"names": ["foo", "bar"], "ratings": [8.0, 9.0, NaN, Infinity], "age": 20},'
        '{"names": ["baz", {"b64": "aGVsbG8="}], "ratings": 6.0, "intboolmix": [1, true, false]},'
        '{"names": "bar", "ratings": -Infinity}]}'
    )
    assert signature_name(document) == "custom_signture"
    context, examples = parse_examples(document)
    assert context == {"query": ("bytes_list", [b"pizza"]), "location": ("bytes_list", [b"sfo"])}
    assert examples[1] == {
        "names": ("bytes_list", [b"baz", b"hello"]),
        "ratings": ("float_list", [6.0]),
        "intboolmix": ("int64_list", [1, 1, 0]),
    }
    assert examples[2]["ratings"] == ("float_list", [-math.inf]) and math.isnan(examples[0]["ratings"][1][2])


EXAMPLE_ERRORS = {
    "signature name not a string": (
        '{"signature_name": ["hello"], "examples": [{"names": ["foo", "bar"]}]}',
        "'signature_name' key must be a string",
    ),
    "context not an object": ('{"context": [{"names": ["foo", "bar"]}]}', "Example must be JSON object"),
    "examples not a list": ('{"examples": {"names": ["foo", "bar"]}}', "list/array"),
    "example not an object": ('{"examples": [[{"names": ["foo", "bar"]}]]}', "Example must be JSON object"),
    "null value": ('{"examples": [{"names": [10, null]}]}', "names has element with unexpected JSON type: Null"),
    "int then float": ('{"examples": [{"names": [10, 10.0]}]}', "feature: names expecting type: int64"),
    "object value": (
        '{"examples": [{"names": [10, {"test": 10}]}]}',
        "names has element with unexpected JSON type: Object",
    ),
    "nested list": ('{"examples": [{"names": [[10], 20]}]}', "names has element with unexpected JSON type: Array"),
    "uint64": ('{"examples": [{"names": [20, 18446744073709551603]}]}', "Only int64 is supported"),
    "double max": (f'{{"examples": [{{"names": {float(np.finfo(np.float64).max)!r}}}]}}', "loss of precision"),
}


@pytest.mark.parametrize("text, words", EXAMPLE_ERRORS.values(), ids=EXAMPLE_ERRORS.keys())
def test_classify_regress_json_errors(text, words):
    with pytest.raises(RequestError) as raised:
        document = load_document(text)
        signature_name(document)
        parse_examples(document)
    assert raised.value.code == "INVALID_ARGUMENT" and words in raised.value.message


def test_json_from_classification_and_regression_results():
    classes = [[("car", 0.2), ("bike", 0.7), ("bus", 0.1)], [("car", 0.7), ("bike", 0.1), ("bus", 0.2)]]
    assert json.loads(format_classifications(classes)) == {"results": [[list(pair) for pair in row] for row in classes]}
    assert format_regressions([0.2, 0.9, 1.0]) == '{"results":[0.2,0.9,1.0]}'
    assert (
        format_regressions([0.2, math.inf, 1.0, -math.inf, math.nan]) == '{"results":[0.2,Infinity,1.0,-Infinity,NaN]}'
    )
    with pytest.raises(RequestError, match="empty ClassificationResults"):
        format_classifications([])
    with pytest.raises(RequestError, match="empty RegressionResults"):
        format_regressions([])


@pytest.mark.parametrize(
    "text, dtype, expected",
    [
        ('{"inputs": [true, false]}', "DT_BOOL", [True, False]),
        ('{"inputs": [300, 1]}', "DT_UINT8", [44, 1]),
        ('{"inputs": [4294967295]}', "DT_UINT32", [4294967295]),
        ('{"inputs": 7}', "DT_INT64", 7),
        ('{"inputs": [[]]}', "DT_HALF", [[]]),
    ],
)
def test_every_dtype_the_json_mapping_names(text, dtype, expected):
    assert parse(text, {"x": dtype})[0]["x"].tolist() == expected


@pytest.mark.parametrize(
    "text, dtype, code, words",
    [
        ('{"inputs": [1.5]}', "DT_HALF", "UNIMPLEMENTED", "to type: half"),
        ('{"inputs": [true, 1]}', "DT_FLOAT", "INVALID_ARGUMENT", "True is not of expected type: float"),
        ('{"inputs": [-1]}', "DT_UINT32", "INVALID_ARGUMENT", "not of expected type: uint32"),
        ('{"inputs": [1.0]}', "DT_INT64", "INVALID_ARGUMENT", "not of expected type: int64"),
        ('{"inputs": {"b64": "%%%"}}', "DT_STRING", "INVALID_ARGUMENT", "Unable to base64 decode"),
        ('{"inputs": 1}', "DT_STRING", "INVALID_ARGUMENT", "not of expected type: string"),
    ],
)
def test_values_the_dtype_does_not_take(text, dtype, code, words):
    with pytest.raises(RequestError) as raised:
        parse(text, {"x": dtype})
    assert raised.value.code == code and words in raised.value.message
