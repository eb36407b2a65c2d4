"""The HTTP API: TensorFlow Serving's REST paths for predict, status and metadata, plus health, readiness, metrics."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import BaseConverter

from experiment.spec import INPUT_NAME
from serving.flask_app.models import LoadedModel, ModelManager
from serving.protocol import rest
from serving.protocol.errors import RequestError
from serving.protocol.json_predict import format_predict
from serving.protocol.signatures import require_signature

api = Blueprint("api", __name__)
JSON_CONTENT_TYPE = "application/json"


class ModelNameConverter(BaseConverter):
    """A model name in a path: anything but '/' and ':', so '/v1/models/digits:predict' splits as TF Serving does."""

    regex = r"[^/:]+"


def json_response(document: Any, status: int = 200) -> Response:
    """A compact JSON response (serving.protocol.rest.dumps: NaN and Infinity as TensorFlow Serving writes them)."""
    return current_app.response_class(rest.dumps(document), status=status, mimetype="application/json")


def _manager() -> ModelManager:
    return current_app.extensions["model_manager"]


def _served_model(name: str, version: int | None) -> LoadedModel:
    """The loaded model if name (and version, when given) match it; RequestError 404 or 503 otherwise."""
    manager = _manager()
    if name != manager.name:
        raise RequestError(f"Model {name!r} is not served here; this server serves {manager.name!r}.", "NOT_FOUND")
    model = manager.current  # read once: a concurrent swap cannot change the model under this request
    if model is None:
        raise RequestError(manager.describe_missing(), "UNAVAILABLE")
    if version is not None and version != model.version:
        raise RequestError(
            f"Version {version} of model {name!r} is not loaded; the loaded version is {model.version}.", "NOT_FOUND"
        )
    return model


# Prediction ----------------------------------------------------------------------------------------------------


@api.post("/v1/models/<model_name:name>:predict")
@api.post("/v1/models/<model_name:name>/versions/<int:version>:predict")
def predict(name: str, version: int | None = None) -> Response:
    """TensorFlow Serving's predict: row ("instances") or columnar ("inputs") body, answered in the same format.

    The answer is written once, as JSON text, the way the real server writes it (serving.protocol.json_predict).
    """
    model = _served_model(name, version)
    data = request.get_data(cache=False)  # 413 here if over MAX_CONTENT_LENGTH
    try:
        parsed = rest.parse_predict_body(
            rest.load_json(data),
            model.signature.inputs,
            allow_non_finite=False,
            max_batch_size=current_app.config["MAX_BATCH_SIZE"],
        )
    except RequestError:
        raise
    except (RecursionError, ValueError, OverflowError, TypeError):
        # serving.protocol bounds depth and numbers before decoding; anything else a body makes it raise is still
        # the body's fault, never a 500.
        raise RequestError(rest.UNREADABLE_BODY) from None
    require_signature(parsed.signature_name, model.signature.name)
    outputs = model.predict(parsed.inputs[INPUT_NAME])  # images float32 (N, H, W)
    return Response(format_predict(outputs, parsed.row_format), content_type=JSON_CONTENT_TYPE)


# Status and metadata --------------------------------------------------------------------------------------------


@api.get("/v1/models/<model_name:name>")
@api.get("/v1/models/<model_name:name>/versions/<int:version>")
def model_status(name: str, version: int | None = None) -> Response:
    """TensorFlow Serving's model status: the loaded version, state AVAILABLE, first.

    When it is a fallback (a newer version failed to load), the failed version follows with state END, its error
    code and a message saying which version is served instead.
    """
    model = _served_model(name, version)
    status = {"version": str(model.version), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    statuses = [status]
    failure = _manager().newer_failure()
    if version is None and failure is not None and failure.version > model.version:
        message = (
            f"Version {failure.version} failed to load ({failure.error_message.rstrip('.')}); "
            f"serving version {model.version}, the newest that loads."
        )
        statuses.append(
            {
                "version": str(failure.version),
                "state": "END",
                "status": {"error_code": failure.error_code, "error_message": message},
            }
        )
    return json_response({"model_version_status": statuses})


@api.get("/v1/models/<model_name:name>/metadata")
@api.get("/v1/models/<model_name:name>/versions/<int:version>/metadata")
def model_metadata(name: str, version: int | None = None) -> Response:
    """TensorFlow Serving's model metadata: the serving signature's input and output names, dtypes and shapes."""
    model = _served_model(name, version)
    return json_response(
        {
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {model.signature.name: model.signature.to_json()}}},
            "format": model.format,  # which file answers: onnx, pt2 or torchscript (FLASK_MODEL_FORMAT)
        }
    )


# Operations -----------------------------------------------------------------------------------------------------


@api.get("/healthz")
def healthz() -> Response:
    """Liveness: the process answers."""
    return json_response({"status": "alive"})


@api.get("/readyz")
def readyz() -> Response:
    """Readiness: 200 once a model version is loaded, 503 with the reason until then."""
    manager = _manager()
    model = manager.current
    if model is None:
        return json_response({"error": manager.describe_missing()}, 503)
    return json_response({"status": "ready", "model": model.name, "version": model.version, "format": model.format})


@api.get("/metrics")
def metrics() -> Response:
    """Prometheus text exposition of every worker's metrics."""
    payload, content_type = current_app.extensions["app_metrics"].exposition()
    return current_app.response_class(payload, mimetype=None, content_type=content_type)


# Error handlers (registered on the app, so they also cover paths no route matches) -----------------------------


def handle_request_error(error: RequestError) -> Response:
    """A refused request: {"error": sentence} with TensorFlow Serving's HTTP status."""
    return json_response(error.body(), error.http_status)


def handle_http_exception(error: HTTPException) -> Response:
    """Werkzeug's HTTP errors (404 no route, 405, 413, ...) as one JSON sentence instead of an HTML page."""
    status = error.code or 500
    if status == 404:
        message = f"No such path: {request.path}; predict with POST /v1/models/<name>:predict."
    elif status == 405:
        valid_methods = getattr(error, "valid_methods", None) or []
        methods = [method for method in valid_methods if method not in ("HEAD", "OPTIONS")]
        allowed = ", ".join(sorted(methods)) or "another method"
        message = f"{request.method} is not allowed on {request.path}; use {allowed}."
    elif status == 413:
        limit = current_app.config.get("MAX_CONTENT_LENGTH")
        message = (
            f"The request body is larger than this server's limit of {limit} bytes."
            if limit
            else ("The request body is too large.")
        )
    else:
        message = (error.description or error.name).rstrip(".") + "."
    response = json_response({"error": message}, status)
    if status == 405 and getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def handle_unexpected_error(error: Exception) -> Response:
    """A fault of the server itself (never a client's mistake): logged with its traceback, answered 500 in JSON."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    current_app.logger.exception("Unhandled error on %s %s", request.method, request.path)
    return json_response({"error": "Internal server error; see the server log."}, 500)
