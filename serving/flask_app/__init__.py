"""The Flask REST app serving the torch export (ONNX Runtime by default) with TensorFlow Serving's REST API (application factory).

Development:  FLASK_MODEL_BASE_PATH=models/torch/digits flask --app serving.flask_app run --port 5000
Production:   FLASK_MODEL_BASE_PATH=models/torch/digits python -m serving.flask_app (uvicorn, several workers)

Settings (defaults below) can be given as FLASK_<NAME> environment variables, e.g. FLASK_MODEL_VERSION=2.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from serving.flask_app import routes
from serving.flask_app.models import FORMATS, ModelManager
from serving.protocol import rest
from serving.protocol.errors import RequestError

DEFAULTS: dict[str, Any] = {
    "MODEL_BASE_PATH": "models/torch/digits",  # integer version folders with model.onnx (...) + metadata.json
    # Which file of a version answers: onnx (ONNX Runtime), pt2 (AOTInductor package) or torchscript (deprecated).
    "MODEL_FORMAT": "onnx",
    "MODEL_NAME": "digits",
    "MODEL_VERSION": None,  # serve this version only; None: the highest, switching when a newer one appears
    "MODEL_POLL_SECONDS": 1.0,  # TF Serving's --file_system_poll_wait_seconds; 0 turns polling off
    "MAX_BATCH_SIZE": rest.MAX_BATCH_SIZE,  # instances per request; more is a 400
    "MAX_CONTENT_LENGTH": 8 * 1024 * 1024,  # bytes per request body, chunked or not; more is a 413
    # Seconds a request body may take to arrive (python -m serving.flask_app reads it before the app runs); then 408.
    "BODY_TIMEOUT_SECONDS": 10.0,
}


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: defaults, then FLASK_* environment variables, then test_config; load the model, start polling."""
    app = Flask(__name__)
    app.config.from_mapping(DEFAULTS)
    app.config.from_prefixed_env()  # FLASK_MODEL_VERSION=2 → MODEL_VERSION=2 (values are parsed as JSON)
    if test_config is not None:
        app.config.from_mapping(test_config)
    _check_config(app.config)

    # Imported here, not at the top: prometheus_client chooses its multiprocess mode when first imported, and
    # `python -m serving.flask_app` imports this package before it points PROMETHEUS_MULTIPROC_DIR at its folder.
    from serving.flask_app.metrics import AppMetrics, CountingMiddleware

    metrics = AppMetrics()
    model_name = str(app.config["MODEL_NAME"])
    metrics.model_version.labels(model_name).set(0)

    def on_change() -> None:
        served = manager.current
        if served is not None:
            metrics.model_version.labels(served.name).set(served.version)

    manager = ModelManager(
        name=model_name,
        base_path=Path(app.config["MODEL_BASE_PATH"]),
        pinned_version=app.config["MODEL_VERSION"],
        poll_seconds=float(app.config["MODEL_POLL_SECONDS"]),
        on_change=on_change,
        model_format=str(app.config["MODEL_FORMAT"]),
    )
    app.extensions["model_manager"] = manager
    app.extensions["app_metrics"] = metrics

    app.url_map.converters["model_name"] = routes.ModelNameConverter
    app.register_blueprint(routes.api)
    app.wsgi_app = CountingMiddleware(app.wsgi_app, metrics)
    app.register_error_handler(RequestError, routes.handle_request_error)
    app.register_error_handler(HTTPException, routes.handle_http_exception)
    app.register_error_handler(Exception, routes.handle_unexpected_error)

    manager.poll_once()  # load synchronously when a version is there, so the first request finds it
    manager.start()
    return app


def _check_config(config: Mapping[str, Any]) -> None:
    """Refuse settings that cannot work, in one sentence naming the environment variable."""
    version = config["MODEL_VERSION"]
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"FLASK_MODEL_VERSION must be a positive integer, got {version!r}.")
    for name, minimum in (("MAX_BATCH_SIZE", 1), ("MODEL_POLL_SECONDS", 0), ("BODY_TIMEOUT_SECONDS", 0.001)):
        value = config[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"FLASK_{name} must be a number ≥ {minimum}, got {value!r}.")
    if config["MODEL_FORMAT"] not in FORMATS:
        raise ValueError(f"FLASK_MODEL_FORMAT must be one of {', '.join(FORMATS)}, got {config['MODEL_FORMAT']!r}.")
    limit = config["MAX_CONTENT_LENGTH"]
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ValueError(f"FLASK_MAX_CONTENT_LENGTH must be a positive number of bytes, got {limit!r}.")
