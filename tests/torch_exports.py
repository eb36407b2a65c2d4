"""The torch exports read back in a test's own process: the ONNX model in ONNX Runtime and its weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from experiment.artifacts import ONNX_FILE


def onnx_outputs(export_path: Path, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """images (N, H, W) → (probabilities (N, C) float32, classes (N,) int64) from export_path/model.onnx."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(Path(export_path) / ONNX_FILE), providers=["CPUExecutionProvider"])
    probabilities, classes = session.run(
        ["probabilities", "classes"], {"images": np.ascontiguousarray(images, dtype=np.float32)}
    )
    return probabilities, classes


def onnx_weights(export_path: Path) -> dict[str, np.ndarray]:
    """The initializers (weights, biases, the rescaling constant) of export_path/model.onnx by name."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(Path(export_path) / ONNX_FILE)).graph
    return {tensor.name: numpy_helper.to_array(tensor) for tensor in graph.initializer}
