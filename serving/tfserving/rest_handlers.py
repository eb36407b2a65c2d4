"""TensorFlow Serving's REST API handlers: (method, path, body) in, (HTTP status, JSON text) out, as the real server.

The HTTP front end (serving.tfserving.rest) reads requests and writes answers; this module decides them, as the
real server's HttpRestApiHandler does. Paths are matched with its patterns, case-insensitively (/V1/MODELS/x works),
and only GET and POST are routed:

    GET  /v1/models/<name>[/versions/<n> | /labels/<label>]            model status
    GET  /v1/models/<name>[/versions/<n> | /labels/<label>]/metadata   model metadata (signature_def)
    POST /v1/models/<name>[/versions/<n> | /labels/<label>]:(predict|classify|regress)

Anything else under /v1/ is INVALID_ARGUMENT "Malformed request" (400); outside /v1/ nothing answers (404).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import urllib.parse

from google.protobuf import json_format
from tensorflow.core.example import example_pb2
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    input_pb2,
    regression_pb2,
)

from serving.protocol.errors import RequestError, quoted
from serving.protocol.json_examples import Feature, format_classifications, format_regressions, parse_examples
from serving.protocol.json_predict import format_predict, parse_predict
from serving.protocol.json_values import load_document, signature_name
from serving.tfserving import inference
from serving.tfserving.grpc_service import SIGNATURE_DEF_FIELD, build_metadata_response, build_status_response
from serving.tfserving.predictor import Predictor
from serving.tfserving.servable import DEFAULT_SIGNATURE

logger = logging.getLogger("serving.tfserving")

# The real server's patterns (http_rest_api_util.cc), matched against the whole path. Its RE2 \d is ASCII only, so
# these are too: a version of full-width or Arabic-Indic digits is a malformed request, not version 123.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE | re.DOTALL)
PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE | re.ASCII,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE | re.ASCII
)
INT64_MAX = 2**63 - 1
INT64_DIGITS = len(str(INT64_MAX))


@dataclasses.dataclass(frozen=True)
class RestAnswer:
    """An HTTP status and JSON body, with the model and API the request named (for metrics; empty if none)."""

    status: int
    body: str
    model_name: str = ""
    method: str = ""

    @property
    def content_type(self) -> str:
        """Always JSON, errors included."""
        return "application/json"


@dataclasses.dataclass
class _Route:
    model_name: str = ""
    version: int | None = None
    label: str | None = None
    method: str = ""  # predict, classify, regress (POST) or metadata (GET); as written in the path
    matched: bool = False


def _route(http_method: str, path: str) -> _Route:
    pattern = PREDICTION_PATH if http_method == "POST" else STATUS_PATH if http_method == "GET" else None
    match = pattern.fullmatch(path) if pattern is not None else None
    if match is None:
        return _Route()
    name, version, label, method = match.groups()
    route = _Route(urllib.parse.unquote(name or ""), None, None, method or "", True)
    if version:
        # Compared as text first: int() of thousands of digits is slow, and past 4300 refuses with a ValueError.
        if len(version.lstrip("0")) > INT64_DIGITS or int(version) > INT64_MAX:
            raise RequestError(f"Failed to convert version: {quoted(version)} to numeric.")
        route.version = int(version)
    if label:
        route.label = urllib.parse.unquote(label)
    return route


class RestHandler:
    """Answers REST requests for one Predictor; thread-safe (it keeps no state of its own)."""

    def __init__(self, predictor: Predictor, timeout_s: float | None = None) -> None:
        self.predictor = predictor
        self.timeout_s = timeout_s

    def handle(self, http_method: str, path: str, body: bytes = b"") -> RestAnswer:
        """The answer to one request: 200 and the result, or TensorFlow Serving's status and {"error": ...}."""
        if not API_PATH.fullmatch(path):
            return _error(RequestError(f"Not found: {quoted(path)}; the API lives under /v1/models/.", "NOT_FOUND"))
        route = _Route()
        try:
            route = _route(http_method, path)
            return RestAnswer(200, self._dispatch(http_method, path, route, body), route.model_name, route.method)
        except RequestError as error:
            return _error(error, route)
        except Exception:  # unexpected: logged with traceback, answered 500, the server keeps running
            logger.exception("REST %s %s failed unexpectedly.", http_method, quoted(path))
            return _error(RequestError("The request failed inside the server; see the server log.", "INTERNAL"), route)

    def _dispatch(self, http_method: str, path: str, route: _Route, body: bytes) -> str:
        if route.matched and http_method == "POST" and route.method in ("predict", "classify", "regress"):
            return getattr(self, "_" + route.method)(route, body)
        if route.matched and http_method == "GET":
            if not route.model_name:
                raise RequestError("Missing model name in request.")
            return self._metadata(route) if route.method == "metadata" else self._status(route)
        raise RequestError(f"Malformed request: {http_method} {quoted(path)}")

    def _status(self, route: _Route) -> str:
        request = get_model_status_pb2.GetModelStatusRequest()
        _fill_spec(request.model_spec, route)
        response = build_status_response(self.predictor.manager, request)
        return json.dumps(_to_dict(response), separators=(",", ":"))

    def _metadata(self, route: _Route) -> str:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        _fill_spec(request.model_spec, route)
        response = build_metadata_response(self.predictor, request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_defs)
        # As the real server prints it: the SignatureDefMap itself under "signature_def", no Any type URL.
        document = {
            "model_spec": _to_dict(response.model_spec),
            "metadata": {SIGNATURE_DEF_FIELD: _to_dict(signature_defs)},
        }
        return json.dumps(document, separators=(",", ":"))

    def _predict(self, route: _Route, body: bytes) -> str:
        document = load_document(body)
        name = signature_name(document) or DEFAULT_SIGNATURE
        servable = self.predictor.servable(route.model_name, route.version, route.label)
        signature = servable.signatures.get(name)
        if signature is None:
            raise RequestError(f'Serving signature name: "{quoted(name)}" not found in signature def')
        # No true/false anywhere in the body: numbers can convert in one NumPy call per input.
        may_hold_booleans = b"true" in body or b"false" in body
        inputs, row_format = parse_predict(document, signature.input_dtypes(), may_hold_booleans)
        outputs = self.predictor.predict(servable, signature, inputs, timeout_s=self.timeout_s)
        return format_predict(outputs, row_format)

    def _classify(self, route: _Route, body: bytes) -> str:
        request = classification_pb2.ClassificationRequest()
        self._fill_examples(request, route, body, "classify")
        servable = self.predictor.servable(route.model_name, route.version, route.label)
        response = inference.classify(servable, request, self._runner())
        return format_classifications(
            [[(entry.label, entry.score) for entry in classes.classes] for classes in response.result.classifications]
        )

    def _regress(self, route: _Route, body: bytes) -> str:
        request = regression_pb2.RegressionRequest()
        self._fill_examples(request, route, body, "regress")
        servable = self.predictor.servable(route.model_name, route.version, route.label)
        response = inference.regress(servable, request, self._runner())
        return format_regressions([regression.value for regression in response.result.regressions])

    def _fill_examples(self, request, route: _Route, body: bytes, method: str) -> None:
        _fill_spec(request.model_spec, route)
        document = load_document(body)
        request.model_spec.signature_name = signature_name(document)
        context, examples = parse_examples(document, method)
        fill_input(request.input, context, examples)

    def _runner(self) -> inference.Runner:
        return lambda servable, signature, inputs, aliases: self.predictor.run_signature(
            servable, signature, inputs, aliases, self.timeout_s
        )


def fill_input(request_input: input_pb2.Input, context: dict[str, Feature] | None, examples: list) -> None:
    """The Input proto of a classify/regress request: Examples, with a shared context when the body has one."""
    if context is None:
        target = request_input.example_list.examples
    else:
        _fill_example(request_input.example_list_with_context.context, context)
        target = request_input.example_list_with_context.examples
    for features in examples:
        _fill_example(target.add(), features)


def _fill_example(example: example_pb2.Example, features: dict[str, Feature]) -> None:
    for name, (kind, values) in features.items():
        feature = example.features.feature[name]  # an entry with no values is still listed, as the real server does
        if kind is not None:
            getattr(feature, kind).value.extend(values)


def _fill_spec(spec, route: _Route) -> None:
    spec.name = route.model_name
    if route.version is not None:
        spec.version.value = route.version
    elif route.label is not None:
        spec.version_label = route.label


def _to_dict(message) -> dict:
    # TensorFlow Serving's REST layer prints its protos this way: field names as in the .proto, defaults included.
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _error(error: RequestError, route: _Route | None = None) -> RestAnswer:
    body = json.dumps({"error": error.message}, ensure_ascii=False)
    return RestAnswer(error.http_status, body, route.model_name if route else "", route.method if route else "")
