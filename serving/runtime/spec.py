"""What the runtime knows about one server: how to start it, when it is ready, how to stop it and how to reach it.

`ServerSpec` is built by one function per server (`serving.runtime.tfserving`, `.flask_app`, `.torchserve`). Its
`endpoints` are the one place that says which client speaks to which endpoint; its `examples` are the lines
`make serve` prints to try each address by hand.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from experiment.errors import UsageError

if TYPE_CHECKING:
    from serving.clients import PredictionClient

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
DEFAULT_MODEL_NAME = "digits"
DEFAULT_CLIENT_TIMEOUT_S = 10.0  # seconds per call
# The first image of scikit-learn's digits (a 0), for the curl lines; pixel values 0..16 as the model expects.
SAMPLE_IMAGE = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]


class ServerError(UsageError):
    """Something the user can fix stopped a server (a port in use, a server that did not come up)."""


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One way to ask a served model for predictions: a protocol at an address, and the client that speaks it."""

    name: str  # "tf-grpc", "tf-rest", "flask-rest", "torchserve-rest"
    server: str  # the spec's name: "tfserving", "flask", "torchserve"
    title: str  # the server as a reader knows it: "TF Serving (compatible)", "Flask + uvicorn", "TorchServe"
    framework: str  # whose export it serves: "tf" or "torch"
    protocol: str  # "gRPC" or "REST"
    address: str  # "127.0.0.1:8500" for gRPC, a base URL for REST
    model_name: str
    connect: Callable[[str, float], PredictionClient]  # (model name, seconds per call) → a serving.clients client

    def client(self, model_name: str | None = None, timeout: float = DEFAULT_CLIENT_TIMEOUT_S) -> PredictionClient:
        """A new client for this endpoint (model_name defaults to the served model); the caller closes it."""
        return self.connect(model_name or self.model_name, timeout)


@dataclasses.dataclass(frozen=True)
class Example:
    """One entry of the list `make serve` prints: an address and a command that tries it."""

    label: str
    protocol: str
    address: str
    command: str


@dataclasses.dataclass
class ServerSpec:
    """How to start one server, how to tell that its model is ready, how to stop it, and how to reach it."""

    name: str
    title: str
    command: list[str]
    ports: dict[str, int]  # what the port is for → port
    is_ready: Callable[[], bool]  # True once the model answers; an exception counts as "not yet"
    endpoints: list[Endpoint] = dataclasses.field(default_factory=list)
    examples: list[Example] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)  # printed after the examples
    environment: Mapping[str, str | None] = dataclasses.field(default_factory=dict)  # None removes a variable
    working_directory: Path = PROJECT_ROOT
    stop_command: list[str] | None = None  # run before the signals, with the same environment and folder
    prepare: Callable[[], None] | None = None  # checks and config files before the launch; may raise ServerError
    needs: tuple[str, ...] = ()  # exports it serves: "tf", "torch" (model.onnx), "torch-archive" (.mar)
    remove_after_stop: tuple[Path, ...] = ()  # files the server leaves that must not outlive it (expired keys)

    def endpoint(self, name: str) -> Endpoint:
        """The endpoint of this server with that name (KeyError naming the ones it has)."""
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        raise KeyError(f"{self.name} has no endpoint {name!r}; it has {[e.name for e in self.endpoints]}.")


def display_path(path: Path | str) -> str:
    """A path relative to the current folder when it lies below it, for shorter copy-paste lines."""
    with contextlib.suppress(ValueError):
        return str(Path(path).absolute().relative_to(Path.cwd()))
    return str(path)


def client_command(python: str) -> str:
    """`<python> -m serving.client`, with the interpreter's path shortened for display."""
    return f"{display_path(Path(python))} -m serving.client"


def curl_command(url: str, key_command: str | None = None) -> str:
    """A curl line that sends SAMPLE_IMAGE in TensorFlow Serving's row format (with a bearer key when given)."""
    body = json.dumps({"instances": [SAMPLE_IMAGE]}, separators=(",", ":"))
    authorization = f' -H "Authorization: Bearer $({key_command})"' if key_command else ""
    # TorchServe reads a body as JSON only when told so; TF Serving and Flask accept the header too.
    return f"curl -s -H 'Content-Type: application/json'{authorization} -d '{body}' {url}"
