"""TorchServe's configuration for one instance: its five ports and a config.properties written from the template.

The template, `config.properties` beside this file, holds the default ports; `write_config` copies it with other
ports and the model store as an absolute path. Workers and batching are not in it: they travel inside each archive
(`model-config.yaml`, packed by torch_pipeline.export), so they hold for every version, however TorchServe starts.

An instance may override them (a benchmark's batching off, a test's single worker). TorchServe 0.12 gives an
archive's model-config.yaml precedence over config.properties' `models` settings for the models it loads at start,
so an override there is ignored; `write_config` writes it as a `model_snapshot` instead, the form TorchServe restores
its models from (docs/snapshot.md: a snapshot passed with --ts-config), which sets each setting as written. Versions
registered later through the management API take batch_size and max_batch_delay from the request (they win over the
archive's) and their workers from a scale request (serving.torchserve.rollout).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from pathlib import Path

import yaml

from experiment.errors import UsageError
from serving.protocol.rest import MAX_BATCH_SIZE

TEMPLATE = Path(__file__).resolve().parent / "config.properties"
KEY_FILE = "key_file.json"  # TorchServe writes it into its working folder while token authorization is on
HOST = "127.0.0.1"
WORKFLOW_STORE = "workflow-store"  # an empty folder beside the written config: no workflow archive to load
# The most bytes one instance's answer takes: 10 probabilities of at most 24 characters ("1.1754943508222875e-38"),
# a class of at most 20 digits and the JSON punctuation come to about 300; TorchServe's max_response_size must hold
# MAX_BATCH_SIZE of them (the most the handler answers in one reply), twice for margin.
MAX_ANSWER_BYTES_PER_INSTANCE = 512
MAX_RESPONSE_SIZE = 2 * MAX_BATCH_SIZE * MAX_ANSWER_BYTES_PER_INSTANCE
# Characters a model store's path may hold in the allowed_urls pattern; they are written as themselves or, when a
# regular expression gives them a meaning, as a one-character class.
_PLAIN_PATH_CHARACTERS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_")
_CLASS_PATH_CHARACTERS = set(".-+~@ ")
NO_URL_ALLOWED = "file:///no-url-is-allowed/"  # matches no URL a client can give for an archive
# TorchServe's own values for a model whose archive sets none (docs/management_api.md's registration defaults; on
# CPU, one worker per core).
DEFAULT_BATCH_SIZE = 1
DEFAULT_MAX_BATCH_DELAY_MS = 100


@dataclasses.dataclass(frozen=True)
class TorchServePorts:
    """The five ports one TorchServe listens on (docs/architecture.md's defaults)."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


def archive_version(archive: Path) -> str:
    """The model version written into a .mar's MANIFEST.json by torch-model-archiver --version."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        raise UsageError(f"{archive} is not a model archive made by torch-model-archiver.") from None
    return str(manifest["model"]["modelVersion"])


def archive_settings(archive: Path) -> dict[str, int]:
    """The workers and batching a .mar carries: minWorkers, maxWorkers, batchSize and maxBatchDelay.

    They come from the model-config.yaml its manifest names (torch-model-archiver --config-file); a setting the
    archive lacks gets TorchServe's own default (DEFAULT_BATCH_SIZE, DEFAULT_MAX_BATCH_DELAY_MS, a worker per core).
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))["model"]
            name = manifest.get("configFile")
            carried = yaml.safe_load(bundle.read(name)) if name else {}
    except (OSError, KeyError, TypeError, zipfile.BadZipFile, json.JSONDecodeError, yaml.YAMLError):
        raise UsageError(f"{archive} is not a model archive made by torch-model-archiver.") from None
    carried = carried if isinstance(carried, dict) else {}
    workers = os.cpu_count() or 1
    defaults = {
        "minWorkers": workers,
        "maxWorkers": workers,
        "batchSize": DEFAULT_BATCH_SIZE,
        "maxBatchDelay": DEFAULT_MAX_BATCH_DELAY_MS,
    }
    return {key: int(carried.get(key, default)) for key, default in defaults.items()}


