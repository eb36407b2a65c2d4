"""The page and its JSON API: the endpoint list, a test image, and one prediction asked of every endpoint.

    GET  /                      the page
    GET  /api/endpoints         {"endpoints": [{"key", "label"}, ...]}: one card each
    GET  /api/test-image[?index=N]   {"index", "label", "count", "image": 8×8}: a test-split image, random by default
    POST /api/predict           {"drawing": {"width", "height", "pixels": base64 ink bytes}} or {"image": 8×8 0..16}
                                → {"input": 8×8, "results": [{"key", "label", "class", "probabilities",
                                   "latency_ms", "version", "version_source", "format"} or {"key", "label", "error"}, ...]}

Mistakes in a request are a 400 with {"error": "one sentence"}, as on the model servers.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import random
import threading
from typing import Any

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from serving.playground import preprocess
from serving.playground.endpoints import Endpoint, EndpointError

logger = logging.getLogger("serving.playground")
page = Blueprint("playground", __name__)
MIN_SIDE, MAX_SIDE = preprocess.CELLS, 1024  # accepted drawing sizes, in pixels per side


class BadRequest(Exception):
    """A malformed request; the message is the one sentence the 400 carries."""


class Playground:
    """The endpoints, a lock so that one prediction's calls are timed without another's beside them, test images."""

    def __init__(self, endpoints: list[Endpoint], seed: int | None = None) -> None:
        self.endpoints = endpoints
        self.lock = threading.Lock()
        self.random = random.Random(seed)
        self._test_split = None

    @property
    def test_split(self):
        """The default dataset's test split (the one the served models were evaluated on), loaded on first use."""
        if self._test_split is None:
            from experiment.data import load_dataset

            self._test_split = load_dataset().test
        return self._test_split

    def ask_every_endpoint(self, image: np.ndarray) -> list[dict[str, Any]]:
        """One (8, 8) image to each endpoint in turn: a result or an error per endpoint, never an exception."""
        batch = image[np.newaxis].astype(np.float32)  # (1, 8, 8)
        results = []
        with self.lock:
            for endpoint in self.endpoints:
                card: dict[str, Any] = {"key": endpoint.key, "label": endpoint.label}
                try:
                    answer = endpoint.predict(batch)
                    probabilities = [float(value) for value in answer.probabilities[0]]
                    card.update(
                        {
                            "class": int(answer.classes[0]),
                            "probabilities": probabilities,
                            "latency_ms": round(answer.latency_ms, 3),
                            "version": answer.version,
                            "version_source": answer.version_source,
                            "format": answer.model_format,
                        }
                    )
                except EndpointError as error:
                    card["error"] = str(error)
                except Exception as error:  # one endpoint's fault must not hide the others' answers
                    logger.exception("Asking %s failed unexpectedly", endpoint.label)
                    card["error"] = f"Failed unexpectedly ({type(error).__name__}); see the playground's log."
                results.append(card)
        return results


def _playground() -> Playground:
    return current_app.extensions["playground"]


# ---- routes ----------------------------------------------------------------------------------------------------


@page.get("/")
def index() -> Response:
    """The page."""
    return current_app.send_static_file("index.html")


@page.get("/api/endpoints")
def list_endpoints() -> Response:
    """The model's name, and key and label of every endpoint, in the order the cards appear."""
    endpoints = [{"key": item.key, "label": item.label} for item in _playground().endpoints]
    return jsonify({"model": current_app.config["MODEL_NAME"], "endpoints": endpoints})


@page.get("/api/test-image")
def test_image() -> Response:
    """One image of the test split with its label: ?index=N, or a random one."""
    playground = _playground()
    split = playground.test_split
    index_text = request.args.get("index")
    if index_text is None:
        index = playground.random.randrange(len(split))
    else:
        try:
            index = int(index_text)
        except ValueError:
            raise BadRequest(f"index must be a whole number, got {index_text!r}.") from None
        if not 0 <= index < len(split):
            raise BadRequest(f"index must be between 0 and {len(split) - 1}, got {index}.")
    return jsonify(
        {
            "index": index,
            "label": int(split.labels[index]),
            "count": len(split),
            "image": split.images[index].tolist(),
        }
    )


