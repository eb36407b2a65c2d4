"""The torch exports: every format answers like the eager model on every digit, and metadata.json describes each."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from experiment import artifacts
from experiment.config import parse_torch_formats
from experiment.errors import UsageError
from tests import torch_exports

pytestmark = pytest.mark.slow


def _all_digits(digits) -> np.ndarray:
    """Every image of the dataset, all splits together: (1797, 8, 8) float32 for the bundled digits."""
    return np.concatenate([digits.train.images, digits.validation.images, digits.test.images]).astype(np.float32)


@pytest.fixture(scope="module")
def eager_outputs(torch_every_format, digits):
    """The eager ServingModel, rebuilt from the spec with the exported weights, on every digit."""
    import torch

    from experiment.spec import NetworkSpec
    from torch_pipeline.model import ServingModel, build_model

    metadata = artifacts.read_metadata(torch_every_format.export_path)
    model = ServingModel(build_model(NetworkSpec.from_dict(metadata["network"]))).eval()
    weights = torch_exports.onnx_weights(torch_every_format.export_path)
    model.load_state_dict({name: torch.from_numpy(weights[name].copy()) for name in model.state_dict()})
    with torch.inference_mode():
        outputs = model(torch.from_numpy(_all_digits(digits)))
    return outputs["probabilities"].numpy(), outputs["classes"].numpy()


def _pt2_outputs(export_path, images):
    import torch

    compiled = torch._inductor.aoti_load_package(str(export_path / artifacts.AOTI_FILE))
    with torch.inference_mode():
        outputs = compiled(torch.from_numpy(images))
    return outputs["probabilities"].numpy(), outputs["classes"].numpy()


def _torchscript_outputs(export_path, images):
    import torch

    module = torch.jit.load(str(export_path / artifacts.TORCHSCRIPT_FILE))
    with torch.inference_mode():
        outputs = module(torch.from_numpy(images))
    return outputs["probabilities"].numpy(), outputs["classes"].numpy()


@pytest.mark.parametrize("export_format", ["onnx", "pt2", "torchscript"])
def test_every_format_matches_the_eager_model_on_all_digits(export_format, torch_every_format, digits, eager_outputs):
    export_path = torch_every_format.export_path
    file = export_path / artifacts.TORCH_FORMAT_FILES[export_format]
    if export_format == "pt2" and not file.exists():
        pytest.skip("no C++ compiler on this machine, so the run wrote no model.pt2")
    read = {"onnx": torch_exports.onnx_outputs, "pt2": _pt2_outputs, "torchscript": _torchscript_outputs}
    images = _all_digits(digits)
    assert len(images) == 1797
    probabilities, classes = read[export_format](export_path, images)
    expected_probabilities, expected_classes = eager_outputs
    assert probabilities.dtype == np.float32 and classes.dtype == np.int64
    np.testing.assert_array_equal(classes, expected_classes)
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=0, atol=1e-5)


def test_metadata_lists_each_file_with_its_digest_and_status(torch_every_format):
    export_path = torch_every_format.export_path
    records = {record["format"]: record for record in artifacts.read_metadata(export_path)["artifacts"]}
    written = {path.name for path in export_path.iterdir()} - {artifacts.METADATA_FILE}
    assert {record["file"] for record in records.values()} == written
    for export_format, record in records.items():
        content = (export_path / record["file"]).read_bytes()
        assert record["file"] == artifacts.TORCH_FORMAT_FILES[export_format]
        assert record["bytes"] == len(content)
        assert record["sha256"] == hashlib.sha256(content).hexdigest()
        assert record["made_by"]["torch"].startswith("2.13") and record["loaded_by"]
        assert record["export_seconds"] > 0
    assert records["torchscript"]["status"] == "deprecated"
    assert records["onnx"]["status"] == "maintained" and set(records["onnx"]["made_by"]) == {
        "torch",
        "onnx",
        "onnxscript",
    }
    json.dumps(records)  # plain JSON throughout


@pytest.mark.parametrize(
    ("text", "message"),
    [("onnx,keras", "unknown format 'keras'"), ("pt2", "must include onnx")],
)
def test_formats_flag_refuses_mistakes_in_one_sentence(text, message):
    with pytest.raises(UsageError, match=message):
        parse_torch_formats(text)


def test_formats_flag_keeps_order_and_drops_repeats():
    assert parse_torch_formats("onnx, pt2,onnx") == ("onnx", "pt2")