def archive_problem(archive: Path) -> str | None:
    """Why TorchServe could not load this archive's model (one phrase), or None when it loads.

    The checks a worker's load would fail on, made before TorchServe starts: a readable zip with a manifest, the
    handler and metadata.json it needs, and a serialized model.onnx that ONNX Runtime can load.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))["model"]
            for name in (manifest["handler"], "metadata.json"):
                bundle.getinfo(name)
            json.loads(bundle.read("metadata.json"))["network"]["input_shape"]
            serialized = bundle.read(manifest["serializedFile"])
    except (OSError, zipfile.BadZipFile, KeyError, TypeError, ValueError) as error:
        return f"it is not a complete model archive ({type(error).__name__})"
    import onnxruntime  # only here: reading the launcher's flags or stopping a server needs no runtime

    try:
        onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own error types for a damaged file
        return f"its ONNX model does not load ({type(error).__name__})"
    return None


@dataclasses.dataclass(frozen=True)
class ArchiveChoice:
    """The archive TorchServe loads at start, and the newer ones passed over because they do not load."""

    archive: str
    version: str
    skipped: tuple[tuple[str, str], ...] = ()

    @property
    def message(self) -> str | None:
        """The sentence saying what was passed over and what serves instead; None when nothing was."""
        if not self.skipped:
            return None
        passed = "; ".join(f"{name}: {reason}" for name, reason in self.skipped)
        return f"Serving {self.archive} (version {self.version}), the newest archive that loads, instead of: {passed}."


def choose_archive(model_store: Path, model_name: str = "digits") -> ArchiveChoice:
    """The newest archive of the model in the store that loads: <model>.mar, else the newest <model>-<version>.mar.

    <model>.mar is the copy of the newest version that TorchServe loads by default; when it (or the version it
    copies) does not load, the newest versioned archive that does serves instead, so the last good version keeps
    serving. When none loads, <model>.mar, as if nothing had been checked.
    """
    model_store = Path(model_store)
    candidates: list[tuple[int, int, Path]] = []  # (version, preference, path): newest first, <model>.mar first
    default = model_store / f"{model_name}.mar"
    skipped: list[tuple[str, str]] = []
    if default.is_file():
        try:
            candidates.append((int(archive_version(default)), 1, default))
        except (UsageError, ValueError):
            skipped.append((default.name, "its manifest names no integer version"))
    pattern = re.compile(rf"{re.escape(model_name)}-(\d+)\.mar")
    for path in model_store.glob(f"{model_name}-*.mar"):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            candidates.append((int(match.group(1)), 0, path))
    for version, _, path in sorted(candidates, reverse=True):
        problem = archive_problem(path)
        if problem is None and path != default and archive_version(path) != str(version):
            problem = f"its manifest says version {archive_version(path)}"
        if problem is None:
            return ArchiveChoice(path.name, str(version), tuple(skipped))
        skipped.append((path.name, problem))
    # None loads: TorchServe gets <model>.mar as before and reports its own failure (the start then fails).
    return ArchiveChoice(default.name, "unknown")


def allowed_urls_pattern(model_store: Path) -> str:
    """TorchServe's allowed_urls for a model store: file URLs of the store's own archives, no other URL.

    TorchServe loads a plain archive name from its model store without consulting allowed_urls; a URL (http, https,
    file) must match this pattern, so none outside the store can. A path with characters the pattern cannot spell
    plainly (a comma would split TorchServe's list) gets a pattern no URL matches.
    """
    path = Path(model_store).resolve().as_posix()
    if not set(path) <= _PLAIN_PATH_CHARACTERS | _CLASS_PATH_CHARACTERS:
        return NO_URL_ALLOWED
    spelled = "".join(f"[{character}]" if character in _CLASS_PATH_CHARACTERS else character for character in path)
    return f"file://{spelled.rstrip('/')}/[^/]+[.]mar"


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as an ordered dict (the simple key=value subset config.properties uses)."""
    properties = {}
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key, value = stripped.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def write_config(
    path: Path,
    model_store: Path,
    ports: TorchServePorts,
    model_name: str = "digits",
    token_auth: bool = True,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    workers: int | None = None,
    model_api: bool = False,
    archive: str | None = None,
) -> Path:
    """Write a config.properties from the template with these ports and store.

    model_api turns TorchServe's model registration API on (the live roll-out registers and unregisters versions); it
    needs token_auth, so that only a holder of the management key can register. allowed_urls admits only the model
    store's own archives, and workflows come from an empty folder beside the config. max_response_size agrees with
    the handler's batch limit (MAX_RESPONSE_SIZE).
    archive is the store's archive loaded at start (default <model>.mar; see choose_archive). Batch size, delay and
    workers, when given, override the archive's own settings for the version loaded at start: they go into a
    model_snapshot naming that archive and its version, with the archive's own values for the settings not
    overridden (the module's docstring says why config.properties' `models` would not do).
    """
    properties = read_properties(TEMPLATE)
    properties.update(
        {
            "inference_address": f"http://{HOST}:{ports.inference}",
            "management_address": f"http://{HOST}:{ports.management}",
            "metrics_address": f"http://{HOST}:{ports.metrics}",
            "grpc_inference_port": str(ports.grpc_inference),
            "grpc_management_port": str(ports.grpc_management),
            "model_store": str(Path(model_store).resolve()),
            "load_models": archive or f"{model_name}.mar",
            "allowed_urls": allowed_urls_pattern(model_store),
            "workflow_store": str(Path(path).resolve().parent / WORKFLOW_STORE),
            "max_response_size": str(MAX_RESPONSE_SIZE),
        }
    )
    if model_api and not token_auth:
        raise UsageError("TorchServe's model API needs token authorization on: without it anyone local could register.")
    if not token_auth:
        properties["disable_token_authorization"] = "true"
    if model_api:
        properties["enable_model_api"] = "true"
    overrides: dict[str, int] = {}
    if batch_size is not None:
        overrides["batchSize"] = batch_size
    if max_batch_delay_ms is not None:
        overrides["maxBatchDelay"] = max_batch_delay_ms
    if workers is not None:
        overrides["minWorkers"] = overrides["maxWorkers"] = workers
    if overrides:
        mar_name = archive or f"{model_name}.mar"
        mar_path = Path(model_store) / mar_name
        version = archive_version(mar_path)
        settings = {"defaultVersion": True, "marName": mar_name, **archive_settings(mar_path), **overrides}
        snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {model_name: {version: settings}}}
        # TorchServe restores the snapshot's models instead of load_models, each setting as written.
        properties["model_snapshot"] = json.dumps(snapshot, separators=(",", ":"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.parent / WORKFLOW_STORE).mkdir(exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path
