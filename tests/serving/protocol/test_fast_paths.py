"""The fast path of serving.protocol gives exactly what the exact path gives: orjson's decoding against the
standard-library path with rapidjson's rules."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from serving.protocol import json_values

BODIES = [
    b'{"instances": [[[0.0, 0.5, 1, 2.25, -3e-7, 1e300, 123456789, -0.0]]]}',
    b'{"inputs": {"a": [1, 2], "b": "text \\u00e9 \\ud83d\\ude00"}, "signature_name": "x"}',
    b' {"v": [18446744073709551615, -9223372036854775808, 18446744073709551616, -9223372036854775809, 1e-400]} ',
    b'{"a": {"a": 1, "a": 2}, "b": [true, false, null], "c": {}}',
    b"[" + b",".join(str(value).encode() for value in np.random.default_rng(0).standard_normal(500).tolist()) + b"]",
]


def same(a, b) -> bool:
    """Equal values of equal types (1 and 1.0 differ; NaN equals NaN)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize("body", BODIES)
def test_orjson_reads_what_the_exact_path_reads(body):
    assert same(json_values.parse_json(body), json_values._parse_json_exactly(body))


@pytest.mark.parametrize(
    "body", [b'{"a": [NaN, -Infinity]}', b'{"a": "\\ud800"}', b'{"a": 1e400}', b'{"a" 1}', b"[01]"]
)
def test_what_orjson_refuses_is_read_or_named_by_the_exact_path(body):
    try:
        expected = json_values._parse_json_exactly(body)
    except json_values.JsonSyntaxError as error:
        with pytest.raises(json_values.JsonSyntaxError) as raised:
            json_values.parse_json(body)
        assert (raised.value.reason, raised.value.offset) == (error.reason, error.offset)
    else:
        assert same(json_values.parse_json(body), expected)


def test_the_depth_bound_holds_on_the_fast_path():
    body = b'{"instances": ' + b"[" * 100 + b"1" + b"]" * 100 + b"}"
    json.loads(body)  # valid JSON that orjson would read
    with pytest.raises(json_values.RequestError, match="nests 101 levels"):
        json_values.parse_json(body)


@pytest.mark.parametrize("body", [*BODIES, b'{"a": [NaN]}'])
def test_without_orjson_every_body_takes_the_exact_path(monkeypatch, body):
    monkeypatch.setattr(json_values, "orjson", None)  # a TorchServe image without orjson runs the archive's copy
    assert same(json_values.parse_json(body), json_values._parse_json_exactly(body))
