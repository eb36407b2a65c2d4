"""The servers under test, started through serving.runtime on free ports: the whole stack over a models folder (the
tests use tests.local_stack over freshly trained exports), or one server alone over a copy the caller may change
first (a corrupt newest version, say).
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from serving import runtime
from serving.runtime import Ports, ServerProcess, ServerSpec, Stack, flask_app, tfserving, torchserve
from tests.robustness.targets import RestTarget

START_TIMEOUT_S = 180  # TorchServe's JVM and workers on a busy 2-core machine
FLASK_ENVIRONMENT = {"FLASK_MODEL_POLL_SECONDS": "0.5", "WEB_CONCURRENCY": "2"}
SERVERS = ("tfserving", "flask", "torchserve")


@dataclasses.dataclass
class Running:
    """One server process and how the checks reach it."""

    name: str
    spec: ServerSpec
    process: ServerProcess
    target: RestTarget
    grpc_address: str | None = None  # the TF server's gRPC port
    folder: Path | None = None  # the base path or model store a server of its own serves


def start_stack(models_dir: Path, run_dir: Path) -> Stack:
    """The three servers over an existing models folder (the probe's) on free ports, ready; the caller stops it."""
    stack = Stack(ports=Ports.free(), run_dir=run_dir, models_dir=models_dir)
    stack.start(timeout=START_TIMEOUT_S, train=False, report=lambda line: None)
    return stack


def stack_servers(stack: Stack) -> dict[str, Running]:
    """Each running server of a stack (by name) with its REST target and, for the TF server, its gRPC address."""
    found = {}
    for spec in stack.specs():
        process = ServerProcess.find(spec, stack.pid_path(spec.name), stack.log_path(spec.name))
        if process is not None:
            key_file = stack.torchserve_key_file if spec.name == "torchserve" else None
            found[spec.name] = _running(spec, process, key_file)
    return found


def _running(spec: ServerSpec, process: ServerProcess, key_file: Path | None = None) -> Running:
    rest = next(endpoint for endpoint in spec.endpoints if endpoint.protocol == "REST")
    grpc_address = next((e.address for e in spec.endpoints if e.name == "tf-grpc"), None)
    return Running(spec.name, spec, process, RestTarget.from_endpoint(rest, key_file), grpc_address)


def server_spec(name: str, folder: Path, work_dir: Path) -> tuple[ServerSpec, Path | None]:
    """The spec of one server on free ports over folder (a TF or TorchScript base path, or a model store), and
    TorchServe's key file (None for the others)."""
    if name == "tfserving":
        return tfserving.spec(tfserving.TFServingPorts.free(), "digits", folder), None
    if name == "flask":
        return flask_app.spec(runtime.free_port(), "digits", folder, environment=FLASK_ENVIRONMENT), None
    instance = torchserve.TorchServeInstance.on_free_ports((work_dir / "torchserve").resolve())
    return torchserve.spec(instance, folder), instance.key_file


def launch(name: str, folder: Path, work_dir: Path, wait: bool) -> Running:
    """Start one server over folder; with wait, until its ready probe passes (else right after the launch)."""
    spec, key_file = server_spec(name, folder, work_dir)
    log_path = work_dir / f"{name}.log"
    if wait:
        process = runtime.start(spec, log_path, START_TIMEOUT_S)
    else:
        if spec.prepare is not None:
            spec.prepare()
        process = runtime.launch(spec, log_path)
    running = _running(spec, process, key_file)
    running.folder = folder
    return running


def copy_models(name: str, tf_export: Path, torch_export: Path, destination: Path) -> Path:
    """A private copy of what server `name` serves, version 1 only (a base path), or the model store for TorchServe."""
    if name == "torchserve":
        store = destination / "model-store"
        shutil.copytree(torch_export.parent.parent / "model-store", store)
        return store
    base = destination / "digits"
    shutil.copytree(tf_export if name == "tfserving" else torch_export, base / "1")
    return base
