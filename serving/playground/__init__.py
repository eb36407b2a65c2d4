"""The playground: one page to draw a digit and see every endpoint answer side by side (`make playground`).

The page (static HTML, CSS and JavaScript in static/, no build step, nothing fetched from elsewhere) talks only to
this small Flask app, which turns the drawing into the model's input and asks each endpoint through the project's
clients. Server addresses and TorchServe's key stay here.

    python -m serving.playground [--port 8000] [--run-dir .run]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask
from werkzeug.exceptions import HTTPException

from serving.playground import routes
from serving.playground.endpoints import Endpoint

DEFAULTS: dict[str, Any] = {
    # A 1024 × 1024 drawing is 1 MiB of ink bytes, 1.4 MiB as base64; the page sends 256 × 256.
    "MAX_CONTENT_LENGTH": 2 * 1024 * 1024,
    "TEST_IMAGE_SEED": None,  # seed of the "random test image" choice; None: a different one each run
    "MODEL_NAME": "digits",  # the model the endpoints serve, named on the page
}


def create_app(endpoints: Sequence[Endpoint], test_config: Mapping[str, Any] | None = None) -> Flask:
    """The playground app asking these endpoints, one after another, for every prediction."""
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config.from_mapping(DEFAULTS)
    if test_config is not None:
        app.config.from_mapping(test_config)
    app.extensions["playground"] = routes.Playground(list(endpoints), seed=app.config["TEST_IMAGE_SEED"])
    app.register_blueprint(routes.page)
    app.register_error_handler(routes.BadRequest, routes.handle_bad_request)
    app.register_error_handler(HTTPException, routes.handle_http_exception)
    app.register_error_handler(Exception, routes.handle_unexpected_error)
    return app
