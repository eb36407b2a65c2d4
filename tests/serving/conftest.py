"""Fixtures for the serving tests: free ports, and servers started on them with models exported by the pipelines."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- torch serving (Flask under gunicorn, TorchServe) ------------------------------------------------------------


def _start_flask_server(export_path: Path, work_dir: Path) -> SimpleNamespace:
    """gunicorn with two workers serving a copy of export_path as version 1 of base_path (so tests may add versions)."""
    import requests

    base_path = work_dir / "digits"
    shutil.copytree(export_path, base_path / "1")
    port = free_port()
    environment = {
        **os.environ,
        "FLASK_MODEL_BASE_PATH": str(base_path),
        "FLASK_MODEL_POLL_SECONDS": "0.5",
        "WEB_CONCURRENCY": "2",
    }
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn_conf.py makes a fresh one
    log_path = work_dir / "gunicorn.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "serving/gunicorn_conf.py", "-b", f"127.0.0.1:{port}",
             "serving.flask_app:create_app()"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    server = SimpleNamespace(process=process, url=f"http://127.0.0.1:{port}", base_path=base_path, log_path=log_path)
    deadline = time.monotonic() + 180  # two workers importing torch on a busy 2-core machine
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {process.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=2).status_code == 200:
                return server
        except requests.RequestException:
            pass
        time.sleep(0.3)
    _stop_flask_server(server)
    raise TimeoutError(f"gunicorn was not ready in time:\n{log_path.read_text()[-3000:]}")


def _stop_flask_server(server: SimpleNamespace, timeout: float = 60.0) -> int | None:
    """SIGTERM (gunicorn's graceful stop) and wait; returns the exit status."""
    if server.process.poll() is None:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    return server.process.returncode


def _start_torchserve_observed(model_store: Path, run_dir: Path):
    """Start TorchServe without waiting, and record (ping status, workers READY per the client) until it is ready."""
    import requests

    from serving.torchserve.launch import TorchServePorts, start_torchserve, stop_torchserve

    ports = TorchServePorts(*(free_port() for _ in range(5)))
    handle = start_torchserve(model_store, ports, run_dir, token_auth=True, wait_seconds=None)
    client = handle.client()
    observations = []
    deadline = time.monotonic() + 240
    try:
        while True:
            try:
                ping = requests.get(f"{handle.inference_url}/ping", timeout=2).status_code
            except requests.RequestException:
                ping = None
            available = client.is_available()
            observations.append(SimpleNamespace(ping=ping, available=available, at=time.monotonic()))
            if available:
                break
            if handle.pid() is None or time.monotonic() > deadline:
                raise RuntimeError(f"TorchServe did not become ready; see {handle.log_dir}")
            time.sleep(0.2)
    except BaseException:
        client.close()
        stop_torchserve(handle)
        raise
    client.close()
    return handle, observations


@pytest.fixture(scope="module")
def flask_server(torch_trained, tmp_path_factory):
    """gunicorn + the Flask app on a free port, serving a copy of torch_trained's export; stopped after the module."""
    server = _start_flask_server(torch_trained.export_path, tmp_path_factory.mktemp("flask_server"))
    yield server
    _stop_flask_server(server)


@pytest.fixture(scope="module")
def torchserve_server(torch_trained, tmp_path_factory):
    """TorchServe on free ports with torch_trained's digits.mar, started once per module (its JVM is slow to start).

    Yields (handle, readiness observations made while it started); stopped after the module.
    """
    from serving.torchserve.launch import stop_torchserve

    handle, observations = _start_torchserve_observed(
        torch_trained.export_path.parent.parent / "model-store", tmp_path_factory.mktemp("torchserve")
    )
    yield handle, observations
    stop_torchserve(handle)