@page.post("/api/predict")
def predict() -> Response:
    """Turn the drawing (or take the 8×8 image) into the model's input, ask every endpoint, answer both."""
    document = request.get_json(silent=True)
    image = parse_predict_body(document)
    results = _playground().ask_every_endpoint(image)
    return jsonify({"input": np.round(image, 3).tolist(), "results": results})


# ---- request bodies --------------------------------------------------------------------------------------------


def parse_predict_body(document: Any) -> np.ndarray:
    """The (8, 8) float32 input a predict body asks for; BadRequest in one sentence otherwise."""
    if not isinstance(document, dict) or ("drawing" in document) == ("image" in document):
        raise BadRequest('The body must be a JSON object with exactly one of "drawing" or "image".')
    if "image" in document:
        return parse_image(document["image"])
    try:
        return preprocess.drawing_to_input(parse_drawing(document["drawing"]))
    except preprocess.DrawingError as error:
        raise BadRequest(str(error)) from None


def parse_image(value: Any) -> np.ndarray:
    """An 8×8 list of numbers in 0..16 → float32 (8, 8)."""
    cells = preprocess.CELLS
    if not (
        isinstance(value, list)
        and len(value) == cells
        and all(isinstance(row, list) and len(row) == cells for row in value)
    ):
        raise BadRequest(f'"image" must be {cells} rows of {cells} numbers.')
    if not all(_is_number(cell) for row in value for cell in row):
        raise BadRequest(f'"image" must hold only numbers from 0 to {preprocess.MAX_VALUE:g}.')
    image = np.asarray(value, dtype=np.float64)
    if image.min() < 0 or image.max() > preprocess.MAX_VALUE:
        raise BadRequest(f'"image" values must lie between 0 and {preprocess.MAX_VALUE:g}.')
    return image.astype(np.float32)


def parse_drawing(value: Any) -> np.ndarray:
    """{"width", "height", "pixels": base64 of width × height ink bytes, row by row} → uint8 (height, width)."""
    if not isinstance(value, dict) or not {"width", "height", "pixels"} <= value.keys():
        raise BadRequest('"drawing" must be an object with "width", "height" and "pixels".')
    width, height, pixels = value["width"], value["height"], value["pixels"]
    for name, side in (("width", width), ("height", height)):
        if isinstance(side, bool) or not isinstance(side, int) or not MIN_SIDE <= side <= MAX_SIDE:
            raise BadRequest(f'"drawing" {name} must be a whole number from {MIN_SIDE} to {MAX_SIDE}, got {side!r}.')
    if not isinstance(pixels, str):
        raise BadRequest('"drawing" pixels must be a base64 string of one ink byte per pixel.')
    try:
        ink = base64.b64decode(pixels, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest('"drawing" pixels are not valid base64.') from None
    if len(ink) != width * height:
        raise BadRequest(f'"drawing" pixels hold {len(ink)} bytes; {width} × {height} needs {width * height}.')
    return np.frombuffer(ink, dtype=np.uint8).reshape(height, width)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---- errors ----------------------------------------------------------------------------------------------------


def handle_bad_request(error: BadRequest) -> tuple[Response, int]:
    """400 with the sentence."""
    return jsonify({"error": str(error)}), 400


def handle_http_exception(error: HTTPException) -> tuple[Response, int]:
    """Werkzeug's 404, 405, 413 ... as one JSON sentence instead of an HTML page."""
    status = error.code or 500
    if status == 404:
        message = f"No such page: {request.path}."
    elif status == 405:
        message = f"{request.method} is not allowed on {request.path}."
    elif status == 413:
        message = f"The request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes."
    else:
        message = (error.description or error.name).rstrip(".") + "."
    return jsonify({"error": message}), status


def handle_unexpected_error(error: Exception) -> tuple[Response, int]:
    """A fault of the playground itself: logged with its traceback, answered 500 in one sentence."""
    if isinstance(error, HTTPException):
        return handle_http_exception(error)
    logger.exception("Unhandled error on %s %s", request.method, request.path)
    return jsonify({"error": f"The playground failed ({type(error).__name__}); see its log."}), 500
