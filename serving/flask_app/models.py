"""The served torch versions: loading one version folder in the chosen format, and the watcher over the base path.

Formats (FLASK_MODEL_FORMAT): `onnx` (model.onnx in ONNX Runtime, the default; this path never imports torch),
`pt2` (model.pt2, the AOTInductor package) and `torchscript` (model.pt, deprecated by PyTorch). torch is imported
only when a version is loaded in one of the last two.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from experiment import artifacts
from experiment.spec import CLASSES, INPUT_NAME, OUTPUT_NAMES, PROBABILITIES, SIGNATURE_NAME
from serving.protocol.signatures import SignatureSpec, classifier_signature
from serving.versions import ModelSource, VersionPolicy, VersionStatus, VersionWatcher

logger = logging.getLogger("serving.flask_app")

FORMATS = tuple(artifacts.TORCH_FORMAT_FILES)  # ("onnx", "pt2", "torchscript")
DEFAULT_FORMAT = "onnx"
# images float32 (N, H, W) → {"probabilities": (N, C) float32, "classes": (N,) int64}
Runner = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One loaded version: immutable, so a request that took a reference keeps a consistent model during a swap."""

    name: str
    version: int
    path: Path
    format: str  # "onnx" | "pt2" | "torchscript": which file answers
    runner: Runner
    input_shape: tuple[int, ...]  # one example's shape, (H, W)
    num_classes: int
    metadata: dict[str, Any]

    @functools.cached_property
    def signature(self) -> SignatureSpec:
        """The serving signature (built once: its inputs are read on every request)."""
        return classifier_signature(
            SIGNATURE_NAME, INPUT_NAME, self.input_shape, PROBABILITIES, CLASSES, self.num_classes
        )

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 (N, H, W) → {"probabilities": (N, C) float32, "classes": (N,) int64}."""
        return self.runner(images)


def onnx_runner(path: Path) -> Runner:
    """An ONNX Runtime session on model.onnx, one intra-op thread (the server runs one worker per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        return dict(zip(OUTPUT_NAMES, session.run(list(OUTPUT_NAMES), {INPUT_NAME: images}), strict=True))

    return run


def pt2_runner(path: Path) -> Runner:
    """The AOTInductor package model.pt2, called from Python (imports torch)."""
    import torch

    torch.set_num_threads(1)
    compiled = torch._inductor.aoti_load_package(str(path))

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = compiled(torch.from_numpy(images))
        return {name: outputs[name].numpy() for name in OUTPUT_NAMES}

    return run


def torchscript_runner(path: Path) -> Runner:
    """The TorchScript module model.pt (deprecated by PyTorch; imports torch)."""
    import torch

    torch.set_num_threads(1)
    module = torch.jit.load(str(path), map_location="cpu")
    module.eval()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            outputs = module(torch.from_numpy(images))
        return {name: outputs[name].numpy() for name in OUTPUT_NAMES}

    return run


RUNNERS: dict[str, Callable[[Path], Runner]] = {
    "onnx": onnx_runner,
    "pt2": pt2_runner,
    "torchscript": torchscript_runner,
}


def load_version(name: str, version_dir: Path, model_format: str = DEFAULT_FORMAT) -> LoadedModel:
    """Load one version folder's file of model_format and its metadata.json, and run it once to warm it up."""
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / artifacts.METADATA_FILE).read_text())
    network = metadata["network"]
    file = version_dir / artifacts.TORCH_FORMAT_FILES[model_format]
    if not file.is_file():
        raise FileNotFoundError(f"{file.name} is missing (this version was exported without --formats {model_format})")
    input_shape = tuple(int(size) for size in network["input_shape"])
    loaded = LoadedModel(
        name=name,
        version=int(version_dir.name),
        path=version_dir,
        format=model_format,
        runner=RUNNERS[model_format](file),
        input_shape=input_shape,
        num_classes=int(network["num_classes"]),
        metadata=metadata,
    )
    # The first call allocates and plans; do it here, not in a client's request.
    loaded.predict(np.zeros((1, *input_shape), dtype=np.float32))
    return loaded


class ModelManager(VersionWatcher[LoadedModel]):
    """Keeps the served version current, like TF Serving's file-system poller with the 'latest 1 version' policy.

    A new version is loaded completely before it replaces the old one, and requests read `current` once, so a swap
    never fails a request: in-flight ones finish on the old module, later ones use the new. A version whose folder
    disappears keeps serving until another one has loaded. A newest version that fails to load is skipped: the newest
    older version that loads is served (at start too, serving.versions' last-good rule), the status lists the failed
    one, the log says so, and the failed one is tried again when its folder changes.
    """

    def __init__(
        self,
        name: str,
        base_path: Path,
        pinned_version: int | None = None,
        poll_seconds: float = 1.0,
        on_change: Callable[[], None] | None = None,
        model_format: str = DEFAULT_FORMAT,
    ) -> None:
        self.name = name
        self.model_format = model_format
        self.base_path = Path(base_path)
        self.pinned_version = pinned_version
        policy = VersionPolicy()  # the newest version, or the newest that loads when it fails
        if pinned_version is not None:  # a pinned version is served or nothing is: no fallback
            policy = VersionPolicy("specific", versions=frozenset({pinned_version}))
        super().__init__(
            [ModelSource(name, self.base_path, policy)],
            lambda model_name, version, path: load_version(model_name, path, model_format),
            poll_seconds,
            on_change,
            keep_vanished_until_replaced=True,
        )

    def newer_failure(self) -> VersionStatus | None:
        """The newest version above the served one that failed to load, when the served version is a fallback."""
        model = self.versions(self.name)
        if model is None:
            return None
        served = self.current
        present = set(artifacts.list_versions(self.base_path))  # a failed folder since removed is no news
        failed = [
            status
            for status in model.statuses.values()
            if status.error_code != "OK"
            and status.version in present
            and (served is None or status.version > served.version)
        ]
        return max(failed, key=lambda status: status.version) if failed else None

    @property
    def current(self) -> LoadedModel | None:
        """The served version (the highest loaded), or None until one has loaded."""
        return self.versions(self.name).latest()

    def describe_missing(self) -> str:
        """Why nothing is served yet, as one sentence."""
        failure = self.versions(self.name).failure()
        if failure is not None:
            return f"Version {failure.version} of {self.name} failed to load: {failure.error_message.rstrip('.')}."
        if self.pinned_version is not None:
            return f"Version {self.pinned_version} of model {self.name} is not in {self.base_path} (yet)."
        return (
            f"No version of model {self.name} has been found in {self.base_path} yet; "
            "train one with `make train-torch`."
        )
