"""The version watcher every server uses: scan base paths for integer version folders, load and unload per a policy.

The rules are TensorFlow Serving's availability-preserving ones: a new version is loaded (the loader also warms it
up) before an old one is unloaded, and a version that fails to load leaves the old one serving and is not retried
until something in its folder changes. One rule goes further than TensorFlow Serving: when no version the policy
wants loads (a corrupt newest version at start, or after a restart), the newest older version that does load is
served instead, until a wanted version loads (the last good version). Each server supplies only its
framework-specific loader.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Generic, TypeVar

from experiment.artifacts import list_versions

logger = logging.getLogger("serving.versions")

# ModelVersionStatus.State names (tensorflow_serving/apis/get_model_status.proto).
START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"

Model = TypeVar("Model")
Loader = Callable[[str, int, Path], Model]  # (model name, version, version folder) → the loaded model


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


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """What GetModelStatus reports for one version; error_code is a tensorflow.error.Code name."""

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass(frozen=True)
class ModelVersions(Generic[Model]):
    """One model at one moment: its source, loaded versions and their statuses.

    Replaced as a whole on every change, never modified, so a request reads a consistent view without a lock.
    """

    source: ModelSource
    loaded: Mapping[int, Model] = dataclasses.field(default_factory=dict)
    statuses: Mapping[int, VersionStatus] = dataclasses.field(default_factory=dict)

    def latest(self) -> Model | None:
        """The highest loaded version, the one served by default (None when nothing is loaded)."""
        return self.loaded[max(self.loaded)] if self.loaded else None

    def failure(self) -> VersionStatus | None:
        """The newest version that failed to load, if any."""
        failed = [status for status in self.statuses.values() if status.error_code != "OK"]
        return max(failed, key=lambda status: status.version) if failed else None


def default_error_code(error: BaseException) -> str:
    """The tensorflow.error.Code name for a load failure that carries no code of its own."""
    return "NOT_FOUND" if isinstance(error, FileNotFoundError) else "UNKNOWN"


class VersionWatcher(Generic[Model]):
    """Holds the loaded versions of every configured model and keeps them in step with the folders on disk.

    keep_vanished_until_replaced: TensorFlow Serving unloads a version as soon as its folder disappears; with this
    set, a vanished version keeps serving until a version the policy wants has loaded (the Flask app's rule).
    fall_back_to_last_good (on by default): under a "latest" policy, when none of the wanted versions loads and no
    other version still on disk is loaded, the newest older version that loads is served (and logged as such)
    until a wanted version loads; the failed ones stay END with their error in the statuses. A "specific" policy
    never falls back: the operator named the versions to serve.
    """

    def __init__(
        self,
        sources: list[ModelSource],
        loader: Loader,
        poll_wait_seconds: float = 1.0,
        on_change: Callable[[], None] | None = None,
        error_code: Callable[[BaseException], str] = default_error_code,
        keep_vanished_until_replaced: bool = False,
        fall_back_to_last_good: bool = True,
    ) -> None:
        self.poll_wait_seconds = poll_wait_seconds
        self._loader = loader
        self._on_change = on_change or (lambda: None)
        self._error_code = error_code
        self._keep_vanished = keep_vanished_until_replaced
        self._fall_back = fall_back_to_last_good
        self._lock = threading.Lock()  # one writer at a time replaces entries of _models
        self._models: dict[str, ModelVersions[Model]] = {source.name: ModelVersions(source) for source in sources}
        self._failed: dict[tuple[str, int], tuple] = {}  # (model, version) → fingerprint of a folder that failed
        self._poll_lock = threading.Lock()  # one reconciliation at a time (watcher thread or a reload request)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- reading ------------------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        """Names of the configured models."""
        return sorted(self._models)

    def versions(self, model_name: str) -> ModelVersions[Model] | None:
        """The model's current view (loaded versions and statuses), or None if it is not configured."""
        return self._models.get(model_name)

    # ---- changing -----------------------------------------------------------------------------------

    def reconfigure(self, sources: list[ModelSource]) -> None:
        """Replace the model list (a reloaded config); removed models are unloaded at once, new ones loaded."""
        with self._poll_lock:
            with self._lock:
                wanted = {source.name: source for source in sources}
                removed = [self._models.pop(name) for name in list(self._models) if name not in wanted]
                for name, source in wanted.items():
                    current = self._models.get(name)
                    if current is None:
                        self._models[name] = ModelVersions(source)
                    else:
                        self._models[name] = dataclasses.replace(current, source=source)
            for model in removed:
                self._failed = {key: value for key, value in self._failed.items() if key[0] != model.source.name}
                for version in sorted(model.loaded):
                    logger.info("Unloaded model %s version %d (removed from the config).", model.source.name, version)
            self._poll_locked()
        self._on_change()

    def poll_once(self) -> None:
        """Scan every base path once and load / unload versions to match."""
        with self._poll_lock:
            self._poll_locked()

    def _poll_locked(self) -> None:
        for name in list(self._models):
            self._reconcile(name)

    def _reconcile(self, name: str) -> None:
        source = self._models[name].source
        present = list_versions(source.base_path)
        wanted = source.policy.select(present)
        for version in sorted(wanted, reverse=True):  # newest first: it is the one served by default
            if version not in self._models[name].loaded:
                self._load(source, version)
        loaded = set(self._models[name].loaded)
        if self._fall_back and source.policy.kind == "latest" and wanted and not loaded & set(present):
            self._fall_back_to_last_good(source, present, wanted)
            loaded = set(self._models[name].loaded)
        # Unload only once something wanted is serving; a vanished folder is unloaded regardless (unless kept).
        serving_wanted = loaded & wanted
        for version in sorted(loaded - wanted):
            vanished = version not in present
            if not serving_wanted and (not vanished or self._keep_vanished):
                continue
            self._unload(name, version)

    def _fall_back_to_last_good(self, source: ModelSource, present: list[int], wanted: set[int]) -> None:
        """No wanted version loaded: load the newest older version on disk that loads, and say which one serves."""
        for version in sorted(set(present) - wanted, reverse=True):
            if self._load(source, version):
                logger.warning(
                    "Model %s: version %s failed to load; serving version %d, the newest version that loads, instead.",
                    source.name,
                    ", ".join(str(number) for number in sorted(wanted, reverse=True)),
                    version,
                )
                return

    def _update(self, name: str, version: int, status: VersionStatus, model: Model | None = None) -> None:
        """Record version's new status; add model to the loaded versions, or drop the version when model is None."""
        with self._lock:
            current = self._models.get(name)
            if current is None:  # removed by a reconfiguration meanwhile
                return
            loaded = dict(current.loaded)
            if model is not None:
                loaded[version] = model
            elif status.state in (UNLOADING, END):
                loaded.pop(version, None)
            statuses = {**current.statuses, version: status}
            self._models[name] = dataclasses.replace(current, loaded=loaded, statuses=statuses)

    def _load(self, source: ModelSource, version: int) -> bool:
        """Load one version (True), or record why it failed (False, also for a failure not retried)."""
        name, path = source.name, source.base_path / str(version)
        fingerprint = _fingerprint(path)
        if self._failed.get((name, version)) == fingerprint:
            return False  # failed before and nothing in the folder has changed since: do not retry or re-log
        self._update(name, version, VersionStatus(version, LOADING))
        started = time.monotonic()
        try:
            model = self._loader(name, version, path)
        except Exception as error:  # noqa: BLE001 (any failure: missing files, corrupt file, bad graph; the old version stays)
            message = _one_line(error)
            self._failed[(name, version)] = fingerprint
            self._update(name, version, VersionStatus(version, END, self._error_code(error), message))
            logger.error("Failed to load model %s version %d from %s: %s", name, version, path, message)
            return False
        self._failed.pop((name, version), None)
        self._update(name, version, VersionStatus(version, AVAILABLE), model)
        logger.info("Loaded model %s version %d from %s in %.2f s.", name, version, path, time.monotonic() - started)
        self._on_change()
        return True

    def _unload(self, name: str, version: int) -> None:
        # Requests already holding the model finish with it; new ones no longer find it.
        self._update(name, version, VersionStatus(version, END))
        logger.info("Unloaded model %s version %d.", name, version)
        self._on_change()

    def start(self) -> None:
        """Poll in a background thread every poll_wait_seconds (never, if that is not positive)."""
        if self.poll_wait_seconds <= 0 or self._thread is not None:
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
            self._thread = None


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
