"""Model versions: scan each base path for integer folders, load new versions, unload old ones, report states.

The rules follow TensorFlow Serving's availability-preserving policy: a new version is loaded (and answers a
warm-up call) before an old one is unloaded, and a version that fails to load leaves the old one serving.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable

from experiment.artifacts import list_versions
from serving.protocol.errors import RequestError
from serving.tfserving.servable import Servable

logger = logging.getLogger("serving.tfserving")

# ModelVersionStatus.State names (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass(frozen=True)
class VersionPolicy:
    """Which versions to serve: the latest n, all, or a specific set (ServableVersionPolicy)."""

    kind: str = "latest"  # "latest", "all" or "specific"
    num_versions: int = 1
    versions: frozenset[int] = frozenset()

    def select(self, present: list[int]) -> set[int]:
        """The versions among present (ascending) that should be loaded."""
        if self.kind == "all":
            return set(present)
        if self.kind == "specific":
            return set(present) & set(self.versions)
        return set(present[-self.num_versions :]) if present else set()


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One served model: its name, base path, version policy and version labels."""

    name: str
    base_path: Path
    policy: VersionPolicy = VersionPolicy()
    labels: dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version; error_code is a tensorflow.error.Code name."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass
class _ModelState:
    source: ModelSource
    loaded: dict[int, Servable] = dataclasses.field(default_factory=dict)
    statuses: dict[int, VersionStatus] = dataclasses.field(default_factory=dict)
    failed: dict[int, tuple] = dataclasses.field(default_factory=dict)  # version → folder fingerprint that failed


Loader = Callable[[str, int, Path], Servable]


def _default_loader(model_name: str, version: int, path: Path) -> Servable:
    servable = Servable.load(model_name, version, path)
    servable.warm_up()
    return servable


