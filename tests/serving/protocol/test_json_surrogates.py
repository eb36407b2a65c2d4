"""Lone UTF-16 surrogates in JSON strings: refused while decoding, as rapidjson refuses them, never read into a str
that no transport can encode (which made a 500)."""

from __future__ import annotations

import json
import time

import pytest

from serving.protocol import json_values, rest
from serving.protocol.errors import RequestError

REFUSAL = "The surrogate pair in string is invalid."


@pytest.mark.parametrize(
    "text, offset",
    [
        (rb'{"a": "\ud800"}', 7),
        (rb'{"a": "\uDC00"}', 7),  # a low half alone
        (rb'{"a": "\ud800x"}', 7),
        (rb'{"a": "\ud800\n"}', 7),  # followed by another escape
        (rb'{"a": "\ud800\ud800\udc00"}', 7),  # two high halves
        (rb'{"a": "\ud800\udc00\udc00"}', 19),  # a pair, then a low half alone
        (rb'{"a": "\uD83D\uDE00x", "b": "\ud800"}', 29),
        (rb'{"a": "\\\ud800"}', 9),  # an escaped backslash, then the escape
        (rb'{"a": "\\ud800\udc00"}', 14),  # the text "\ud800" (its backslash escaped), then a low half alone
    ],
)
def test_the_first_lone_surrogate_is_found_at_its_escape(text, offset):
    json.loads(text)  # json itself reads every one of these
    assert json_values._invalid_surrogate_offset(text) == offset


@pytest.mark.parametrize(
    "text",
    [
        rb'{"a": "\ud800\udc00"}',
        rb'{"a": "\uDBFF\uDFFF\u0041\ud7ff\ue000"}',
        rb'{"a": "\\ud800"}',  # a backslash, then the text ud800
        rb'{"a": "\\\\\ud800\udc00"}',
        b'{"a": [1, 2]}',
    ],
)
def test_pairs_and_escaped_backslashes_are_not_refused(text):
    assert json_values._invalid_surrogate_offset(text) is None
    json_values.parse_json(text)


@pytest.mark.parametrize("load", [json_values.load_document, rest.load_json], ids=["tfserving", "flask/torchserve"])
def test_a_lone_surrogate_is_a_400_sentence_on_every_server(load):
    with pytest.raises(RequestError) as raised:
        load(b'{"signature_name": "\\ud800", "instances": [[1.0]]}')
    assert raised.value.http_status == 400 and "surrogate pair in string is invalid" in raised.value.message
    assert "offset 20" in raised.value.message or "offset: 20" in raised.value.message


def test_a_syntax_error_before_the_surrogate_is_the_one_reported():
    with pytest.raises(json_values.JsonSyntaxError) as raised:
        json_values.parse_json(b'{"a" 1, "b": "\\ud800"}')
    assert raised.value.reason != REFUSAL
    with pytest.raises(json_values.JsonSyntaxError) as raised:
        json_values.parse_json(b'{"b": "\\ud800", "a" 1}')
    assert (raised.value.reason, raised.value.offset) == (REFUSAL, 7)


def test_the_check_stays_fast_on_a_large_body_of_escapes():
    body = b'{"a": "' + b"\\ud800\\udc00" * 1_000_000 + b"\\\\" * 1_000_000 + b'\\udc00"}'
    started = time.perf_counter()
    assert json_values._invalid_surrogate_offset(body) == len(body) - 8
    assert time.perf_counter() - started < 2.0
