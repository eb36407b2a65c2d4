"""serving.protocol.errors: one error type, its gRPC code and the HTTP status TensorFlow Serving's REST API maps it to."""

from __future__ import annotations

import pytest

from serving.protocol.errors import RequestError


@pytest.mark.parametrize(
    "code, http_status",
    [("INVALID_ARGUMENT", 400), ("FAILED_PRECONDITION", 400), ("NOT_FOUND", 404), ("RESOURCE_EXHAUSTED", 413),
     ("UNAVAILABLE", 503), ("UNIMPLEMENTED", 501), ("DEADLINE_EXCEEDED", 504), ("INTERNAL", 500), ("UNKNOWN", 500)],
)  # fmt: skip
def test_each_grpc_code_has_tensorflow_servings_http_status(code, http_status):
    error = RequestError("Something was wrong.", code)
    assert (error.code, error.http_status) == (code, http_status)


def test_a_refusal_is_invalid_argument_by_default_with_a_one_sentence_body():
    error = RequestError("The request body is not valid JSON.")
    assert error.code == "INVALID_ARGUMENT" and error.http_status == 400
    assert error.body() == {"error": "The request body is not valid JSON."} and str(error) == error.message
