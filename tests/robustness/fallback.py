"""A corrupt newest version beside a good one: writing it, and waiting for a server to serve the good one."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from serving.runtime import ServerProcess
from tests.robustness import wire
from tests.robustness.checks import predictions_problem, valid_request
from tests.robustness.targets import RestTarget


def add_corrupt_tf_version(base_path: Path, good_version: int, corrupt_version: int) -> None:
    """A copy of a good SavedModel as corrupt_version, with saved_model.pb overwritten by garbage."""
    shutil.copytree(base_path / str(good_version), base_path / str(corrupt_version))
    (base_path / str(corrupt_version) / "saved_model.pb").write_bytes(b"\x00not a SavedModel\xff" * 64)


def add_corrupt_torch_version(base_path: Path, good_version: int, corrupt_version: int) -> None:
    """A copy of a good torch export as corrupt_version, with model.onnx overwritten by garbage."""
    shutil.copytree(base_path / str(good_version), base_path / str(corrupt_version))
    (base_path / str(corrupt_version) / "model.onnx").write_bytes(b"\x08\x07 not an ONNX model" * 64)


def add_corrupt_archive(model_store: Path, model_name: str, corrupt_version: int) -> None:
    """A corrupt <model>-<version>.mar, also installed as <model>.mar, as a training run that wrote garbage would.

    The good archive of the previous version stays as <model>-<previous>.mar.
    """
    garbage = b"PK\x03\x04 not a model archive" * 256
    (model_store / f"{model_name}-{corrupt_version}.mar").write_bytes(garbage)
    (model_store / f"{model_name}.mar").write_bytes(garbage)


def wait_for_predictions(target: RestTarget, server: ServerProcess, timeout: float, settle: float) -> str | None:
    """Poll with valid requests until one succeeds (None) or the server gave no success for `settle` seconds after it
    first answered anything (or `timeout` in all, or it exited): then the last problem seen."""
    began = time.monotonic()
    first_answer = None
    problem = "no answer yet"
    while time.monotonic() - began < timeout:
        if not server.is_running():
            return f"the server exited (status {server.exit_status()}); last problem: {problem}"
        answer = wire.exchange(target.host, target.port, valid_request(target), timeout=10.0)
        problem = predictions_problem(answer)
        if problem is None:
            return None
        if answer.outcome == wire.ANSWERED and first_answer is None:
            first_answer = time.monotonic()
        if first_answer is not None and time.monotonic() - first_answer > settle:
            return problem
        time.sleep(0.5)
    return f"nothing served within {timeout:.0f} s; last problem: {problem}"


def versions_in_status(target: RestTarget) -> dict[str, dict]:
    """TensorFlow Serving's status of every version (version → its entry), from the REST status route."""
    path = target.status_path()
    answer = wire.exchange(target.host, target.port, wire.request_bytes("GET", path, target.host), 10.0)
    if answer.outcome != wire.ANSWERED or answer.status != 200:
        return {}
    try:
        entries = answer.json().get("model_version_status", [])
    except (ValueError, AttributeError, UnicodeDecodeError):
        return {}
    return {str(entry.get("version")): entry for entry in entries if isinstance(entry, dict)}
