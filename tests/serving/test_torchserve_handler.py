"""The TorchServe handler offline: with a fake context (parsing, per-request errors, answers), and from a built .mar."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from experiment import artifacts
from serving.protocol import rest
from tests import torch_exports

handler_module = pytest.importorskip("serving.torchserve.handler")

IMAGE = [[float((row + column) % 17) for column in range(8)] for row in range(8)]


class FakeMetrics:
    def __init__(self) -> None:
        self.added: list[tuple] = []

    def add_time(self, *args, **kwargs) -> None:
        pass

    def add_metric(self, name, value, unit, idx=None, dimensions=(), metric_type=None) -> None:
        self.added.append((name, value, unit, metric_type))


class FakeContext:
    """What TorchServe hands a handler: model folder, manifest, per-request headers and response statuses."""

    def __init__(self, model_dir) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.manifest = {"model": {"modelName": "digits", "serializedFile": artifacts.ONNX_FILE}}
        self.metrics = FakeMetrics()
        self.request_headers: list[dict[str, str]] = []
        self.statuses: dict[int, tuple[int, str]] = {}
        self.content_types: dict[int, str] = {}

    def get_request_header(self, index: int, key: str):
        return self.request_headers[index].get(key) if index < len(self.request_headers) else None

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.statuses[idx] = (code, phrase)

    def set_response_content_type(self, idx: int, value: str) -> None:
        self.content_types[idx] = value


@pytest.fixture
def handler_and_context(torch_smoke_run):
    context = FakeContext(torch_smoke_run.export_path)
    handler = handler_module.DigitsHandler()
    handler.initialize(context)
    return handler, context


def test_each_worker_reports_the_version_it_loaded_as_a_gauge(torch_smoke_run):
    from ts.metrics.metric_type_enum import MetricTypes

    context = FakeContext(torch_smoke_run.export_path)
    context.manifest["model"]["modelVersion"] = "3"
    handler_module.DigitsHandler().initialize(context)
    assert context.metrics.added == [("ModelVersionLoaded", 3.0, "version", MetricTypes.GAUGE)]


def handle(handler, context, bodies):
    """Run one batched call the way TorchServe does: a list of {"body": ...} requests."""
    context.request_headers = [{} for _ in bodies]
    context.statuses.clear()
    return [json.loads(answer) for answer in handler.handle([{"body": body} for body in bodies], context)]


def in_process(export_path, images):
    return torch_exports.onnx_outputs(export_path, images)


def test_row_format_answers_match_the_torchscript_model(handler_and_context, digits, torch_smoke_run):
    handler, context = handler_and_context
    images = digits.test.images[:3]
    # TorchServe passes an application/json body already decoded, other content types as bytes.
    encoded = json.dumps({"instances": images[:1].tolist()}).encode()
    answers = handle(handler, context, [{"instances": images.tolist()}, encoded])
    expected_probabilities, expected_classes = in_process(torch_smoke_run.export_path, images)
    rows = answers[0]["predictions"]
    np.testing.assert_allclose([row["probabilities"] for row in rows], expected_probabilities, rtol=1e-5, atol=1e-6)
    assert [row["classes"] for row in rows] == expected_classes.tolist()
    assert answers[1]["predictions"][0]["classes"] == expected_classes[0]
    assert context.statuses == {}
    assert set(context.content_types.values()) == {"application/json"}


def test_columnar_format_is_answered_columnar(handler_and_context):
    handler, context = handler_and_context
    answers = handle(handler, context, [{"inputs": {"images": [IMAGE, IMAGE]}}, {"inputs": [IMAGE]}])
    assert np.asarray(answers[0]["outputs"]["probabilities"]).shape == (2, 10)
    assert len(answers[1]["outputs"]["classes"]) == 1


BAD_BODIES = {
    "malformed_json": b'{"instances": [',
    "not_an_object": [1, 2],
    "missing_key": {"examples": [IMAGE]},
    "both_keys": {"instances": [IMAGE], "inputs": [IMAGE]},
    "wrong_shape": {"instances": [[1.0, 2.0]]},
    "ragged": {"instances": [IMAGE, IMAGE[:3]]},
    "strings": {"instances": [[["x"] * 8] * 8]},
    "nan": {"instances": [[[float("nan")] * 8] * 8]},
    "infinity": {"inputs": [[[float("inf")] * 8] * 8]},
    "empty_batch": {"instances": []},
    "unknown_input": {"inputs": {"pixels": [IMAGE]}},
    "unknown_signature": {"instances": [IMAGE], "signature_name": "other"},
    "over_the_batch_limit": {"instances": [IMAGE] * (rest.MAX_BATCH_SIZE + 1)},
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_parse_request_raises_prediction_exception_400(handler_and_context, body):
    handler, _ = handler_and_context
    with pytest.raises(handler_module.PredictionException) as caught:
        handler.parse_request(body)
    assert caught.value.error_code == 400
    assert caught.value.message.endswith(".") and "\n" not in caught.value.message


def test_a_bad_request_in_a_batch_fails_only_itself(handler_and_context):
    handler, context = handler_and_context
    answers = handle(handler, context, [{"instances": [IMAGE]}, BAD_BODIES["wrong_shape"], {"inputs": [IMAGE, IMAGE]}])
    assert len(answers[0]["predictions"]) == 1
    assert "shape" in answers[1]["error"]
    assert len(answers[2]["outputs"]["classes"]) == 2
    assert context.statuses == {1: (400, "Bad Request")}


def test_a_batch_of_only_bad_requests_skips_the_model(handler_and_context):
    handler, context = handler_and_context
    answers = handle(handler, context, [BAD_BODIES["nan"], BAD_BODIES["empty_batch"]])
    assert [sorted(answer) for answer in answers] == [["error"], ["error"]]
    assert context.statuses == {0: (400, "Bad Request"), 1: (400, "Bad Request")}


def test_describe_gives_the_signature(handler_and_context):
    handler, context = handler_and_context
    context.request_headers = [{"describe": "True"}]
    description = json.loads(handler.handle([{"body": b""}], context)[0])
    assert description["inputs"]["images"] == {"dtype": "float32", "shape": [-1, 8, 8]}
    assert description["outputs"]["classes"]["dtype"] == "int64"


def test_a_batch_over_the_flask_apps_limit_is_refused_in_one_sentence(handler_and_context):
    from serving.flask_app import DEFAULTS

    handler, context = handler_and_context
    limit = DEFAULTS["MAX_BATCH_SIZE"]
    answers = handle(handler, context, [{"instances": [IMAGE] * (limit + 1)}, {"instances": [IMAGE] * limit}])
    assert answers[0] == {"error": f"The batch has {limit + 1} instances; this server accepts at most {limit}."}
    assert len(answers[1]["predictions"]) == limit
    assert context.statuses == {0: (400, "Bad Request")}


def test_handler_imports_only_what_the_archive_carries():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(handler_module.__file__).read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names} | {
        node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
    }
    from_repository = {name for name in imported if name.split(".")[0] == "serving"}
    assert all(name.startswith("serving.protocol") for name in from_repository), from_repository
    top_levels = {name.split(".")[0] for name in imported - from_repository}
    assert top_levels <= {"__future__", "json", "os", "typing", "numpy", "onnxruntime", "ts"}


# Runs in a fresh interpreter that sees only the unpacked archive and the installed packages (-I: no PYTHONPATH, no
# repository folder), loads the handler with TorchServe's own model loader, sends one batch through Service.predict
# as a worker does, and prints each request's (status, answer) decoded from the worker's reply.
WORKER_SCRIPT = r"""
import json, os, struct, sys

