"""The two frameworks build the same network: with the same weights they give the same probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from experiment.spec import NetworkSpec


@pytest.mark.parametrize(
    "spec",
    [
        NetworkSpec(),
        NetworkSpec(hidden_sizes=(32,), activation="tanh"),
        NetworkSpec(hidden_sizes=(16, 16, 8), activation="sigmoid"),
    ],
    ids=["default", "tanh", "sigmoid-3-layers"],
)
def test_keras_with_torch_weights_gives_torch_probabilities(spec, digits):
    import torch

    from tf_pipeline.model import build_model as build_keras_model
    from tf_pipeline.model import dense_layer_names
    from torch_pipeline.model import build_model as build_torch_model

    torch_model = build_torch_model(spec, seed=1).eval()
    keras_model = build_keras_model(spec, seed=2)
    torch_layers = torch_model.dense_layers()
    assert list(torch_layers) == dense_layer_names(spec)
    for name, linear in torch_layers.items():
        # torch stores (out, in); Keras's Dense kernel is (in, out).
        keras_model.get_layer(name).set_weights([linear.weight.detach().numpy().T, linear.bias.detach().numpy()])

    images = digits.test.images  # raw intensities, (N, 8, 8)
    with torch.inference_mode():
        torch_probabilities = torch.softmax(torch_model(torch.from_numpy(images)), dim=-1).numpy()
    keras_logits = keras_model(images, training=False).numpy()
    keras_probabilities = np.exp(keras_logits - keras_logits.max(-1, keepdims=True))
    keras_probabilities /= keras_probabilities.sum(-1, keepdims=True)
    np.testing.assert_allclose(keras_probabilities, torch_probabilities, atol=1e-5)


def test_same_initialisation_scheme():
    """Glorot-uniform kernels (bound sqrt(6 / (fan_in + fan_out))) and zero biases on both sides."""
    from tf_pipeline.model import build_model as build_keras_model
    from torch_pipeline.model import build_model as build_torch_model

    spec = NetworkSpec(hidden_sizes=(256,))
    bound = np.sqrt(6 / (64 + 256))
    keras_kernel, keras_bias = build_keras_model(spec, seed=0).get_layer("hidden_0").get_weights()
    torch_layer = build_torch_model(spec, seed=0).dense_layers()["hidden_0"]
    torch_kernel = torch_layer.weight.detach().numpy().T
    for kernel in (keras_kernel, torch_kernel):
        assert kernel.shape == (64, 256)
        assert np.abs(kernel).max() <= bound
        assert np.std(kernel) == pytest.approx(bound / np.sqrt(3), rel=0.05)  # uniform(-b, b) has std b/sqrt(3)
    assert not keras_bias.any() and not torch_layer.bias.detach().numpy().any()
