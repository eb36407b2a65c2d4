"""The network, described once without a framework: both pipelines build their model from a NetworkSpec."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypedDict

from experiment.errors import UsageError

ACTIVATIONS = ("relu", "tanh", "sigmoid")

# Names of the serving signature, shared by every exporter, server and client.
INPUT_NAME = "images"
PROBABILITIES = "probabilities"
CLASSES = "classes"
OUTPUT_NAMES = (PROBABILITIES, CLASSES)
SIGNATURE_NAME = "serving_default"


class NetworkDict(TypedDict):
    """A NetworkSpec as metadata.json's "network" holds it (tuples are written, and read back, as lists)."""

    input_shape: Sequence[int]
    pixel_max: float
    hidden_sizes: Sequence[int]
    activation: str
    dropout: float
    num_classes: int


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
    """A multilayer perceptron over raw images: scale → flatten → (dense → activation → dropout)* → dense logits.

    Weights are Glorot-uniform and biases zero on both sides, so the two frameworks start from the same
    distribution (and, when a test copies weights across, from the same numbers).
    """

    input_shape: tuple[int, int] = (8, 8)
    pixel_max: float = 16.0  # inputs are divided by this inside the model: clients send raw intensities
    hidden_sizes: tuple[int, ...] = (64, 32)
    activation: str = "relu"
    dropout: float = 0.1
    num_classes: int = 10

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise UsageError(f"Unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}.")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"Dropout must be in [0, 1), got {self.dropout}.")
        if any(size <= 0 for size in self.hidden_sizes):
            raise UsageError(f"Hidden sizes must be positive, got {self.hidden_sizes}.")
        if self.num_classes < 2:
            raise UsageError(f"A classifier needs at least 2 classes, got {self.num_classes}.")
        if self.pixel_max <= 0:
            raise UsageError(f"pixel_max must be positive, got {self.pixel_max}.")

    @property
    def input_size(self) -> int:
        """Number of pixels in one flattened image."""
        return self.input_shape[0] * self.input_shape[1]

    def to_dict(self) -> NetworkDict:
        """A JSON-ready description, stored in every export's metadata.json."""
        return NetworkDict(
            input_shape=self.input_shape,
            pixel_max=self.pixel_max,
            hidden_sizes=self.hidden_sizes,
            activation=self.activation,
            dropout=self.dropout,
            num_classes=self.num_classes,
        )

    @classmethod
    def from_dict(cls, values: NetworkDict) -> NetworkSpec:
        """Rebuild a spec from to_dict's output (lists become tuples)."""
        height, width = values["input_shape"]
        return cls(
            input_shape=(height, width),
            pixel_max=float(values["pixel_max"]),
            hidden_sizes=tuple(values["hidden_sizes"]),
            activation=values["activation"],
            dropout=float(values["dropout"]),
            num_classes=int(values["num_classes"]),
        )


def parse_hidden_sizes(text: str) -> tuple[int, ...]:
    """Parse '64,32' (or '64 32', or '' for none) into a tuple of positive layer widths."""
    parts = [part for part in text.replace(",", " ").split() if part]
    try:
        sizes = tuple(int(part) for part in parts)
    except ValueError:
        raise UsageError(f"--hidden-sizes {text!r} is not a comma-separated list of integers such as 64,32.") from None
    if any(size <= 0 for size in sizes):
        raise UsageError(f"--hidden-sizes {text!r} must contain only positive integers.")
    return sizes
