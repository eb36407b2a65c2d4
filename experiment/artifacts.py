"""Where artifacts live and how they are written: integer versions, atomic publication, metadata.json."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from experiment.json_types import JSONDict, JSONScalar, JSONValue
from experiment.spec import NetworkDict

METADATA_FILE = "metadata.json"
TORCHSCRIPT_FILE = "model.pt"  # TorchScript: deprecated by PyTorch, written only when asked for
ONNX_FILE = "model.onnx"  # ONNX Runtime (and any ONNX consumer): what Flask and TorchServe serve by default
AOTI_FILE = "model.pt2"  # torch.export + AOTInductor package: loadable from C++ without Python
# Export format → the file it writes in a torch version folder.
TORCH_FORMAT_FILES = {"onnx": ONNX_FILE, "pt2": AOTI_FILE, "torchscript": TORCHSCRIPT_FILE}
MODEL_STORE = "model-store"
# Temporary export folders start with a dot, so a server scanning for integer versions never sees them.
STAGING_PREFIX = ".staging-"
# The lock file in a model's base path that every publication of that model holds (hidden, like staging folders).
PUBLISH_LOCK = ".publish.lock"


def model_base_path(output_dir: Path, framework: str, model_name: str) -> Path:
    """models/<framework>/<model>: the folder whose integer subfolders are versions (TF Serving's base path)."""
    return Path(output_dir) / framework / model_name


def model_store_path(output_dir: Path) -> Path:
    """models/torch/model-store: where TorchServe finds <model>.mar archives."""
    return Path(output_dir) / "torch" / MODEL_STORE


def list_versions(base_path: Path) -> list[int]:
    """Integer version folders under base_path, ascending; anything else there is ignored."""
    base_path = Path(base_path)
    if not base_path.is_dir():
        return []
    return sorted(int(entry.name) for entry in base_path.iterdir() if entry.is_dir() and entry.name.isdigit())


def latest_version(base_path: Path) -> int | None:
    """The highest version under base_path, or None when there is none."""
    versions = list_versions(base_path)
    return versions[-1] if versions else None


def next_version(base_path: Path) -> int:
    """The version a new export takes: highest existing + 1, starting at 1."""
    return (latest_version(base_path) or 0) + 1


def check_writable(directory: Path) -> None:
    """Create directory if needed and prove a file can be written there; raise UsageError otherwise."""
    from experiment.errors import UsageError

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=STAGING_PREFIX):
            pass
    except OSError as error:
        raise UsageError(f"Cannot write to {directory}: {error.strerror or error}.") from None


@contextlib.contextmanager
def staging_directory(parent: Path) -> Iterator[Path]:
    """A hidden temporary folder inside parent (same filesystem, so a rename publishes it); removed on failure."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=parent))
    # mkdtemp makes the folder private (0700); once published it must be as readable as any folder mkdir makes,
    # since servers may read it as another user (the Flask and TorchServe containers run as their own users).
    staging.chmod(_new_directory_mode())
    try:
        yield staging
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _new_directory_mode() -> int:
    """The mode os.mkdir gives a new folder under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


@contextlib.contextmanager
def publish_lock(base_path: Path) -> Iterator[None]:
    """Hold the model's publication lock: an exclusive flock on base_path/.publish.lock, released on exit.

    Every process that numbers, renames or publishes a version of this model (and its TorchServe archives) holds it,
    so concurrent trainings into one models folder take versions one after the other and whatever each publishes
    last (the default archive, the KServe layout) is the highest version. The lock is not reentrant: a process
    holding it must not take it again. The kernel drops it when its holder dies, so a killed run blocks no one.
    """
    base_path = Path(base_path)
    base_path.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(base_path / PUBLISH_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing the only descriptor releases the flock


def publish_version(staging: Path, base_path: Path, version: int | None = None) -> tuple[int, Path]:
    """Rename a finished staging folder to an integer version: the one given, or the next free one.

    The rename is atomic on one filesystem (a server sees all of the version or nothing) and never replaces a
    published version: a version given that exists already is a FileExistsError, and without one, a number another
    run took first is skipped. Callers that number anything else after the version (an archive) hold
    publish_lock(base_path) from choosing the number until both are published.
    """
    base_path = Path(base_path)
    while True:
        target = base_path / str(version if version is not None else next_version(base_path))
        if target.exists():  # os.rename would replace an empty folder; a version folder is never replaced
            if version is not None:
                raise FileExistsError(f"Version {version} exists already in {base_path}.")
            continue
        try:
            os.rename(staging, target)
        except OSError:
            if target.exists() and version is None:
                continue  # a concurrent export published this number first
            raise
        return int(target.name), target


def publish_file(staging_file: Path, target: Path) -> None:
    """Atomically replace target with staging_file (both on one filesystem)."""
    os.replace(staging_file, target)


def git_commit() -> str | None:
    """The current git commit of the source tree, or None outside a repository."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None


def build_metadata(
    *,
    framework: str,
    framework_version: str,
    dataset: str,
    network: NetworkDict,
    hyperparameters: Mapping[str, JSONScalar],
    test_accuracy: float,
    test_loss: float,
    training_seconds: float,
    run_name: str,
    extra: Mapping[str, JSONValue] | None = None,
) -> dict[str, object]:
    """The metadata.json content every export carries (docs/architecture.md, 'Names and places')."""
    return {
        "framework": framework,
        "framework_version": framework_version,
        "dataset": dataset,
        "network": network,
        "hyperparameters": hyperparameters,
        "test_accuracy": round(float(test_accuracy), 6),
        "test_loss": round(float(test_loss), 6),
        "training_seconds": round(float(training_seconds), 3),
        "run_name": run_name,
        "created_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        **(extra or {}),
    }


def write_metadata(directory: Path, metadata: Mapping[str, object]) -> Path:
    """Write metadata.json into directory and return its path."""
    path = Path(directory) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
    return path


def read_metadata(directory: Path) -> JSONDict:
    """Read the metadata.json beside an export (ValueError when it is not a JSON object)."""
    path = Path(directory) / METADATA_FILE
    metadata = json.loads(path.read_text())
    if not isinstance(metadata, dict):
        raise ValueError(f"{path} is not a JSON object.")
    return metadata
