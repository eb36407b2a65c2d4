"""Export a trained torch model (model.onnx, model.pt2, optionally the legacy model.pt) and a TorchServe archive.

Formats, each a file in the version folder and a record in its metadata.json:

- `onnx`: `torch.onnx.export` (dynamo exporter) to model.onnx, run by ONNX Runtime; written by default.
- `pt2`: `torch.export` + AOTInductor to model.pt2, a package C++ loads without Python; its C++ compile takes tens
  of seconds, so it is written when asked for (`--formats onnx,pt2`). Inductor's compile cache lives beside the
  exports (models/torch/.inductor-cache), which makes a second compile of the same network quicker.
- `torchscript`: `torch.jit.script` to model.pt, deprecated by PyTorch; written only when asked for.

The model store keeps one archive per version, `<model>-<version>.mar`, which `make serve` rolls out live, and the
latest also as `<model>.mar`, the one TorchServe loads when it starts. The archive carries model.onnx.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from experiment import artifacts
from experiment.errors import UsageError
from torch_pipeline.model import MLP, ServingModel

# TorchServe's handler lives with the servers; the archiver copies it into the .mar by path.
SERVING_DIR = Path(__file__).resolve().parent.parent / "serving"
HANDLER_PATH = SERVING_DIR / "torchserve" / "handler.py"
# Workers and batching travel inside the archive, so they hold for every version however TorchServe is started.
MODEL_CONFIG_PATH = SERVING_DIR / "torchserve" / "model-config.yaml"

FORMATS = tuple(artifacts.TORCH_FORMAT_FILES)  # ("onnx", "pt2", "torchscript")
DEFAULT_FORMATS = ("onnx",)
# The largest batch the exports accept: the REST limit of 1,024 instances per request (serving.protocol.rest) times
# the 8 requests TorchServe's batching joins into one call (serving/torchserve/model-config.yaml).
MAX_BATCH_SIZE = 8 * 1024
INPUT_NAME = "images"
OUTPUT_NAMES = ("probabilities", "classes")  # ServingModel's keys, in its order
# Inductor's compile cache: beside the exports (git-ignored), reused by every run that exports the same network.
INDUCTOR_CACHE_FOLDER = ".inductor-cache"

# Per format: who maintains it, what loads it, and which libraries' versions made it.
FORMAT_FACTS: dict[str, dict[str, Any]] = {
    "onnx": {
        "status": "maintained",
        "loaded_by": [
            "ONNX Runtime (Python, C, C++, C#, Java, JavaScript)",
            "Flask app (default)",
            "TorchServe handler",
        ],
        "made_by": ("torch", "onnx", "onnxscript"),
    },
    "pt2": {
        "status": "maintained",
        "loaded_by": [
            "torch._inductor.aoti_load_package (Python)",
            "torch::inductor::AOTIModelPackageLoader (C++)",
            "Flask app (FLASK_MODEL_FORMAT=pt2)",
        ],
        "made_by": ("torch",),
    },
    "torchscript": {
        "status": "deprecated",
        "loaded_by": [
            "torch.jit.load (Python)",
            "torch::jit::load (C++ libtorch)",
            "Flask app (FLASK_MODEL_FORMAT=torchscript)",
        ],
        "made_by": ("torch",),
    },
}


def find_cpp_compiler() -> str | None:
    """The C++ compiler AOTInductor would use ($CXX, else c++, g++ or clang++ on PATH), or None."""
    candidates = [os.environ["CXX"]] if os.environ.get("CXX") else ["c++", "g++", "clang++"]
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return found
    return None


@contextlib.contextmanager
def _exporter_noise_filtered() -> Iterator[None]:
    """Quiet two messages torch 2.13's own exporters emit on every export, neither about this project's code."""
    with warnings.catch_warnings():
        # torch.export's pytree code calls its own deprecated LeafSpec check (torch/utils/_pytree.py).
        warnings.filterwarnings(
            "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
        )
        # The ONNX exporter's registry logs one line per torchvision operator it skips when torchvision is absent.
        registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
        level = registry_logger.level
        registry_logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            registry_logger.setLevel(level)


def _serving_module(model: MLP) -> ServingModel:
    """The serving wrapper in eval mode (dropout off), on the CPU a server loads it on."""
    return ServingModel(model).eval()


def _example_and_dynamic_shapes(model: MLP) -> tuple[tuple[torch.Tensor], tuple[dict[int, Any]]]:
    # A batch of 2, not 1: torch.export specialises a size-1 dimension, which would fix the batch.
    example = torch.zeros((2, *model.spec.input_shape), dtype=torch.float32)  # (N, H, W)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH_SIZE)
    return (example,), ({0: batch},)


def write_onnx(model: MLP, directory: Path) -> Path:
    """torch.onnx.export (dynamo) to directory/model.onnx: input images (N, H, W), outputs probabilities, classes."""
    import onnx

    path = Path(directory) / artifacts.ONNX_FILE
    example, dynamic_shapes = _example_and_dynamic_shapes(model)
    with _exporter_noise_filtered():
        torch.onnx.export(
            _serving_module(model),
            example,
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    return path


def write_aoti_package(model: MLP, directory: Path, cache_dir: Path | None = None) -> Path:
    """torch.export + AOTInductor to directory/model.pt2 (dynamic batch); compiles C++ with the system compiler."""
    if cache_dir is not None:
        # Inductor's public setting for its cache; a folder the user chose already wins.
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path(cache_dir).resolve()))
    path = Path(directory) / artifacts.AOTI_FILE
    example, dynamic_shapes = _example_and_dynamic_shapes(model)
    with _exporter_noise_filtered():
        program = torch.export.export(_serving_module(model), example, dynamic_shapes=dynamic_shapes)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))
    return path


def write_torchscript(model: MLP, directory: Path) -> Path:
    """Script the serving wrapper (eval mode, so dropout is off) and save it as directory/model.pt (deprecated)."""
    scripted = torch.jit.script(_serving_module(model))
    path = Path(directory) / artifacts.TORCHSCRIPT_FILE
    scripted.save(str(path))
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def artifact_record(export_format: str, path: Path, seconds: float) -> dict[str, Any]:
    """metadata.json's entry for one exported file: what it is, its size and digest, what made and loads it."""
    facts = FORMAT_FACTS[export_format]
    return {
        "format": export_format,
        "file": Path(path).name,
        "bytes": Path(path).stat().st_size,
        "sha256": _sha256(Path(path)),
        "made_by": {package: importlib.metadata.version(package) for package in facts["made_by"]},
        "loaded_by": list(facts["loaded_by"]),
        "status": facts["status"],
        "export_seconds": round(seconds, 3),
    }


