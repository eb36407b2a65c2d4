"""Request bodies every server decodes through serving.protocol: bounded in depth and values, numbers as rapidjson
reads them, and every refusal a RequestError (400) -- never a RecursionError, ValueError or MemoryError (a 500)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from serving.protocol import json_values, rest
from serving.protocol.errors import RequestError
from serving.protocol.json_predict import parse_predict
from serving.protocol.limits import MAX_JSON_DEPTH
from serving.protocol.signatures import TensorSpec

IMAGES = {"images": TensorSpec("images", "float32", (None, 8, 8))}


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b"[" * depth + leaf + b"]" * depth


@pytest.mark.parametrize(
    "text, depth",
    [
        (b"1", 0),
        (b'{"a": [[1], {"b": [2]}]}', 4),
        (b'{"a": "[[[[{{{{", "b": []}', 2),  # brackets inside strings do not count
        (b'{"a": "\\"[[[[", "b": "\\\\", "c": [[]]}', 3),  # nor after escaped quotes and backslashes
        (nested(10_000), 10_000),
    ],
)
def test_depth_is_counted_without_parsing(text, depth):
    assert json_values.json_depth(text) == depth


@pytest.mark.parametrize("load", [json_values.load_document, rest.load_json], ids=["tfserving", "flask/torchserve"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 1000, 100_000])
def test_bodies_nested_too_deep_are_one_sentence(load, depth):
    with pytest.raises(RequestError) as raised:
        load(b'{"instances": ' + nested(depth) + b"}")
    assert raised.value.http_status == 400 and f"at most {MAX_JSON_DEPTH}" in raised.value.message


def test_the_depth_scan_stays_linear_on_escaped_quotes():
    # 65 brackets, so that the scan runs, then a string of escaped quotes that never closes: one pattern for strings
    # with escapes backtracks from every quote here (14 s for these 40 kB)
    body = b'{"b": [' + b"[]," * 64 + b'[]], "a": "' + b'\\"' * 20_000 + b"}"
    started = time.perf_counter()
    with pytest.raises(RequestError, match="Missing a closing quotation mark"):
        json_values.load_document(body)
    assert time.perf_counter() - started < 2.0


def test_the_deepest_allowed_body_parses():
    document = json_values.load_document(b'{"instances": ' + nested(MAX_JSON_DEPTH - 1) + b"}")
    assert json_values.dense_shape(document["instances"]) == [1] * (MAX_JSON_DEPTH - 1)


@pytest.mark.parametrize(
    "body",
    [b'{"instances": [' + b"9" * 5000 + b"]}", b'{"instances": [-1e400]}', b'{"instances": [' + b"1" * 400 + b".0]}"],
    ids=["5000-digit integer", "-1e400", "400-digit decimal"],
)
def test_numbers_beyond_a_double_are_refused_where_rapidjson_refuses_them(body):
    with pytest.raises(RequestError) as raised:
        json_values.load_document(body)
    assert raised.value.message == "JSON Parse error: Number too big to be stored in double. at offset: 15"
    with pytest.raises(RequestError, match="not valid JSON: number too big to be stored in double at offset 15"):
        rest.load_json(body)


def test_integers_keep_64_bits_and_longer_ones_become_doubles():
    document = json_values.parse_json(
        b'{"v": [18446744073709551615, -9223372036854775808, 18446744073709551616, -9223372036854775809, 1e-400]}'
    )
    assert document["v"] == [2**64 - 1, -(2**63), float(2**64), -float(2**63), 0.0]
    assert [type(value) for value in document["v"]] == [int, int, float, float, float]


def test_a_long_integer_fills_a_float_tensor_as_the_real_server_does():
    document = json_values.load_document(b'{"instances": [' + b"1" + b"0" * 30 + b"]}")
    tensors, _ = parse_predict(document, {"x": "DT_FLOAT"})
    assert tensors["x"].tolist() == [np.float32(1e30)]
    with pytest.raises(RequestError, match="is not of expected type: int64"):
        parse_predict(document, {"x": "DT_INT64"})


def test_nan_and_infinity_are_read_and_flask_refuses_them_as_before():
    document = rest.load_json(b'{"instances": [[[NaN, Infinity, -Infinity, 1, 2, 3, 4, 5]] ]}')
    with pytest.raises(RequestError, match="NaN or infinity"):
        rest.parse_predict_body(
            document, {"images": TensorSpec("images", "float32", (None, 1, 8))}, allow_non_finite=False
        )


def test_utf16_bodies_are_read_as_json_reads_them():
    assert json_values.parse_json('{"a": ["[[["]}'.encode("utf-16")) == {"a": ["[[["]}


@pytest.mark.parametrize("load", [json_values.load_document, rest.load_json], ids=["tfserving", "flask/torchserve"])
def test_the_value_cap_refuses_before_building_anything(monkeypatch, load):
    monkeypatch.setattr(json_values, "MAX_REQUEST_ELEMENTS", 10)
    body = json.dumps({"instances": list(range(30))}).encode()
    with pytest.raises(RequestError, match="more than 10 values"):
        load(body)


def test_the_value_cap_applies_to_a_parsed_tensor(monkeypatch):
    monkeypatch.setattr(json_values, "MAX_REQUEST_ELEMENTS", 100)
    with pytest.raises(RequestError, match="more than 100 values"):
        json_values.to_tensor([[[0.0] * 8] * 8] * 2, "DT_FLOAT")
    with pytest.raises(RequestError, match="more than 100 values"):
        rest.to_array([[[0.0] * 8] * 8] * 2, IMAGES["images"])


def test_messages_quote_a_huge_document_without_writing_it_whole():
    document = {"instances": [[1.0] * 1000] * 1000, "inputs": []}
    with pytest.raises(RequestError) as raised:
        parse_predict(document, {"x": "DT_FLOAT"})
    assert len(raised.value.message) < 400 and raised.value.message.startswith('JSON Value: {"instances":[[1.0,')
