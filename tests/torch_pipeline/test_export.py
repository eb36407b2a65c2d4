"""The TorchScript export reproduces the eager module it was scripted from."""

from __future__ import annotations

import torch

from experiment.spec import CLASSES, PROBABILITIES, NetworkSpec


def test_torchscript_equals_eager_module(tmp_path, digits):
    from torch_pipeline.export import write_torchscript
    from torch_pipeline.model import ServingModel, build_model

    model = build_model(NetworkSpec(), seed=3)
    path = write_torchscript(model, tmp_path)
    scripted = torch.jit.load(str(path))
    images = torch.from_numpy(digits.test.images[:50])  # raw 0..16
    with torch.inference_mode():
        eager = ServingModel(model).eval()(images)
        exported = scripted(images)
    torch.testing.assert_close(exported[PROBABILITIES], eager[PROBABILITIES], atol=1e-6, rtol=0)
    assert torch.equal(exported[CLASSES], eager[CLASSES])


def test_serving_keys_are_the_shared_names():
    """ServingModel spells its keys literally (TorchScript needs it); they must equal experiment.spec's."""
    from torch_pipeline.model import ServingModel, build_model

    outputs = ServingModel(build_model(NetworkSpec())).eval()(torch.zeros(1, 8, 8))
    assert set(outputs) == {PROBABILITIES, CLASSES}


def test_same_seed_same_weights():
    from torch_pipeline.model import build_model

    first, second = build_model(NetworkSpec(), seed=5), build_model(NetworkSpec(), seed=5)
    for left, right in zip(first.parameters(), second.parameters()):
        assert torch.equal(left, right)