def export_formats(
    model: MLP, directory: Path, formats: Sequence[str], cache_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Write each requested format into directory; returns their metadata records, in order.

    The .pt2 needs a C++ compiler: without one it is skipped with one sentence on stderr, the other formats still
    written.
    """
    writers: dict[str, Callable[[], Path]] = {
        "onnx": lambda: write_onnx(model, directory),
        "pt2": lambda: write_aoti_package(model, directory, cache_dir),
        "torchscript": lambda: write_torchscript(model, directory),
    }
    records = []
    for export_format in formats:
        if export_format == "pt2" and find_cpp_compiler() is None:
            print("No C++ compiler found (set CXX or install g++), so model.pt2 is not written.", file=sys.stderr)
            continue
        started = time.perf_counter()
        path = writers[export_format]()
        records.append(artifact_record(export_format, path, time.perf_counter() - started))
    return records


def archive_name(model_name: str, version: int) -> str:
    """<model>-<version>.mar: one archive per version in the model store (serving.torchserve.rollout reads it)."""
    return f"{model_name}-{version}.mar"


def latest_archive_name(model_name: str) -> str:
    """<model>.mar: the newest version's archive under the name TorchServe loads at start."""
    return f"{model_name}.mar"


def _archiver_command() -> list[str]:
    executable = Path(sys.executable).parent / "torch-model-archiver"
    if executable.exists():
        return [str(executable)]
    found = shutil.which("torch-model-archiver")
    if found is None:
        raise UsageError("torch-model-archiver is not installed; run `make setup`.")
    return [found]


def _stage_protocol(directory: Path) -> Path:
    """directory/serving/{__init__.py, protocol/}: the package the handler imports, laid out as in the repository."""
    package = directory / "serving"
    shutil.copytree(SERVING_DIR / "protocol", package / "protocol", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(SERVING_DIR / "__init__.py", package / "__init__.py")
    return directory


def write_model_archive(version_dir: Path, model_name: str, version: int, export_dir: Path) -> Path:
    """Pack version_dir's model.onnx, metadata.json, the handler, serving.protocol and the model config (workers,
    batching) into export_dir/<model_name>-<version>.mar.

    The archiver copies the contents of a folder given in --extra-files into the archive's root, so the staged
    folder's serving/ becomes serving/ beside handler.py, and TorchServe's model folder (on the worker's Python
    path) makes `serving.protocol` importable there.
    """
    with tempfile.TemporaryDirectory(prefix="mar-") as staging:
        extra_folder, output_folder = Path(staging) / "extra", Path(staging) / "output"
        output_folder.mkdir()
        extra_files = [str(Path(version_dir) / artifacts.METADATA_FILE), str(_stage_protocol(extra_folder))]
        command = _archiver_command() + [
            "--model-name",
            model_name,
            "--version",
            str(version),
            "--serialized-file",
            str(Path(version_dir) / artifacts.ONNX_FILE),
            "--handler",
            str(HANDLER_PATH),
            "--extra-files",
            ",".join(extra_files),
            "--config-file",
            str(MODEL_CONFIG_PATH),
            "--export-path",
            str(output_folder),
        ]
        # The archiver gathers the files in <temp dir>/<model name>, removed first: archives of one model built at
        # once (trainings into other models folders, a test beside a training) would empty each other's. Each
        # run gets a temp dir of its own.
        environment = {**os.environ, "TMPDIR": staging}
        completed = subprocess.run(command, capture_output=True, text=True, env=environment)
        if completed.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed: {completed.stderr.strip() or completed.stdout.strip()}")
        # The archiver names its output after the model; the version goes into the name here.
        archive = Path(export_dir) / archive_name(model_name, version)
        shutil.move(str(output_folder / f"{model_name}.mar"), archive)
    return archive


def publish_model_archive(archive: Path, model_store: Path, model_name: str) -> Path:
    """Move a finished archive into model_store under its versioned name, then make it <model>.mar too.

    Both steps are atomic renames (archive must lie on model_store's filesystem): a watcher or a starting TorchServe
    sees a whole archive or none. The versioned one comes first, so <model>.mar never names a version the store
    lacks. Returns the versioned archive's path.
    """
    archive, model_store = Path(archive), Path(model_store)
    versioned = model_store / archive.name
    latest_copy = archive.with_name(f".{archive.name}.latest")
    shutil.copy2(archive, latest_copy)
    try:
        os.replace(archive, versioned)
        os.replace(latest_copy, model_store / latest_archive_name(model_name))
    finally:
        latest_copy.unlink(missing_ok=True)
    return versioned
