"""The network of experiment.spec as a torch nn.Module, and the serving wrapper that is exported."""

from __future__ import annotations

import collections

import torch
from torch import nn

from experiment.spec import NetworkSpec

_ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class Rescale(nn.Module):
    """Multiply by a constant: the in-model normalisation, like keras.layers.Rescaling."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale


class MLP(nn.Module):
    """Raw images (N, H, W) → logits (N, num_classes); layer names match the Keras model's."""

    def __init__(self, spec: NetworkSpec) -> None:
        super().__init__()
        self.spec = spec
        layers: collections.OrderedDict[str, nn.Module] = collections.OrderedDict()
        layers["scale"] = Rescale(1.0 / spec.pixel_max)
        layers["flatten"] = nn.Flatten()  # (N, H*W)
        width = spec.input_size
        for index, size in enumerate(spec.hidden_sizes):
            layers[f"hidden_{index}"] = nn.Linear(width, size)
            layers[f"activation_{index}"] = _ACTIVATIONS[spec.activation]()
            if spec.dropout > 0:
                layers[f"dropout_{index}"] = nn.Dropout(spec.dropout)
            width = size
        layers["logits"] = nn.Linear(width, spec.num_classes)
        self.layers = nn.Sequential(layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Glorot-uniform weights and zero biases, Keras's Dense defaults."""
        for module in self.dense_layers().values():
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    def dense_layers(self) -> dict[str, nn.Linear]:
        """The linear layers by name (hidden_0, ..., logits), in order."""
        return {name: module for name, module in self.layers.named_children() if isinstance(module, nn.Linear)}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # (N, num_classes)


class ServingModel(nn.Module):
    """What is exported: images (N, H, W) → {probabilities (N, C) float32, classes (N,) int64}."""

    def __init__(self, network: MLP) -> None:
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.network(images)  # (N, C)
        # Literal keys: TorchScript cannot read module-level strings. A test checks they equal experiment.spec's.
        return {
            "probabilities": torch.softmax(logits, dim=-1),
            "classes": torch.argmax(logits, dim=-1),  # int64
        }


def build_model(spec: NetworkSpec, seed: int = 0) -> MLP:
    """The torch model for spec, its weights drawn from the given seed."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = MLP(spec)
    torch.random.set_rng_state(generator_state)
    return model
