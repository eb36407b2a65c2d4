"""The endpoints the playground asks, built on the project's clients: the one module that knows those clients.

Each endpoint is a label for its card and a callable taking float32 images (N, 8, 8) and returning an Answer:
probabilities, classes, the latency of the prediction call alone, and the model version that answered with where
that version was read. Adding an endpoint is one line in ENDPOINTS. Errors leave this module as EndpointError,
one sentence that names no address or key: the browser sees only what this module chooses to say.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import requests

from experiment.spec import CLASSES, PROBABILITIES
from serving import clients
from serving.clients.torchserve import metadata_from_description

logger = logging.getLogger("serving.playground")
# A page waits for every card; a server that hangs should not hold it for long.
CALL_TIMEOUT_S = 5.0
# Where each answer's model version comes from (shown in the card).
IN_RESPONSE = "in the response"
MODEL_STATUS = "from the model status"
MANAGEMENT_API = "from the management API"


class EndpointError(Exception):
    """The endpoint could not answer; the message is one sentence for the card, without addresses."""


@dataclasses.dataclass(frozen=True)
class Answer:
    """One endpoint's answer to one call."""

    probabilities: np.ndarray  # (N, 10) float32
    classes: np.ndarray  # (N,) int64
    latency_ms: float  # the prediction call only, not the version lookup
    version: str | None  # the model version that answered, None when the server would not say
    version_source: str  # IN_RESPONSE, MODEL_STATUS or MANAGEMENT_API
    model_format: str | None = None  # the format that answered (SavedModel, onnx, pt2, torchscript), when known


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One card of the page: a stable key, a label, and how to ask it."""

    key: str
    label: str
    predict: Callable[[np.ndarray], Answer]  # images float32 (N, 8, 8) → Answer; raises EndpointError
    close: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Caller:
    """What an adapter makes of a client: predict and close."""

    predict: Callable[[np.ndarray], Answer]
    close: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class StackAddresses:
    """Where the servers listen and how to authorise (kept on the backend, never sent to the page)."""

    model_name: str
    tf_grpc: str
    tf_rest: str
    flask: str
    torchserve: str
    torchserve_management: str
    torchserve_grpc: str
    torchserve_key_file: Path | None
    torchserve_grpc_management: str | None = None  # None: TorchServe's layout, the gRPC port + 1


def addresses_from_run_dir(run_dir: Path | str) -> StackAddresses:
    """The addresses of the stack `make serve` started in run_dir (the default ports when none did)."""
    from serving.runtime import Stack

    stack = Stack.from_run_dir(run_dir)
    addresses = {endpoint.name: endpoint.address for endpoint in stack.endpoints()}
    return StackAddresses(
        model_name=stack.model_name,
        tf_grpc=addresses["tf-grpc"],
        tf_rest=addresses["tf-rest"],
        flask=addresses["flask-rest"],
        torchserve=addresses["torchserve-rest"],
        torchserve_management=stack.torchserve_instance.management_url,
        torchserve_grpc=addresses["torchserve-grpc"],
        torchserve_grpc_management=stack.torchserve_instance.grpc_management_address,
        # Absent under `docker compose up` (token authorization off): the client then sends no key.
        torchserve_key_file=stack.torchserve_key_file,
    )


def served_input_shape(run_dir: Path | str) -> tuple[int, int] | None:
    """(H, W) of the newest TensorFlow export of the stack's model, from its metadata.json; None when unknown."""
    import json

    from serving.runtime import Stack

    stack = Stack.from_run_dir(run_dir)
    versions = sorted((path for path in stack.tf_base_path.glob("*") if path.name.isdigit()), key=lambda p: int(p.name))
    if not versions:
        return None
    try:
        height, width = json.loads((versions[-1] / "metadata.json").read_text())["network"]["input_shape"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(height), int(width)


def stack_is_running(run_dir: Path | str) -> bool:
    """True when run_dir holds a stack with at least one server process alive."""
    from serving.runtime import Stack

    return any(status.running for status in Stack.from_run_dir(run_dir).status())


# ---- adapters: one per kind of client, so that an endpoint is one line below -----------------------------------


def _grpc_endpoint(client: clients.TFServingGrpcClient) -> Caller:
    """TensorFlow Serving's PredictResponse names the version that answered in its model_spec."""

    def predict(images: np.ndarray) -> Answer:
        from serving.protocol.tensors import tensor_to_array

        response, latency_ms = _timed(client.description, lambda: client.predict_response(images))
        try:
            probabilities = tensor_to_array(response.outputs[PROBABILITIES], PROBABILITIES)
            classes = tensor_to_array(response.outputs[CLASSES], CLASSES)
        except Exception:  # noqa: BLE001 (any malformed answer is the server's, reported as one sentence)
            raise EndpointError(f"The server answered without '{PROBABILITIES}' and '{CLASSES}'.") from None
        version = str(response.model_spec.version.value) if response.model_spec.HasField("version") else None
        return Answer(
            probabilities.astype(np.float32), classes.astype(np.int64), latency_ms, version, IN_RESPONSE, "SavedModel"
        )

    return Caller(predict, client.close)


def _rest_endpoint(client: clients.RestClient, model_format: str | None = None) -> Caller:
    """TensorFlow Serving's REST predict body carries no version: ask the model status right after the call.

    model_format: the format this server always serves; None asks the metadata answer, where Flask names it.
    """

    def predict(images: np.ndarray) -> Answer:
        (probabilities, classes), latency_ms = _timed(client.description, lambda: client.predict(images))
        try:
            statuses = client.get_status()
        except (clients.ServingError, requests.RequestException) as error:
            logger.warning("Model status of %s failed after a prediction: %s", client.description, error)
            statuses = []
        available = [
            int(status["version"])
            for status in statuses
            if status.get("state") == "AVAILABLE" and str(status.get("version", "")).isdigit()
        ]
        # While a new version rolls out both may be AVAILABLE; a request without a version goes to the highest.
        version = str(max(available)) if available else None
        served_format = model_format
        if served_format is None:
            try:
                served_format = client.get_metadata().get("format")
            except (clients.ServingError, requests.RequestException, AttributeError) as error:
                logger.warning("Metadata of %s failed after a prediction: %s", client.description, error)
        return Answer(probabilities, classes, latency_ms, version, MODEL_STATUS, served_format)

    return Caller(predict, client.close)


def _torchserve_endpoint(client: clients.TorchServeClient | clients.TorchServeGrpcClient) -> Caller:
    """TorchServe's answer carries no version: its management API names the default version, which answered."""

    def predict(images: np.ndarray) -> Answer:
        description = getattr(client, "description", None) or f"TorchServe at {client.base_url}"
        (probabilities, classes), latency_ms = _timed(description, lambda: client.predict(images))
        version, served_format = None, None
        try:
            # customized: the handler's own description too, which names the file it runs.
            description = client.describe(customized=True)
            version = description.get("modelVersion")
            served_format = metadata_from_description(description, "").get("format")
        except (clients.ServingError, requests.RequestException, ValueError, AttributeError) as error:
            logger.warning("TorchServe's management API failed after a prediction: %s", error)
        return Answer(
            probabilities, classes, latency_ms, None if version is None else str(version), MANAGEMENT_API, served_format
        )

    return Caller(predict, client.close)


# ---- the endpoints ---------------------------------------------------------------------------------------------

Adapter = Callable[[StackAddresses], Caller]

# key (stable, used by the page and tests), label (the card's title), how to reach it.
ENDPOINTS: tuple[tuple[str, str, Adapter], ...] = (
    (
        "tf-grpc",
        "TensorFlow Serving · gRPC",
        lambda at: _grpc_endpoint(clients.TFServingGrpcClient(at.tf_grpc, at.model_name, timeout_s=CALL_TIMEOUT_S)),
    ),
    (
        "tf-rest",
        "TensorFlow Serving · REST",
        lambda at: _rest_endpoint(
            clients.RestClient(at.tf_rest, at.model_name, timeout_s=CALL_TIMEOUT_S), "SavedModel"
        ),
    ),
    (
        "flask-rest",
        "Flask · REST",
        lambda at: _rest_endpoint(clients.RestClient(at.flask, at.model_name, timeout_s=CALL_TIMEOUT_S)),
    ),
    (
        "torchserve-rest",
        "TorchServe · REST",
        lambda at: _torchserve_endpoint(
            clients.TorchServeClient(
                at.torchserve, at.model_name, at.torchserve_key_file, at.torchserve_management, timeout=CALL_TIMEOUT_S
            )
        ),
    ),
    (
        "torchserve-grpc",
        "TorchServe · gRPC",
        lambda at: _torchserve_endpoint(
            clients.TorchServeGrpcClient(
                at.torchserve_grpc,
                at.model_name,
                at.torchserve_key_file,
                at.torchserve_grpc_management,
                timeout=CALL_TIMEOUT_S,
                token_url=at.torchserve_management,
            )
        ),
    ),
)


def connect(addresses: StackAddresses) -> list[Endpoint]:
    """One Endpoint per line of ENDPOINTS, with its client made (connections open lazily, on the first call)."""
    endpoints = []
    for key, label, adapter in ENDPOINTS:
        caller = adapter(addresses)
        endpoints.append(Endpoint(key, label, caller.predict, caller.close))
    return endpoints


# ---- errors ----------------------------------------------------------------------------------------------------

# host:port and URLs, removed from any server sentence before it reaches the page.
_ADDRESS = re.compile(r"(?:[a-z]+://)?(?:\[[0-9a-f:]+\]|[\w.-]+):\d{2,5}[^\s,;)]*", re.IGNORECASE)


# What a client raises when its server cannot answer (the servers' own errors, transport errors, odd responses).
_CLIENT_FAILURES = (
    clients.ServingError,
    clients.TorchServeError,
    requests.RequestException,
    TimeoutError,
    KeyError,
    ValueError,
)


def _timed(description: str, call: Callable[[], Any]) -> tuple[Any, float]:
    """call()'s result and its milliseconds; every client failure becomes EndpointError (the full error is logged)."""
    started = time.perf_counter()
    try:
        result = call()
    except _CLIENT_FAILURES as error:
        logger.warning("%s failed: %s", description, error)
        raise EndpointError(_sentence(error, description)) from None
    return result, (time.perf_counter() - started) * 1000


def _sentence(error: Exception, description: str) -> str:
    """One sentence for the card saying what went wrong, without the server's address."""
    status = getattr(error, "status", None)
    if isinstance(error, (requests.Timeout, TimeoutError)) or status == "DEADLINE_EXCEEDED":
        return f"No answer within {CALL_TIMEOUT_S:g} s."
    if status == 503:
        return "The server is up but has no model version ready (HTTP 503)."
    if isinstance(error, (clients.ServerUnavailableError, requests.ConnectionError)):
        return "Not reachable: the server is stopped, still starting or shutting down."
    if isinstance(error, (clients.ServingError, clients.TorchServeError)):
        detail = str(error).replace(description, "the server")
        detail = _ADDRESS.sub("the server", detail).strip().rstrip(".")
        return detail[:1].upper() + detail[1:] + "."
    return f"The server's answer could not be read ({type(error).__name__})."
