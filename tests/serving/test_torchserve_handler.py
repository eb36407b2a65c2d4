"""The TorchServe handler offline, with a fake context: parsing, per-request errors inside a batch, answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from experiment import artifacts

handler_module = pytest.importorskip("serving.torchserve.handler")

IMAGE = [[float((row + column) % 17) for column in range(8)] for row in range(8)]


class FakeMetrics:
    def add_time(self, *args, **kwargs) -> None:
        pass


class FakeContext:
    """What TorchServe hands a handler: model folder, manifest, per-request headers and response statuses."""

    def __init__(self, model_dir) -> None:
        self.system_properties = {"model_dir": str(model_dir), "gpu_id": None, "batch_size": 8}
        self.manifest = {"model": {"modelName": "digits", "serializedFile": artifacts.TORCHSCRIPT_FILE}}
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


def handle(handler, context, bodies):
    """Run one batched call the way TorchServe does: a list of {"body": ...} requests."""
    context.request_headers = [{} for _ in bodies]
    context.statuses.clear()
    return [json.loads(answer) for answer in handler.handle([{"body": body} for body in bodies], context)]


def in_process(export_path, images):
    module = torch.jit.load(str(export_path / artifacts.TORCHSCRIPT_FILE))
    with torch.inference_mode():
        outputs = module(torch.as_tensor(np.asarray(images, dtype=np.float32)))
    return outputs["probabilities"].numpy(), outputs["classes"].numpy()


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


def test_handler_imports_only_what_the_archive_carries():
    import ast
    import pathlib

    tree = ast.parse(pathlib.Path(handler_module.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    } | {node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
    assert imported <= {"__future__", "json", "os", "typing", "numpy", "torch", "ts"}
