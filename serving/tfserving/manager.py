"""The served SavedModel versions: serving.versions' watcher with TensorFlow loading and TF Serving's lookups.

Which version answers a request (by number, label or the highest), what GetModelStatus reports, and the health
check's "every model has a version" live here; polling, policies and load-before-unload live in serving.versions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2

from serving.protocol.errors import RequestError
from serving.tfserving.servable import Servable
from serving.versions import Loader, ModelSource, VersionStatus, VersionWatcher, default_error_code


def _load_and_warm_up(model_name: str, version: int, path: Path) -> Servable:
    servable = Servable.load(model_name, version, path)
    servable.warm_up()
    return servable


class ModelManager(VersionWatcher[Servable]):
    """Holds the loaded versions of every model and keeps them in step with the files on disk."""

    def __init__(
        self,
        sources: list[ModelSource],
        poll_wait_seconds: float = 1.0,
        loader: Loader = _load_and_warm_up,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(sources, loader, poll_wait_seconds, on_change, error_code=_error_code)

    def servable(self, model_name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version to serve: the one asked for (by number or label), else the highest available."""
        model = self.versions(model_name)
        if model is None:
            raise RequestError(f"Servable not found for request: model '{model_name}' is not served here.", "NOT_FOUND")
        if label is not None:
            if label not in model.source.labels:
                raise RequestError(f"Unrecognized servable version label: {label}.", "NOT_FOUND")
            version = model.source.labels[label]
        if version is not None:
            servable = model.loaded.get(version)
            if servable is None:
                raise RequestError(
                    f"Servable not found for request: version {version} of model '{model_name}' is not loaded.",
                    "NOT_FOUND",
                )
            return servable
        latest = model.latest()
        if latest is None:
            raise RequestError(
                f"Servable not found for request: model '{model_name}' has no version loaded yet.", "NOT_FOUND"
            )
        return latest

    def statuses(self, model_name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, newest first; NOT_FOUND for an unknown model or version."""
        model = self.versions(model_name)
        if model is None or not model.statuses:
            raise RequestError(f"Could not find any versions of model {model_name}.", "NOT_FOUND")
        if version is not None:
            if version not in model.statuses:
                raise RequestError(f"Could not find version {version} of model {model_name}.", "NOT_FOUND")
            return [model.statuses[version]]
        return [model.statuses[number] for number in sorted(model.statuses, reverse=True)]

    def all_models_available(self) -> bool:
        """True when every configured model has at least one version loaded (the health check's SERVING)."""
        models = [self.versions(name) for name in self.model_names()]
        return bool(models) and all(model is not None and model.loaded for model in models)


def _error_code(error: BaseException) -> str:
    """The tensorflow.error.Code name for a load failure (TensorFlow's own code when it raised one)."""
    if isinstance(error, tf.errors.OpError):
        return error_codes_pb2.Code.Name(error.error_code)
    return default_error_code(error)
