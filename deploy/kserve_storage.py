"""Lay out the latest TorchServe archive the way KServe's TorchServe runtime loads it.

    python -m deploy.kserve_storage            # → models/kserve/torchserve/digits/

KServe copies what an InferenceService's storageUri names to /mnt/models. Its TorchServe runtime then expects
`config/config.properties` (with a model_snapshot naming the model, its archive and the archive's version) and
`model-store/` holding exactly one .mar; models/torch/model-store/ holds one archive per version, so it cannot be
used as it is. This writes that layout next to the other exports, so copying models/ to a volume or a bucket
carries it along (deploy/kserve/torchserve.yaml points at it). The TensorFlow runtime needs no such step: its
storageUri is models/tf/digits/ itself.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from experiment import artifacts
from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m deploy.kserve_storage"
CONFIG_TEMPLATE = Path(__file__).resolve().parent / "kserve" / "torchserve-config.properties"
MODEL_STORE_MOUNT = "/mnt/models/model-store"  # where KServe's storage initializer puts model-store/
# The per-model settings of serving/torchserve/config.properties.
WORKERS = {"minWorkers": 1, "maxWorkers": 2, "batchSize": 8, "maxBatchDelay": 2, "responseTimeout": 30}


def layout_path(models_dir: Path, model_name: str) -> Path:
    """Where the layout of one model goes: <models>/kserve/torchserve/<model>/."""
    return Path(models_dir) / "kserve" / "torchserve" / model_name


def model_snapshot(model_name: str, archive_name: str, version: str) -> dict:
    """TorchServe's model_snapshot for one model: the wrapper and TorchServe both read it."""
    settings = {"defaultVersion": True, "marName": archive_name, **WORKERS}
    return {"name": "startup.cfg", "modelCount": 1, "models": {model_name: {version: settings}}}


def write_layout(models_dir: Path, model_name: str) -> Path:
    """Copy <models>/torch/model-store/<model>.mar and a config.properties into the KServe layout; return its root."""
    from serving.torchserve.config import archive_version

    archive = artifacts.model_store_path(models_dir) / f"{model_name}.mar"
    if not archive.is_file():
        raise UsageError(f"No {archive}; run `make train-torch` first (or pass --models-dir).")
    target = layout_path(models_dir, model_name)
    target.parent.mkdir(parents=True, exist_ok=True)
    # Under the torch model's publication lock, <model>.mar is the highest version and no training replaces it
    # while it is copied; two layouts written at once follow each other.
    with artifacts.publish_lock(artifacts.model_base_path(models_dir, "torch", model_name)):
        version = archive_version(archive)
        snapshot = json.dumps(model_snapshot(model_name, archive.name, version), separators=(",", ":"))
        # Built beside the target and swapped in by renames, so a reader never sees half a layout.
        with artifacts.staging_directory(target.parent) as staging, artifacts.staging_directory(target.parent) as old:
            (staging / "config").mkdir()
            (staging / "model-store").mkdir()
            config = CONFIG_TEMPLATE.read_text().rstrip("\n") + f"\nmodel_snapshot={snapshot}\n"
            (staging / "config" / "config.properties").write_text(config)
            shutil.copy2(archive, staging / "model-store" / archive.name)
            if target.exists():
                target.rename(old / model_name)  # removed with old when the block ends
            staging.rename(target)
    return target


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog=PROG, description="Lay out the TorchServe archive for KServe.")
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="the exports (default: models)")
    parser.add_argument("--model-name", default="digits", help="the model (default: digits)")
    arguments = parser.parse_args(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        target = write_layout(arguments.models_dir, arguments.model_name)
        print(f"{target}: config/config.properties and model-store/{arguments.model_name}.mar for KServe")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