model_dir = sys.argv[1]
sys.path.insert(0, model_dir)  # TorchServe puts the model folder on the worker's Python path
import ts
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
from ts.model_loader import ModelLoaderFactory

metrics = MetricsCacheYamlImpl(config_file_path=os.path.join(os.path.dirname(ts.__file__), "configs", "metrics.yaml"))
metrics.initialize_cache()
service = ModelLoaderFactory.get_model_loader().load("digits", model_dir, "handler.py", None, 8, metrics_cache=metrics)
service.set_cl_socket(None)
bodies = json.loads(sys.stdin.read())
batch = [
    {"requestId": str(index).encode(), "headers": [],
     "parameters": [{"name": "body", "contentType": "application/json", "value": body}]}
    for index, body in enumerate(bodies)
]
reply, offset = bytes(service.predict(batch)), 0

def integer():
    global offset
    offset += 4
    return struct.unpack("!i", reply[offset - 4 : offset])[0]

def text():
    global offset
    size = integer()
    offset += size
    return reply[offset - size : offset].decode()

integer(), text()  # the batch's code and message
answers = []
for _ in bodies:
    text(), text()  # request id, content type
    status = integer()
    text()  # reason phrase
    for _ in range(integer()):  # response headers
        text(), text()
    answers.append([status, json.loads(text())])
import serving.protocol
print(json.dumps({"protocol": serving.protocol.__file__, "answers": answers}))
"""


@pytest.mark.slow
def test_the_handler_runs_from_the_built_archive_with_its_own_protocol_package(torch_smoke_run, tmp_path):
    from torch_pipeline import export

    archive = export.write_model_archive(torch_smoke_run.export_path, "digits", 1, tmp_path)
    model_dir = tmp_path / "unpacked"
    with zipfile.ZipFile(archive) as unpacking:
        unpacking.extractall(model_dir)
    assert (model_dir / "serving" / "protocol" / "rest.py").is_file() and (model_dir / "handler.py").is_file()
    bodies = [{"instances": [IMAGE]}, {"instances": [[1.0, 2.0]]}, {"inputs": [IMAGE] * (rest.MAX_BATCH_SIZE + 1)}]
    completed = subprocess.run(
        [sys.executable, "-I", "-c", WORKER_SCRIPT, str(model_dir)],
        input=json.dumps(bodies),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["protocol"].startswith(str(model_dir))
    (ok_status, ok_answer), (shape_status, shape_answer), (limit_status, limit_answer) = result["answers"]
    expected_probabilities, expected_classes = in_process(torch_smoke_run.export_path, [IMAGE])
    assert ok_status == 200 and ok_answer["predictions"][0]["classes"] == expected_classes[0]
    np.testing.assert_allclose(ok_answer["predictions"][0]["probabilities"], expected_probabilities[0], rtol=1e-5)
    assert shape_status == 400 and shape_answer == {
        "error": "Input 'images' has shape [1, 2] but the model expects float32 [N, 8, 8]."
    }
    assert limit_status == 400 and "at most 1024" in limit_answer["error"]
