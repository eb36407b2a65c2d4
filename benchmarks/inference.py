"""Artifacts on disk and in-process inference: export sizes, load times, batch-1 and batch-64 latency of each path."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import stats
from experiment import artifacts, library_logs
from experiment.spec import SIGNATURE_NAME, NetworkSpec

BATCH_SIZES = (1, 64)
# Each in-process path and the framework it belongs to, in the order the report shows them.
PATH_FRAMEWORKS = {
    "keras_direct_call": "tf",
    "keras_model_predict": "tf",
    "savedmodel_signature": "tf",
    "torch_eager_module": "torch",
    "torchscript_module": "torch",
}


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """How long to time each path (seconds of calls, bounded by a call count) and how many loads to time."""

    budget_seconds: float = 2.0
    minimum_calls: int = 30
    maximum_calls: int = 5000
    warmup_calls: int = 10
    loads: int = 5


QUICK_INFERENCE = InferenceSettings(budget_seconds=0.3, minimum_calls=8, maximum_calls=2000, warmup_calls=2, loads=2)


@dataclasses.dataclass(frozen=True)
class ArtifactSize:
    """One export on disk: its size and, for those that load in-process, how long loading takes."""

    name: str
    file: str  # the export's last two path parts ("digits/1"), never the machine's absolute path
    size_bytes: int
    first_load_seconds: float | None = None
    later_load_seconds: float | None = None


@dataclasses.dataclass(frozen=True)
class FastPathCheck:
    """Whether the TF server's code loads the SavedModel and calls its signature, never Keras's model.predict."""

    files_checked: int
    loads_saved_model: bool
    imports_keras: bool

    @property
    def fast_path(self) -> bool:
        """The server takes the signature path."""
        return self.files_checked > 0 and self.loads_saved_model and not self.imports_keras


@dataclasses.dataclass(frozen=True)
class InferenceResult:
    """Latency of every in-process path at every batch size, and how close eager torch and TorchScript agree."""

    latencies: dict[str, dict[int, stats.LatencySummary]]  # path → batch size → summary
    torch_eager_vs_torchscript_max_difference: float
    fast_path: FastPathCheck

    def p50_ms(self, path: str, batch_size: int = 1) -> float | None:
        """The path's median latency per call, or None when it was not measured."""
        summary = self.latencies.get(path, {}).get(batch_size)
        return summary.p50_ms if summary else None


def directory_bytes(path: Path) -> int:
    """Size on disk of a file, or of every file under a folder."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def time_calls(call: Callable[[], Any], settings: InferenceSettings) -> stats.LatencySummary:
    """Latency of call() after warm-up: as many calls as fit the time budget, within the call-count bounds."""
    for _ in range(settings.warmup_calls):
        call()
    latencies = []
    deadline = time.perf_counter() + settings.budget_seconds
    while len(latencies) < settings.maximum_calls and (
        len(latencies) < settings.minimum_calls or time.perf_counter() < deadline
    ):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return stats.summarize_seconds(latencies)


def time_loads(load: Callable[[], Any], count: int) -> tuple[float, float]:
    """Seconds of the first load in this process and the median of the following ones."""
    durations = []
    for _ in range(max(2, count)):
        started = time.perf_counter()
        load()
        durations.append(time.perf_counter() - started)
    return durations[0], stats.median(durations[1:])


def _artifact(name: str, path: Path, load: Callable[[], Any] | None, settings: InferenceSettings) -> ArtifactSize:
    loads = time_loads(load, settings.loads) if load else (None, None)
    return ArtifactSize(name, "/".join(Path(path).parts[-2:]), directory_bytes(path), *loads)


def measure_artifacts(
    tf_export: Path, torch_export: Path, archive: Path, settings: InferenceSettings
) -> list[ArtifactSize]:
    """Size of each export and time to load the two that load in-process."""
    library_logs.quiet()
    import tensorflow as tf
    import torch

    torchscript = Path(torch_export) / artifacts.TORCHSCRIPT_FILE
    sizes = [
        _artifact("TF SavedModel", tf_export, lambda: tf.saved_model.load(str(tf_export)), settings),
        _artifact("TorchScript", torchscript, lambda: torch.jit.load(str(torchscript)), settings),
    ]
    if Path(archive).exists():
        sizes.append(_artifact("TorchServe archive", archive, None, settings))
    return sizes


def measure_inference(
    tf_export: Path, torch_export: Path, images: np.ndarray, settings: InferenceSettings, serving_dir: Path
) -> InferenceResult:
    """Batch-1 and batch-64 latency of five in-process paths, with the inputs a client would send (numpy)."""
    library_logs.quiet()
    import tensorflow as tf
    import torch

    from tf_pipeline.model import build_model as build_keras_model
    from torch_pipeline.model import ServingModel
    from torch_pipeline.model import build_model as build_torch_model

    spec = NetworkSpec.from_dict(artifacts.read_metadata(Path(torch_export))["network"])
    # The Keras model is rebuilt from the exported spec (same layers, untrained weights): latency does not depend
    # on weight values, and the SavedModel path below is the trained artifact itself.
    keras_model = build_keras_model(NetworkSpec.from_dict(artifacts.read_metadata(Path(tf_export))["network"]))
    signature = tf.saved_model.load(str(tf_export)).signatures[SIGNATURE_NAME]
    scripted = torch.jit.load(str(Path(torch_export) / artifacts.TORCHSCRIPT_FILE)).eval()
    eager = ServingModel(build_torch_model(spec)).eval()
    eager.load_state_dict(scripted.state_dict())  # the trained weights, so both torch paths compute the same thing

    def torch_call(module: torch.nn.Module, batch: np.ndarray) -> Callable[[], Any]:
        def call() -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        return call

    latencies: dict[str, dict[int, stats.LatencySummary]] = {name: {} for name in PATH_FRAMEWORKS}
    for batch_size in BATCH_SIZES:
        batch = np.ascontiguousarray(images[:batch_size], dtype=np.float32)  # (B, H, W)
        paths: dict[str, Callable[[], Any]] = {
            "keras_direct_call": lambda batch=batch: keras_model(batch, training=False),
            "keras_model_predict": lambda batch=batch: keras_model.predict(batch, verbose=0),
            "savedmodel_signature": lambda batch=batch: signature(images=tf.constant(batch)),
            "torch_eager_module": torch_call(eager, batch),
            "torchscript_module": torch_call(scripted, batch),
        }
        for name, call in paths.items():
            latencies[name][batch_size] = time_calls(call, settings)

    with torch.inference_mode():
        sample = torch.from_numpy(np.ascontiguousarray(images[:64], dtype=np.float32))
        difference = (eager(sample)["probabilities"] - scripted(sample)["probabilities"]).abs().max().item()
    return InferenceResult(latencies, difference, serving_uses_fast_path(serving_dir))


def serving_uses_fast_path(serving_dir: Path) -> FastPathCheck:
    """Whether the TF server's code loads the SavedModel and calls its signature, never Keras's model.predict."""
    package = Path(serving_dir) / "tfserving"
    files = sorted(package.rglob("*.py")) if package.is_dir() else sorted(Path(serving_dir).glob("tfserving*.py"))
    text = "\n".join(path.read_text(errors="replace") for path in files)
    imports_keras = re.search(r"^\s*(import keras|from keras)", text, re.MULTILINE) is not None
    loads_saved_model = "saved_model.load" in text
    return FastPathCheck(len(files), loads_saved_model, imports_keras)