class ModelManager:
    """Holds the loaded versions of every model and keeps them in step with the files on disk."""

    def __init__(
        self,
        sources: list[ModelSource],
        poll_wait_seconds: float = 1.0,
        loader: Loader = _default_loader,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.poll_wait_seconds = poll_wait_seconds
        self._loader = loader
        self._on_change = on_change or (lambda: None)
        self._lock = threading.Lock()
        self._models: dict[str, _ModelState] = {source.name: _ModelState(source) for source in sources}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._poll_lock = threading.Lock()  # one reconciliation at a time (watcher thread or a reload request)

    # ---- reading ------------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """Names of the configured models."""
        with self._lock:
            return sorted(self._models)

    def servable(self, model_name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The version to serve: the one asked for (by number or label), else the highest available."""
        with self._lock:
            state = self._models.get(model_name)
            if state is None:
                raise RequestError(f"Servable not found for request: model '{model_name}' is not served here.", "NOT_FOUND")
            if label is not None:
                if label not in state.source.labels:
                    raise RequestError(f"Unrecognized servable version label: {label}.", "NOT_FOUND")
                version = state.source.labels[label]
            if version is not None:
                servable = state.loaded.get(version)
                if servable is None:
                    raise RequestError(
                        f"Servable not found for request: version {version} of model '{model_name}' is not loaded.",
                        "NOT_FOUND",
                    )
                return servable
            if not state.loaded:
                raise RequestError(
                    f"Servable not found for request: model '{model_name}' has no version loaded yet.", "NOT_FOUND"
                )
            return state.loaded[max(state.loaded)]

    def statuses(self, model_name: str, version: int | None = None) -> list[VersionStatus]:
        """Version states, newest first; NOT_FOUND for an unknown model or version."""
        with self._lock:
            state = self._models.get(model_name)
            if state is None or not state.statuses:
                raise RequestError(f"Could not find any versions of model {model_name}.", "NOT_FOUND")
            if version is not None:
                if version not in state.statuses:
                    raise RequestError(f"Could not find version {version} of model {model_name}.", "NOT_FOUND")
                return [dataclasses.replace(state.statuses[version])]
            return [dataclasses.replace(state.statuses[number]) for number in sorted(state.statuses, reverse=True)]

    def all_models_available(self) -> bool:
        """True when every configured model has at least one version loaded (the health check's SERVING)."""
        with self._lock:
            return bool(self._models) and all(state.loaded for state in self._models.values())

    # ---- changing -----------------------------------------------------------------------------------

    def reconfigure(self, sources: list[ModelSource]) -> None:
        """Replace the model list (a reloaded config); removed models are unloaded at once, new ones loaded."""
        with self._poll_lock:
            with self._lock:
                wanted = {source.name: source for source in sources}
                removed = [self._models.pop(name) for name in list(self._models) if name not in wanted]
                for name, source in wanted.items():
                    if name in self._models:
                        self._models[name].source = source
                    else:
                        self._models[name] = _ModelState(source)
            for state in removed:
                for version in sorted(state.loaded):
                    logger.info("Unloaded model %s version %d (removed from the config).", state.source.name, version)
            self._poll_locked()
        self._on_change()

    def poll_once(self) -> None:
        """Scan every base path once and load / unload versions to match."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        with self._lock:
            states = list(self._models.values())
        for state in states:
            self._reconcile(state)

    def _reconcile(self, state: _ModelState) -> None:
        source = state.source
        present = list_versions(source.base_path)
        wanted = source.policy.select(present)
        for version in sorted(wanted, reverse=True):  # newest first: it is the one served by default
            if version not in state.loaded:
                self._load(state, version)
        with self._lock:
            loaded = set(state.loaded)
        # Unload only once something wanted is serving; a vanished folder is unloaded regardless.
        serving_wanted = loaded & wanted
        for version in sorted(loaded - wanted):
            if version in present and not serving_wanted:
                continue
            self._unload(state, version)

    def _load(self, state: _ModelState, version: int) -> None:
        name = state.source.name
        path = state.source.base_path / str(version)
        fingerprint = _fingerprint(path)
        if state.failed.get(version) == fingerprint:
            return  # failed before and nothing in the folder has changed since: do not retry or re-log
        with self._lock:
            state.statuses[version] = VersionStatus(version, LOADING)
        started = time.monotonic()
        try:
            servable = self._loader(name, version, path)
        except Exception as error:  # any failure (missing files, corrupt proto, bad graph) must keep the old version
            message = _one_line(error)
            with self._lock:
                state.failed[version] = fingerprint
                state.statuses[version] = VersionStatus(version, END, _error_code(error), message)
            logger.error("Failed to load model %s version %d from %s: %s", name, version, path, message)
            return
        with self._lock:
            state.failed.pop(version, None)
            state.loaded[version] = servable
            state.statuses[version] = VersionStatus(version, AVAILABLE)
        logger.info("Loaded model %s version %d from %s in %.2f s.", name, version, path, time.monotonic() - started)
        self._on_change()

    def _unload(self, state: _ModelState, version: int) -> None:
        with self._lock:
            state.statuses[version] = VersionStatus(version, UNLOADING)
            # Requests already holding the Servable finish with it; new ones no longer find it.
            state.loaded.pop(version, None)
            state.statuses[version] = VersionStatus(version, END)
        logger.info("Unloaded model %s version %d.", state.source.name, version)
        self._on_change()

    def start(self) -> None:
        """Poll in a background thread every poll_wait_seconds (never, if that is not positive)."""
        if self.poll_wait_seconds <= 0:
            return
        self._thread = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_wait_seconds):
            try:
                self.poll_once()
            except Exception:  # a watcher that dies silently would freeze the served versions
                logger.exception("Scanning the model base paths failed; retrying at the next poll.")

    def stop(self) -> None:
        """Stop the watcher thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


def _fingerprint(path: Path) -> tuple:
    """Names, sizes and modification times of every file under path: changes while a copy is still arriving."""
    entries = []
    for root, _, files in os.walk(path):
        for file_name in files:
            file_path = os.path.join(root, file_name)
            try:
                info = os.stat(file_path)
            except OSError:
                continue
            entries.append((os.path.relpath(file_path, path), info.st_size, info.st_mtime_ns))
    return tuple(sorted(entries))


def _one_line(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(text.split())[:500]


def _error_code(error: BaseException) -> str:
    """The tensorflow.error.Code name for a load failure (TensorFlow's own code when it raised one)."""
    import tensorflow as tf

    if isinstance(error, tf.errors.OpError):
        from tensorflow.core.protobuf import error_codes_pb2

        return error_codes_pb2.Code.Name(error.error_code)
    if isinstance(error, FileNotFoundError):
        return "NOT_FOUND"
    return "UNKNOWN"
