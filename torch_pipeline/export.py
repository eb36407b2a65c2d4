"""Export a trained torch model as TorchScript (model.pt) and as a TorchServe archive (.mar).

The model store keeps one archive per version, `<model>-<version>.mar`, which `make serve` rolls out live, and the
latest also as `<model>.mar`, the one TorchServe loads when it starts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from experiment import artifacts
from experiment.errors import UsageError
from torch_pipeline.model import MLP, ServingModel

# TorchServe's handler lives with the servers; the archiver copies it into the .mar by path.
SERVING_DIR = Path(__file__).resolve().parent.parent / "serving"
HANDLER_PATH = SERVING_DIR / "torchserve" / "handler.py"
# Workers and batching travel inside the archive, so they hold for every version however TorchServe is started.
MODEL_CONFIG_PATH = SERVING_DIR / "torchserve" / "model-config.yaml"


def archive_name(model_name: str, version: int) -> str:
    """<model>-<version>.mar: one archive per version in the model store (serving.torchserve.rollout reads it)."""
    return f"{model_name}-{version}.mar"


def latest_archive_name(model_name: str) -> str:
    """<model>.mar: the newest version's archive under the name TorchServe loads at start."""
    return f"{model_name}.mar"


def write_torchscript(model: MLP, directory: Path) -> Path:
    """Script the serving wrapper (eval mode, so dropout is off) and save it as directory/model.pt."""
    scripted = torch.jit.script(ServingModel(model).eval())
    path = Path(directory) / artifacts.TORCHSCRIPT_FILE
    scripted.save(str(path))
    return path


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
    """Pack version_dir's model.pt, metadata.json, the handler, serving.protocol and the model config (workers,
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
            "--model-name", model_name,
            "--version", str(version),
            "--serialized-file", str(Path(version_dir) / artifacts.TORCHSCRIPT_FILE),
            "--handler", str(HANDLER_PATH),
            "--extra-files", ",".join(extra_files),
            "--config-file", str(MODEL_CONFIG_PATH),
            "--export-path", str(output_folder),
        ]  # fmt: skip
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
