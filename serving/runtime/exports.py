"""Which exports a set of servers needs, which are missing under a models folder, and training the missing ones.

Training runs the pipelines' own entry points as subprocesses: serving never imports pipeline code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path

from experiment.artifacts import MODEL_STORE, ONNX_FILE, list_versions
from serving.runtime.process import process_environment
from serving.runtime.spec import DEFAULT_MODEL_NAME, PROJECT_ROOT, ServerError, display_path

# Which training entry point makes each export.
TRAINING_MODULES = {"tf": "tf_pipeline.train", "torch": "torch_pipeline.train", "torch-archive": "torch_pipeline.train"}
ORDER = ("tf", "torch", "torch-archive")


def tf_base_path(models_dir: Path, model_name: str) -> Path:
    """models/tf/<model>: TensorFlow Serving's model base path."""
    return Path(models_dir) / "tf" / model_name


def torch_base_path(models_dir: Path, model_name: str) -> Path:
    """models/torch/<model>: the torch versions (model.onnx, ...) Flask serves."""
    return Path(models_dir) / "torch" / model_name


def model_store(models_dir: Path) -> Path:
    """models/torch/model-store: where TorchServe finds <model>.mar."""
    return Path(models_dir) / "torch" / MODEL_STORE


def has_export(export: str, models_dir: Path, model_name: str) -> bool:
    """Whether models_dir holds the export ('tf', 'torch' or 'torch-archive') of model_name."""
    if export == "tf":
        base = tf_base_path(models_dir, model_name)
        return any((base / str(version) / "saved_model.pb").is_file() for version in list_versions(base))
    if export == "torch":
        base = torch_base_path(models_dir, model_name)
        return any((base / str(version) / ONNX_FILE).is_file() for version in list_versions(base))
    return (model_store(models_dir) / f"{model_name}.mar").is_file()


def missing_exports(needed: Iterable[str], models_dir: Path, model_name: str) -> list[str]:
    """The needed exports that models_dir lacks, in the order tf, torch, torch-archive."""
    needed = set(needed)
    return [export for export in ORDER if export in needed and not has_export(export, models_dir, model_name)]


def train_missing(
    needed: Iterable[str], models_dir: Path, model_name: str, python: str, report: Callable[[str], None] = print
) -> None:
    """Train each framework whose export is missing into models_dir; ServerError when a training run fails."""
    modules = {TRAINING_MODULES[export] for export in missing_exports(needed, models_dir, model_name)}
    for module in sorted(modules):
        if model_name != DEFAULT_MODEL_NAME:
            raise ServerError(
                f"No export of model {model_name!r} exists; train it with `python -m {module} --data-dir ...` first."
            )
        report(f"No export of {model_name!r} under {display_path(models_dir)} for {module}; training one first.")
        result = subprocess.run(
            [python, "-m", module, "--output-dir", str(models_dir)],
            cwd=PROJECT_ROOT,
            env=process_environment({}),
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            raise ServerError(f"Training with {module} failed (exit status {result.returncode}); see its output above.")


def require_exports(needed: Iterable[str], models_dir: Path, model_name: str) -> None:
    """ServerError naming the first missing export and the make target that trains it."""
    missing = missing_exports(needed, models_dir, model_name)
    if missing:
        target = "train-tf" if missing[0] == "tf" else "train-torch"
        raise ServerError(
            f"No {missing[0]} export of {model_name!r} under {display_path(models_dir)}; "
            f"train one first with `make {target}`."
        )
