"""Fixtures for the serving tests: stub servers for the runtime, and real servers on free ports through the runtime."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from serving import runtime
from serving.runtime import Endpoint, ServerProcess, flask_app, torchserve
from tests.serving import stubs

START_TIMEOUT_S = 180  # workers importing torch on a busy 2-core machine


@pytest.fixture
def stub_script(tmp_path: Path) -> Path:
    """The stub server's script, written into the test's folder."""
    path = tmp_path / "stub_server.py"
    path.write_text(stubs.STUB_SERVER)
    return path


@pytest.fixture
def make_stub(stub_script: Path):
    """Build a ServerSpec for the stub server: mode ok | crash | never | stubborn."""

    def build(name: str, mode: str = "ok", delay: float = 0.0, port: int | None = None) -> runtime.ServerSpec:
        return stubs.stub_spec(stub_script, name, mode, delay, port)

    return build


# --- torch serving (the Flask app on uvicorn, TorchServe) ---------------------------------------------------------


@dataclasses.dataclass
class FlaskUnderTest:
    """The Flask server (python -m serving.flask_app), and the folder of versions it polls."""

    server: ServerProcess
    url: str
    base_path: Path


@dataclasses.dataclass
class TorchServeUnderTest:
    """A TorchServe, its folder and ports, its REST endpoint, and what its readiness looked like while it started."""

    server: ServerProcess
    instance: torchserve.TorchServeInstance
    endpoint: Endpoint
    observations: list[SimpleNamespace]


@pytest.fixture(scope="module")
def flask_server(torch_trained, tmp_path_factory):
    """The Flask server with two workers on a free port, serving a copy of torch_trained's export as version 1 of base_path
    (so tests may add versions); stopped after the module."""
    work_dir = tmp_path_factory.mktemp("flask_server")
    base_path = work_dir / "digits"
    shutil.copytree(torch_trained.export_path, base_path / "1")
    port = runtime.free_port()
    spec = flask_app.spec(
        port, base_path=base_path, environment={"FLASK_MODEL_POLL_SECONDS": "0.5", "WEB_CONCURRENCY": "2"}
    )
    with runtime.start(spec, work_dir / "flask.log", START_TIMEOUT_S) as server:
        yield FlaskUnderTest(server, f"http://127.0.0.1:{port}", base_path)


@pytest.fixture(scope="module")
def torchserve_server(torch_trained, tmp_path_factory):
    """TorchServe on free ports with torch_trained's digits.mar, started once per module (its JVM is slow to start).

    While it starts, records (ping status, workers READY per the client) until it is ready; stopped after the module.
    """
    import requests

    run_dir = tmp_path_factory.mktemp("torchserve").resolve()  # as TorchServe's command lines name it
    instance = torchserve.TorchServeInstance.on_free_ports(run_dir)
    spec = torchserve.spec(instance, torch_trained.export_path.parent.parent / "model-store")
    spec.prepare()
    server = ServerProcess.launch(spec, run_dir / "torchserve.out")
    endpoint = spec.endpoint("torchserve-rest")
    client = endpoint.client()
    observations = []
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                ping = requests.get(f"{instance.inference_url}/ping", timeout=2).status_code
            except requests.RequestException:
                ping = None
            available = client.is_available()
            observations.append(SimpleNamespace(ping=ping, available=available, at=time.monotonic()))
            if available:
                break
            if not server.is_running() or time.monotonic() > deadline:
                raise RuntimeError(f"TorchServe did not become ready:\n{server.log_tail()}")
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    finally:
        client.close()
    with server:
        yield TorchServeUnderTest(server, instance, endpoint, observations)
