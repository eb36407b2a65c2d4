"""The served SavedModel versions: serving.versions' watcher with TensorFlow loading and TF Serving's lookups.

Which version answers a request (by number, label or the highest), with the real server's messages
("Servable not found for request: Specific(x, 3)"); its rules for version labels (a label may only name a version
that is AVAILABLE when the config arrives, unless --allow_version_labels_for_unavailable_models lets a new label
name one still to come); what GetModelStatus reports; and the health check's "every model has a version". Polling,
policies and load-before-unload live in serving.versions.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf
from tensorflow.core.protobuf import error_codes_pb2

from experiment.errors import UsageError
from serving.protocol.errors import RequestError, quoted
from serving.tfserving import warmup
from serving.tfserving.config import TFModelSource
from serving.tfserving.servable import Servable
from serving.versions import AVAILABLE, Loader, ModelSource, VersionStatus, VersionWatcher, default_error_code

logger = logging.getLogger("serving.tfserving")


class LabelError(UsageError):
    """A config whose version labels break the real server's rules; gRPC answers it FAILED_PRECONDITION."""


def unavailable_label_message(version: int, model_name: str) -> str:
    """The real server's refusal of a label for a version that is not loaded."""
    return (
        f"Request to assign label to version {version} of model {model_name}, which is not currently available for "
        "inference"
    )


class ModelManager(VersionWatcher[Servable]):
    """Holds the loaded versions of every model and keeps them in step with the files on disk."""

    def __init__(
        self,
        sources: list[ModelSource],
        poll_wait_seconds: float = 1.0,
        loader: Loader | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        # The flags ride on the sources the command line produced; configs reloaded later get the same flags.
        first = sources[0] if sources else None
        self.warmup = getattr(first, "warmup", TFModelSource.warmup)
        self.allow_unavailable_labels = getattr(first, "allow_unavailable_labels", False)
        super().__init__(sources, loader or self._load_servable, poll_wait_seconds, on_change, error_code=_error_code)

    def _load_servable(self, model_name: str, version: int, path: Path) -> Servable:
        servable = Servable.load(model_name, version, version_folder(path, version))
        if self.warmup:
            try:
                warmup.run_warmup(servable)
            except BaseException:
                servable.close()
                raise
        return servable

    def reconfigure(self, sources: list[ModelSource]) -> None:
        """Serve these models from now on (a reloaded config); LabelError, and no change, if its labels break the rules."""
        sources = [self._with_flags(source) for source in sources]
        self.check_labels(sources)
        super().reconfigure(sources)

    def _with_flags(self, source: ModelSource) -> TFModelSource:
        fields = {field.name: getattr(source, field.name) for field in dataclasses.fields(ModelSource)}
        return TFModelSource(**fields, warmup=self.warmup, allow_unavailable_labels=self.allow_unavailable_labels)

    def check_labels(self, sources: list[ModelSource]) -> None:
        """Every label must name an AVAILABLE version; with the allow flag a label that is new may name any version."""
        for source in sources:
            current = self.versions(source.name)
            available = (
                {number for number, status in current.statuses.items() if status.state == AVAILABLE}
                if current
                else set()
            )
            existing = current.source.labels if current else {}
            for label, version in source.labels.items():
                moved = label in existing and existing[label] != version
                if version in available or (self.allow_unavailable_labels and not moved):
                    continue
                raise LabelError(unavailable_label_message(version, source.name))

    def servable(self, model_name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version to serve: the one asked for (by number or label), else the highest available."""
        if not model_name:
            raise RequestError("ModelSpec has no name specified.")
        model = self.versions(model_name)
        if label is not None:
            labels = model.source.labels if model is not None else {}
            if label not in labels:
                raise RequestError(f"Unrecognized servable version label: {quoted(label)}")
            version = labels[label]
        servable = None if model is None else model.latest() if version is None else model.loaded.get(version)
        if servable is None:
            request = (
                f"Latest({quoted(model_name)})" if version is None else f"Specific({quoted(model_name)}, {version})"
            )
            raise RequestError(f"Servable not found for request: {request}", "NOT_FOUND")
        return servable

    def version_for_label(self, model_name: str, label: str) -> int:
        """The version a label names (INVALID_ARGUMENT, as the real server answers, for an unknown label)."""
        model = self.versions(model_name)
        labels = model.source.labels if model is not None else {}
        if label not in labels:
            raise RequestError(f"Unrecognized servable version label: {quoted(label)}")
        return labels[label]

    def statuses(self, model_name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, newest first; NOT_FOUND for an unknown model or version."""
        model = self.versions(model_name)
        if model is None or not model.statuses:
            raise RequestError(f"Could not find any versions of model {quoted(model_name)}", "NOT_FOUND")
        if version is not None:
            if version not in model.statuses:
                raise RequestError(f"Could not find version {version} of model {quoted(model_name)}", "NOT_FOUND")
            return [model.statuses[version]]
        return [model.statuses[number] for number in sorted(model.statuses, reverse=True)]

    def check_started(self) -> None:
        """ServablesUnavailable when a model has no version loaded and a version of it failed to load.

        Called after the load at start-up: the real server exits then instead of serving nothing. A model with no
        version on disk yet is not a failure (both servers wait for one), and a model whose newest version failed
        while an older one loads serves the older one (the last good version).
        """
        failures, names = [], []
        for name in self.model_names():
            model = self.versions(name)
            if model is None or model.loaded:
                continue
            for status in sorted(model.statuses.values(), key=lambda status: status.version, reverse=True):
                if status.error_code != "OK":
                    failures.append(status)
                    names.append(name)
        if failures:
            raise ServablesUnavailable(failures, names)

    def all_models_available(self) -> bool:
        """True when every configured model has at least one version loaded (the health check's SERVING)."""
        models = [self.versions(name) for name in self.model_names()]
        return bool(models) and all(model is not None and model.loaded for model in models)


class ServablesUnavailable(Exception):
    """Models with no version loaded after the start-up load: the real server refuses to start then."""

    def __init__(self, failures: list[VersionStatus], names: list[str]) -> None:
        entries = "".join(
            f"{{{{name: {name} version: {status.version}}} due to error: {status.error_message}}}, "
            for name, status in zip(names, failures, strict=True)
        )
        # tensorflow_model_server's words: "Failed to start server. Error: " + this status.
        super().__init__(f"UNKNOWN: {len(failures)} servable(s) did not become available: {{{entries}}}")


def version_folder(path: Path, version: int) -> Path:
    """The folder of version: path itself, or its sibling with leading zeros ('00000123'), as TF Serving accepts."""
    path = Path(path)
    if path.is_dir() or not path.parent.is_dir():
        return path
    for entry in path.parent.iterdir():
        if entry.is_dir() and entry.name.isdigit() and int(entry.name) == version:
            return entry
    return path


def _error_code(error: BaseException) -> str:
    """The tensorflow.error.Code name for a load failure (TensorFlow's own code, or the refused warm-up record's)."""
    if isinstance(error, tf.errors.OpError):
        return error_codes_pb2.Code.Name(error.error_code)
    if isinstance(error, RequestError):
        return error.code
    return default_error_code(error)
