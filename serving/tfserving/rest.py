"""TensorFlow Serving's REST API (/v1/models/...) as a WSGI app, served by werkzeug's threaded server.

Why werkzeug: the REST server must share one process (and the loaded models) with the gRPC server, so a
pre-forking server such as gunicorn does not fit. werkzeug is well kept (Flask's own HTTP layer), parses
HTTP/1.1 with keep-alive and chunked bodies for us, and its ThreadedWSGIServer gives every connection its own
thread, so a slow or idle client never blocks others; model calls release the GIL, so threads suffice.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any, Callable, Iterable

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import ClosingIterator

from serving.protocol.errors import RequestError
from serving.protocol.rest import dumps, format_predict_response, load_json, parse_predict_body
from serving.tfserving.grpc_service import SIGNATURE_DEF_FIELD, build_metadata_response, build_status_response
from serving.tfserving.predictor import Predictor

logger = logging.getLogger("serving.tfserving")

# TensorFlow Serving's REST paths: /v1/models/<name>[/versions/<n> | /labels/<label>][/metadata | :<verb>]
PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<suffix>/metadata|:predict|:classify|:regress)?/?$"
)
# Bodies up to this much beyond the limit are read and dropped before the 413, so the client sees the
# answer instead of a connection reset while it is still sending.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024


def _json(status: int, document: Any, close: bool = False) -> Response:
    response = Response(dumps(document), status=status, mimetype="application/json")
    if close:
        response.headers["Connection"] = "close"
    return response


def _error(error: RequestError, close: bool = False) -> Response:
    return _json(error.http_status, error.body(), close)


class RestApp:
    """The WSGI application; counts requests in flight so a shutdown can wait for them."""

    def __init__(self, predictor: Predictor, max_request_bytes: int, timeout_s: float, max_concurrent: int) -> None:
        self.predictor = predictor
        self.max_request_bytes = max_request_bytes
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self._condition = threading.Condition()
        self._in_flight = 0
        self._draining = False

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        with self._condition:
            if self._draining:
                response = _error(RequestError("The server is shutting down.", "UNAVAILABLE"), close=True)
                return response(environ, start_response)
            self._in_flight += 1
        try:
            request = Request(environ)
            if not self._slots.acquire(timeout=self.timeout_s):
                response = _error(RequestError("The server is busy; try again.", "UNAVAILABLE"))
            else:
                try:
                    response = self.dispatch(request)
                finally:
                    self._slots.release()
            # The count drops only once the server has written the body (close() runs after the last byte).
            return ClosingIterator(response(environ, start_response), [self._finished])
        except BaseException:
            self._finished()
            raise

    def _finished(self) -> None:
        with self._condition:
            self._in_flight -= 1
            self._condition.notify_all()

    def drain(self, timeout_s: float) -> bool:
        """Refuse new requests (503) and wait for those in flight; False if some were still running at timeout."""
        with self._condition:
            self._draining = True
            return self._condition.wait_for(lambda: self._in_flight == 0, timeout=timeout_s)

    def dispatch(self, request: Request) -> Response:
        """Route one request; every refusal becomes {"error": ...} with TensorFlow Serving's status."""
        try:
            return self._route(request)
        except RequestError as error:
            return _error(error, close=error.http_status == 413)
        except Exception:  # unexpected: logged with traceback, answered 500, server keeps running
            logger.exception("REST %s %s failed unexpectedly.", request.method, request.path)
            return _json(500, {"error": "The request failed inside the server; see the server log."})

    def _route(self, request: Request) -> Response:
        match = PATH.match(request.path)
        if match is None:
            if not request.path.startswith("/v1/"):
                raise RequestError(f"Not found: {request.path}; the API lives under /v1/models/.", "NOT_FOUND")
            raise RequestError(f"Malformed request: {request.method} {request.path}.")
        name, label, suffix = match["name"], match["label"], match["suffix"]
        version = int(match["version"]) if match["version"] is not None else None
        if request.method == "GET" and suffix is None:
            return self._status(name, version, label)
        if request.method == "GET" and suffix == "/metadata":
            return self._metadata(name, version, label)
        if request.method == "POST" and suffix == ":predict":
            return self._predict(request, name, version, label)
        if request.method == "POST" and suffix in (":classify", ":regress"):
            raise RequestError(
                f"{suffix[1:]} is not implemented by this TensorFlow Serving–compatible server; use :predict.",
                "UNIMPLEMENTED",
            )
        raise RequestError(f"Malformed request: {request.method} {request.path}.")

    def _model_spec(self, spec, name: str, version: int | None, label: str | None) -> None:
        spec.name = name
        if version is not None:
            spec.version.value = version
        elif label is not None:
            spec.version_label = label

    def _status(self, name: str, version: int | None, label: str | None) -> Response:
        request = get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec, name, version, label)
        response = build_status_response(self.predictor.manager, request)
        return _json(200, _to_dict(response))

    def _metadata(self, name: str, version: int | None, label: str | None) -> Response:
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF_FIELD])
        self._model_spec(request.model_spec, name, version, label)
        response = build_metadata_response(self.predictor, request)
        return _json(200, _to_dict(response))

    def _predict(self, request: Request, name: str, version: int | None, label: str | None) -> Response:
        body = load_json(self._read_body(request))
        signature_name = body.get("signature_name") if isinstance(body, dict) else None
        servable, signature = self.predictor.resolve(
            name, version, label, signature_name if isinstance(signature_name, str) else None
        )
        parsed = parse_predict_body(body, signature.inputs)
        outputs = self.predictor.predict(servable, signature, parsed.inputs, timeout_s=self.timeout_s)
        return _json(200, format_predict_response(outputs, parsed.row_format))

    def _read_body(self, request: Request) -> bytes:
        limit = self.max_request_bytes
        too_large = RequestError(f"The request body is larger than this server's limit of {limit} bytes.", "RESOURCE_EXHAUSTED")
        length = request.content_length
        if length is not None and length > limit:
            if length <= limit + DRAIN_LIMIT_BYTES:
                while request.stream.read(1024 * 1024):
                    pass
            raise too_large
        request.max_content_length = limit  # also bounds chunked bodies, which have no Content-Length
        try:
            return request.get_data(cache=False)
        except RequestEntityTooLarge:
            raise too_large from None
        except ClientDisconnected:
            raise RequestError("The client closed the connection before sending the whole body.") from None


def _to_dict(message) -> dict:
    # TensorFlow Serving's REST layer prints its protos this way: field names as in the .proto, defaults included.
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler without a log line per request (the load/unload lines stay readable)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    def log(self, type: str, message: str, *args: Any) -> None:
        logger.debug("REST " + message, *args)


class RestServer:
    """The threaded HTTP server running RestApp in a background thread."""

    def __init__(self, app: RestApp, host: str, port: int, idle_timeout_s: float) -> None:
        handler = type("Handler", (_QuietHandler,), {"timeout": idle_timeout_s})  # closes idle keep-alive sockets
        self.app = app
        self.server: BaseWSGIServer = make_server(host, port, app, threaded=True, request_handler=handler)
        self._thread = threading.Thread(target=self.server.serve_forever, name="rest-server", daemon=True)

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.server_port

    def start(self) -> None:
        """Serve in the background."""
        self._thread.start()

    def stop(self, grace_s: float) -> bool:
        """Stop accepting connections, answer 503 on kept-alive ones, wait for in-flight requests."""
        self.server.shutdown()  # ends the accept loop
        self.server.server_close()  # closes the listening socket: new connections are refused
        return self.app.drain(grace_s)
