"""Every format Flask serves (onnx, pt2, torchscript), through `python -m serving.client` against the real server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from experiment import artifacts
from serving import runtime
from serving.runtime import flask_app
from tests import torch_exports

pytestmark = pytest.mark.slow
SAMPLE = 20


@pytest.mark.parametrize("export_format", ["onnx", "pt2", "torchscript"])
def test_the_client_gets_the_in_process_classes_from_each_format(export_format, torch_every_format, digits, tmp_path):
    export_path = torch_every_format.export_path
    if not (export_path / artifacts.TORCH_FORMAT_FILES[export_format]).exists():
        pytest.skip("no C++ compiler on this machine, so the run wrote no model.pt2")
    base_path = tmp_path / "digits"
    shutil.copytree(export_path, base_path / "1")
    environment = {"FLASK_MODEL_POLL_SECONDS": "0", "WEB_CONCURRENCY": "2"}
    spec = flask_app.spec(runtime.free_port(), base_path=base_path, environment=environment, model_format=export_format)
    with runtime.start(spec, tmp_path / "flask.log", timeout=180) as server:
        url = server.spec.endpoint("flask-rest").address
        completed = subprocess.run(
            [sys.executable, "-m", "serving.client", "flask", "--rest", url, "--sample", str(SAMPLE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        workers = [server.leader, *server.leader.children(recursive=True)]  # worker 0 serves too
        torch_loaded = [any("libtorch" in Path(mapped.path).name for mapped in w.memory_maps()) for w in workers]
    assert completed.returncode == 0, completed.stderr
    # A worker serving ONNX Runtime never loads torch (the Flask image has none); the other two formats need it.
    assert workers and torch_loaded == [export_format != "onnx"] * len(workers)
    header, _, *rows = completed.stdout.splitlines()
    assert header.endswith(f", format {export_format}")
    predicted = [int(row.split()[1]) for row in rows[:SAMPLE]]
    assert predicted == torch_exports.onnx_outputs(export_path, digits.test.images[:SAMPLE])[1].tolist()
