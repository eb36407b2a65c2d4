"""Export a trained torch model as TorchScript (model.pt) and as a TorchServe archive (.mar)."""

from __future__ import annotations

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
    """Pack version_dir's model.pt, metadata.json, the handler and serving.protocol into export_dir/<model_name>.mar.

    The archiver copies the contents of a folder given in --extra-files into the archive's root, so the staged
    folder's serving/ becomes serving/ beside handler.py, and TorchServe's model folder (on the worker's Python
    path) makes `serving.protocol` importable there.
    """
    with tempfile.TemporaryDirectory(prefix="mar-extra-") as staging:
        extra_files = [str(Path(version_dir) / artifacts.METADATA_FILE), str(_stage_protocol(Path(staging)))]
        command = _archiver_command() + [
            "--model-name", model_name,
            "--version", str(version),
            "--serialized-file", str(Path(version_dir) / artifacts.TORCHSCRIPT_FILE),
            "--handler", str(HANDLER_PATH),
            "--extra-files", ",".join(extra_files),
            "--export-path", str(export_dir),
            "--force",
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        raise RuntimeError(f"torch-model-archiver failed: {completed.stderr.strip() or completed.stdout.strip()}")
    return Path(export_dir) / f"{model_name}.mar"
