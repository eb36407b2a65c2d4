"""The served TorchScript versions: load the newest (or a pinned) version, poll for new ones, swap atomically."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from experiment import artifacts
from experiment.spec import CLASSES, INPUT_NAME, OUTPUT_NAMES, PROBABILITIES
from serving.protocol.signatures import TensorSpec

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """One loaded version: immutable, so a request that took a reference keeps a consistent model during a swap."""

    name: str
    version: int
    path: Path
    module: torch.jit.ScriptModule
    input_shape: tuple[int, ...]  # one example's shape, (H, W)
    num_classes: int
    metadata: dict[str, Any]

    @functools.cached_property
    def input_specs(self) -> dict[str, TensorSpec]:
        """The signature's inputs, for serving.protocol.rest's checks (built once: it is read on every request)."""
        return {INPUT_NAME: TensorSpec(INPUT_NAME, np.dtype(np.float32), (None, *self.input_shape))}

    def predict(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """images float32 (N, H, W) → {"probabilities": (N, C) float32, "classes": (N,) int64}."""
        with torch.inference_mode():
            outputs = self.module(torch.from_numpy(images))
        return {name: outputs[name].numpy() for name in OUTPUT_NAMES}

    def signature_def(self) -> dict[str, Any]:
        """TensorFlow Serving's JSON SignatureDef for this model (what GET .../metadata answers)."""

        def tensor(name: str, dtype: str, shape: tuple[int, ...]) -> dict[str, Any]:
            dims = [{"size": str(size), "name": ""} for size in shape]
            return {"dtype": dtype, "tensor_shape": {"dim": dims, "unknown_rank": False}, "name": name}

        return {
            "inputs": {INPUT_NAME: tensor(INPUT_NAME, "DT_FLOAT", (-1, *self.input_shape))},
            "outputs": {
                PROBABILITIES: tensor(PROBABILITIES, "DT_FLOAT", (-1, self.num_classes)),
                CLASSES: tensor(CLASSES, "DT_INT64", (-1,)),
            },
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }


def load_version(name: str, version_dir: Path) -> LoadedModel:
    """Load model.pt and metadata.json from one version folder, in eval mode, and run it once to warm it up."""
    version_dir = Path(version_dir)
    metadata = json.loads((version_dir / artifacts.METADATA_FILE).read_text())
    network = metadata["network"]
    module = torch.jit.load(str(version_dir / artifacts.TORCHSCRIPT_FILE), map_location="cpu")
    module.eval()
    input_shape = tuple(int(size) for size in network["input_shape"])
    loaded = LoadedModel(
        name=name,
        version=int(version_dir.name),
        path=version_dir,
        module=module,
        input_shape=input_shape,
        num_classes=int(network["num_classes"]),
        metadata=metadata,
    )
    # The first call of a TorchScript module compiles its graph; do it here, not in a client's request.
    loaded.predict(np.zeros((1, *input_shape), dtype=np.float32))
    return loaded


class ModelManager:
    """Keeps the served version current, like TF Serving's file-system poller with the 'latest 1 version' policy.

    A new version is loaded completely before the reference is replaced, and requests read the reference once,
    so a swap never fails a request: in-flight ones finish on the old module, later ones use the new.
    """

    def __init__(
        self,
        name: str,
        base_path: Path,
        pinned_version: int | None = None,
        poll_seconds: float = 1.0,
        on_load: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.name = name
        self.base_path = Path(base_path)
        self.pinned_version = pinned_version
        self.poll_seconds = poll_seconds
        self.on_load = on_load
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._failed: set[tuple[int, float]] = set()  # (version, mtime) that failed to load: not retried every poll
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one poll at a time (the thread and an explicit poll_once)

    def wanted_version(self) -> int | None:
        """The version that should be served: the pinned one if present on disk, else the highest."""
        versions = artifacts.list_versions(self.base_path)
        if self.pinned_version is not None:
            return self.pinned_version if self.pinned_version in versions else None
        return versions[-1] if versions else None

    def poll_once(self) -> LoadedModel | None:
        """Load the wanted version if it is not the one served; return the served model afterwards."""
        with self._lock:
            version = self.wanted_version()
            current = self.current
            if version is None or (current is not None and current.version == version):
                return current  # nothing newer: keep serving what is loaded even if its folder disappeared
            version_dir = self.base_path / str(version)
            try:
                stamp = (version, (version_dir / artifacts.TORCHSCRIPT_FILE).stat().st_mtime)
            except OSError:
                stamp = (version, 0.0)
            if stamp in self._failed:
                return current
            try:
                loaded = load_version(self.name, version_dir)
            except Exception as error:  # a broken export must not take down the server that serves the old one
                self._failed.add(stamp)
                self.last_error = f"Version {version} of {self.name} failed to load: {error}"
                logger.error("%s", self.last_error)
                return current
            self.current = loaded  # one reference assignment: atomic for readers
            self.last_error = None
            logger.info("Serving %s version %d from %s", self.name, loaded.version, version_dir)
            if self.on_load is not None:
                self.on_load(loaded)
            return loaded

    def start(self) -> None:
        """Poll in a daemon thread every poll_seconds (no thread when poll_seconds is 0)."""
        if self.poll_seconds <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._poll_forever, name=f"model-poller-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the polling thread (graceful shutdown)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _poll_forever(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.poll_once()
            except Exception:  # keep polling whatever happened (e.g. the base path was briefly unreadable)
                logger.exception("Polling %s for new versions failed", self.base_path)

    def describe_missing(self) -> str:
        """Why nothing is served yet, as one sentence."""
        if self.last_error:
            return self.last_error + "."
        if self.pinned_version is not None:
            return f"Version {self.pinned_version} of model {self.name} is not in {self.base_path} (yet)."
        return (
            f"No version of model {self.name} has been found in {self.base_path} yet; "
            "train one with `make train-torch`."
        )

