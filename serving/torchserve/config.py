"""TorchServe's configuration for one instance: its five ports and a config.properties written from the template.

The template, `config.properties` beside this file, holds DESIGN.md's defaults; `write_config` copies it with other
ports and the model store as an absolute path. Workers and batching are not in it: they travel inside each archive
(`model-config.yaml`, packed by torch_pipeline.export), so they hold for every version, however TorchServe starts.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path

from experiment.errors import UsageError

TEMPLATE = Path(__file__).resolve().parent / "config.properties"
KEY_FILE = "key_file.json"  # TorchServe writes it into its working folder while token authorization is on
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class TorchServePorts:
    """The five ports one TorchServe listens on (DESIGN.md defaults)."""

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
) -> Path:
    """Write a config.properties from the template with these ports and store.

    model_api turns TorchServe's model registration API on (the live roll-out registers and unregisters versions).
    Batch size, delay and workers, when given, override the archive's own settings for the version loaded at start
    (TorchServe matches config.properties' per-model settings by exact version, hence the archive's version as key).
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
            "load_models": f"{model_name}.mar",
        }
    )
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
        version = archive_version(Path(model_store) / f"{model_name}.mar")
        settings = {"marName": f"{model_name}.mar", **overrides}
        properties["models"] = json.dumps({model_name: {version: settings}}, separators=(",", ":"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path
