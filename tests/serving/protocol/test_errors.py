"""serving.protocol.errors: one error type, its gRPC code and the HTTP status TensorFlow Serving's REST API maps it to."""

from __future__ import annotations

import pytest

from serving.protocol.errors import MAX_MESSAGE_CHARS, QUOTED_LIMIT, RequestError, quoted


@pytest.mark.parametrize(
    "code, http_status",
    [
        ("INVALID_ARGUMENT", 400),
        ("FAILED_PRECONDITION", 400),
        ("NOT_FOUND", 404),
        ("RESOURCE_EXHAUSTED", 413),
        ("UNAVAILABLE", 503),
        ("UNIMPLEMENTED", 501),
        ("DEADLINE_EXCEEDED", 504),
        ("INTERNAL", 500),
        ("UNKNOWN", 500),
    ],
)
def test_each_grpc_code_has_tensorflow_servings_http_status(code, http_status):
    error = RequestError("Something was wrong.", code)
    assert (error.code, error.http_status) == (code, http_status)


def test_a_refusal_is_invalid_argument_by_default_with_a_one_sentence_body():
    error = RequestError("The request body is not valid JSON.")
    assert error.code == "INVALID_ARGUMENT" and error.http_status == 400
    assert error.body() == {"error": "The request body is not valid JSON."} and str(error) == error.message


def test_quoted_cuts_a_long_name_and_keeps_a_short_one():
    assert quoted("digits") == "digits" and quoted(17) == "17"
    cut = quoted("x" * 5000)
    assert len(cut) == QUOTED_LIMIT and cut.endswith("...") and cut.startswith("x" * 100)


def test_a_sentence_is_cut_to_the_limit_whatever_it_quotes():
    error = RequestError("Model " + "x" * 5000 + " is unknown.")
    assert len(error.message) == MAX_MESSAGE_CHARS and error.message.endswith("...") and str(error) == error.message


def test_a_lone_surrogate_in_a_sentence_is_escaped_so_that_utf8_can_encode_it():
    error = RequestError('Serving signature name: "\ud800" not found in signature def')
    assert error.message == 'Serving signature name: "\\ud800" not found in signature def'
    error.message.encode("utf-8")
