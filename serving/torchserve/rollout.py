"""Live roll-out of new model versions into a running TorchServe, through its management API.

Each training run publishes `<model>-<version>.mar` into the model store (and the latest also as `<model>.mar`, the
archive TorchServe loads when it starts). `Rollout.poll_once` compares the newest versioned archive with the version
TorchServe answers `/predictions/<model>` with (its default version) and, when the archive is newer, rolls it out:

1. register it (`POST /models?url=<model>-<version>.mar`); workers and batching come from the archive's own
   model-config.yaml, or from the overrides TorchServe was started with;
2. wait until at least minWorkers of its workers are READY, while the old version goes on answering;
3. make it the default version (`PUT /models/<model>/<version>/set-default`);
4. give the requests already queued on the old version a moment, scale it to no workers
   (`PUT /models/<model>/<old>?min_worker=0&max_worker=0`) and wait until they are gone, then unregister it
   (`DELETE /models/<model>/<old>`), retrying a few times: unregistering a version whose workers are still being
   torn down fails with 500 "Interrupted while cleaning resources".

Until the old version is unregistered, `/predictions/<model>/<version>` reaches either version by name, as TorchServe
documents. As `serving.versions` does for a version folder, an archive that cannot be read, whose model does not
load (checked before registering it), that TorchServe refuses,
or whose workers are not READY in time is unregistered again and not retried until the file changes: the old version
keeps serving throughout.

`make serve` runs the watcher beside TorchServe (`serving.runtime.torchserve`). For a TorchServe started another way
(with `--enable-model-api`, which registering needs):

    python -m serving.torchserve.rollout --model-store models/torch/model-store \
        --management-url http://127.0.0.1:8081 [--key-file key_file.json] [--poll-seconds 1]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from experiment.errors import UsageError
from serving.torchserve.config import archive_problem, archive_version

if TYPE_CHECKING:
    from serving.clients import TorchServeClient

logger = logging.getLogger("serving.torchserve.rollout")

PROG = "python -m serving.torchserve.rollout"
DEFAULT_POLL_SECONDS = 1.0  # tensorflow_model_server's --file_system_poll_wait_seconds default
# TorchServe gives a worker 120 s to load a model by default (startupTimeout); a busy machine can need most of it.
DEFAULT_READY_TIMEOUT_SECONDS = 120.0
# Requests that reached the old version's queue just before the switch finish in milliseconds (batch delay 2 ms).
DEFAULT_DRAIN_SECONDS = 1.0
# How long an old version's workers get to stop once scaled to none, and how often its unregistering is tried.
RETIRE_TIMEOUT_SECONDS = 30.0
UNREGISTER_ATTEMPTS = 5
UNREGISTER_RETRY_SECONDS = 1.0
# How long the default version may run short of READY workers (a replacement still loading) before a warning.
CAPACITY_WARNING_SECONDS = 30.0
# How often TorchServe is asked for its default version and workers when the model store has nothing newer. The model
# store is scanned at every poll; each question is a line in TorchServe's access log, so it is asked seldom.
CHECK_SECONDS = 30.0


def archive_pattern(model_name: str) -> re.Pattern[str]:
    """<model>-<version>.mar, the name torch_pipeline.export gives each version's archive."""
    return re.compile(rf"{re.escape(model_name)}-(\d+)\.mar")


def versioned_archives(model_store: Path, model_name: str) -> dict[int, Path]:
    """Version → archive for every <model>-<version>.mar in the model store."""
    pattern = archive_pattern(model_name)
    found = {}
    for path in Path(model_store).glob(f"{model_name}-*.mar"):
        match = pattern.fullmatch(path.name)
        if match and path.is_file():
            found[int(match.group(1))] = path
    return found


def _fingerprint(path: Path) -> tuple[int, int]:
    """Size and modification time: a file that changes (a copy still arriving, a fixed archive) is tried again."""
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


class RolloutError(Exception):
    """An archive that cannot be rolled out; the message is one sentence."""


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    """How long to wait for a new version's workers and for the old version's queue; overrides of the archive's
    own workers and batching (None keeps the archive's model-config.yaml)."""

    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    drain_seconds: float = DEFAULT_DRAIN_SECONDS
    batch_size: int | None = None
    max_batch_delay_ms: int | None = None
    workers: int | None = None
    retire_timeout_seconds: float = RETIRE_TIMEOUT_SECONDS
    capacity_warning_seconds: float = CAPACITY_WARNING_SECONDS
    check_seconds: float = CHECK_SECONDS
    check_model: bool = True  # load each archive's model before registering it (config.archive_problem)
    # Roll back to the newest older archive that loads once the default version has been short of READY workers
    # for capacity_warning_seconds.
    revert_short_versions: bool = True
    unregister_attempts: int = UNREGISTER_ATTEMPTS
    unregister_retry_seconds: float = UNREGISTER_RETRY_SECONDS


class Rollout:
    """Rolls the newest versioned archive of one model out into one TorchServe, one poll at a time."""

    def __init__(self, client: TorchServeClient, model_store: Path, settings: RolloutSettings = RolloutSettings()):
        self.client = client
        self.model_name = client.model_name
        self.model_store = Path(model_store)
        self.settings = settings
        self._failed: dict[int, tuple[int, int]] = {}  # version → fingerprint of the archive that failed
        self._last_problem: str | None = None
        self._short_since: float | None = None  # since when the default version has had too few READY workers
        self._short_warned = False
        self._known_default: int | None = None  # TorchServe's default version when it was last asked
        self._asked_at: float | None = None  # when that was (time.monotonic)

    def default_version(self) -> int | None:
        """The version TorchServe answers /predictions/<model> with; None while TorchServe or the model is not up."""
        from serving.clients import ServingError

        try:
            description = self.client.describe()
        except ServingError as error:
            self._note(f"TorchServe cannot tell its default version yet: {error}")
            return None
        version = description.get("modelVersion")
        self._check_capacity(description)
        try:
            self._known_default = int(version)
        except (TypeError, ValueError):
            self._note(f"TorchServe serves {self.model_name} version {version!r}, not an integer; not rolling out.")
            self._known_default = None
        self._asked_at = time.monotonic()
        return self._known_default

    def _nothing_to_ask(self, archives: dict[int, Path]) -> bool:
        """True when the model store has nothing newer than the default version TorchServe named a moment ago, and
        its workers were all READY then: the poll needs no request (and leaves no line in TorchServe's access log)."""
        return (
            self._known_default is not None
            and self._asked_at is not None
            and time.monotonic() - self._asked_at < self.settings.check_seconds
            and self._short_since is None
            and all(
                self._refused_unchanged(version, path)
                for version, path in archives.items()
                if version > self._known_default
            )
        )

    def _refused_unchanged(self, version: int, archive: Path) -> bool:
        """True when this archive failed before and its file has not changed since (or is gone)."""
        try:
            return self._failed.get(version) == _fingerprint(archive)
        except OSError:
            return True

    def _check_capacity(self, description: dict) -> None:
        """Warn once when the default version has had fewer READY workers than minWorkers for a while.

        TorchServe replaces a worker that dies, but a replacement that cannot load the model (its extracted
        model.onnx damaged on disk, say) is retried with a growing back-off and never becomes READY: capacity stays
        reduced without any failed request to show it. This says so in the log, and again when it recovers;
        poll_once then rolls back to the newest older archive that loads (_revert). Only a version with some but not
        all workers READY counts: with none READY it is still starting (TorchServe reports a loading worker and a
        failing one alike) or down, which readiness probes and failed requests already show.
        """
        from serving.clients.torchserve import READY

        workers = description.get("workers") or []
        ready = sum(1 for worker in workers if worker.get("status") == READY)
        wanted = max(1, int(description.get("minWorkers", 1) or 1))
        now = time.monotonic()
        if ready >= wanted or ready == 0:
            if self._short_warned and ready >= wanted:
                logger.info(
                    "%s version %s has all its %d workers READY again.",
                    self.model_name,
                    description.get("modelVersion"),
                    wanted,
                )
            self._short_since, self._short_warned = None, False
            return
        if self._short_since is None:
            self._short_since = now
        elif not self._short_warned and now - self._short_since >= self.settings.capacity_warning_seconds:
            logger.warning(
                "Only %d of %d workers of %s version %s have been READY for %.0f s: a replacement worker "
                "cannot load the model (see TorchServe's model_log), and capacity is reduced.",
                ready,
                wanted,
                self.model_name,
                description.get("modelVersion"),
                now - self._short_since,
            )
            self._short_warned = True

    def _note(self, problem: str) -> None:
        """Log a reason for not rolling out once, not at every poll."""
        if problem != self._last_problem:
            logger.info("%s", problem)
            self._last_problem = problem

    def poll_once(self) -> int | None:
        """Roll out the newest archive if it is newer than the default version; the version rolled out, or None.

        TorchServe is asked only when the model store holds a newer archive, when the default version was short of
        READY workers, or every check_seconds otherwise.
        """
        archives = versioned_archives(self.model_store, self.model_name)
        if self._nothing_to_ask(archives):
            return None
        current = self.default_version()  # also watches its workers (_check_capacity)
        if current is None or not archives:
            return None
        if self._short_warned and self.settings.revert_short_versions:
            return self._revert(current, archives)
        newest = max(archives)
        if newest <= current:
            return None
        try:
            fingerprint = _fingerprint(archives[newest])
        except OSError:
            return None  # removed since the listing
        if self._failed.get(newest) == fingerprint:
            return None  # refused before and unchanged since: do not retry or log again
        self._last_problem = None
        if self.roll_out(newest, archives[newest], current):
            self._failed.pop(newest, None)
            self._known_default = newest
            return newest
        self._failed[newest] = fingerprint
        return None

    def _revert(self, current: int, archives: dict[int, Path]) -> int | None:
        """Roll back from a default version short of READY workers to the newest older archive that loads.

        The replacement workers of `current` cannot load its model (TorchServe's extracted copy damaged, say), and
        TorchServe cannot re-extract a version while it is registered: the newest older version takes over with all
        its workers, and `current` is not rolled out again until its archive file changes. None when no older
        archive loads (the warning stands) or the roll-back fails.
        """
        for version in sorted((older for older in archives if older < current), reverse=True):
            problem = archive_problem(archives[version]) if self.settings.check_model else None
            if problem is not None:
                continue
            logger.warning(
                "Rolling %s back from version %d, short of READY workers, to version %d.",
                self.model_name,
                current,
                version,
            )
            if not self.roll_out(version, archives[version], current):
                self._short_since, self._short_warned = time.monotonic(), False  # wait as long again before retrying
                return None
            self._short_since, self._short_warned = None, False
            self._known_default = version
            if current in archives:
                with contextlib.suppress(OSError):
                    self._failed[current] = _fingerprint(archives[current])  # not rolled out again until changed
            return version
        return None

    def roll_out(self, version: int, archive: Path, current: int) -> bool:
        """Register, wait for READY, make default, unregister current; False (current still default) on failure."""
        from serving.clients import ServingError

        started = time.monotonic()
        registered_here = False
        try:
            in_archive = archive_version(archive)
            if in_archive != str(version):
                raise RolloutError(f"its manifest says version {in_archive}, not {version}")
            # Checked here rather than by TorchServe: workers that cannot load the model would retry until the
            # ready timeout, taking CPU from the version that serves.
            problem = archive_problem(archive) if self.settings.check_model else None
            if problem is not None:
                raise RolloutError(problem)
            registered = {description.get("modelVersion") for description in self.client.list_versions()}
            if str(version) not in registered:
                self.client.register(archive.name, self.settings.batch_size, self.settings.max_batch_delay_ms)
                registered_here = True
            if self.settings.workers is not None:
                self.client.scale_workers(version, self.settings.workers)
            self._wait_until_ready(version)
        except (UsageError, ServingError, RolloutError, TimeoutError) as error:
            reason = _sentence(error)
            if getattr(error, "status", None) == 405:  # TorchServe 0.12 refuses registration unless told otherwise
                reason = "TorchServe's model API is off (start it with --enable-model-api or enable_model_api=true)"
            logger.error("Refused %s: %s; version %d keeps serving.", archive.name, reason, current)
            if registered_here or isinstance(error, TimeoutError):
                self._unregister(version)
            return False
        try:
            self.client.set_default(version)
        except ServingError as error:
            logger.error(
                "Could not make version %d the default: %s; version %d keeps serving.",
                version,
                _sentence(error),
                current,
            )
            self._unregister(version)
            return False
        time.sleep(self.settings.drain_seconds)
        self._unregister(current)
        logger.info(
            "Rolled out %s version %d from %s in %.1f s (version %d unregistered).",
            self.model_name,
            version,
            archive.name,
            time.monotonic() - started,
            current,
        )
        return True

    def _wait_until_ready(self, version: int) -> None:
        """Poll the version's description until minWorkers workers are READY; TimeoutError saying what was seen."""
        from serving.clients.base import poll_until
        from serving.clients.torchserve import workers_ready

        def check() -> str | None:
            description = self.client.describe(version=version)  # a ServingError counts as "not yet"
            if workers_ready(description):
                return None
            statuses = [worker.get("status") for worker in description.get("workers", [])]
            return f"workers {', '.join(statuses) or 'not started'}"

        timeout = self.settings.ready_timeout_seconds
        poll_until(check, timeout, lambda problem: f"its workers were not READY within {timeout:g} s ({problem})")

    def _unregister(self, version: int) -> bool:
        """Scale the version to no workers, wait until they are gone, then unregister it, retrying; True if done.

        Unregistering a version whose workers are still running (or still being torn down) can fail with 500
        "Interrupted while cleaning resources"; with its workers stopped first, and a few tries, it goes through.
        """
        from serving.clients import ServingError
        from serving.clients.base import poll_until

        try:
            self.client.scale_workers(version, 0)
        except ServingError as error:
            if getattr(error, "status", None) == 404:
                return True  # already gone
            logger.warning(
                "Could not scale %s version %d to no workers: %s", self.model_name, version, _sentence(error)
            )

        def workers_left() -> str | None:
            try:
                workers = self.client.describe(version=version).get("workers") or []
            except ServingError as error:
                if getattr(error, "status", None) == 404:
                    return None  # unregistered meanwhile
                raise
            return f"{len(workers)} workers left" if workers else None

        try:
            poll_until(workers_left, self.settings.retire_timeout_seconds, lambda problem: problem)
        except (TimeoutError, ServingError):
            pass  # unregistering below stops whatever is left, or says why not
        for attempt in range(1, self.settings.unregister_attempts + 1):
            try:
                self.client.unregister(version)
                return True
            except ServingError as error:
                if getattr(error, "status", None) == 404:
                    return True
                if attempt == self.settings.unregister_attempts:
                    logger.warning(
                        "Could not unregister %s version %d after %d tries: %s",
                        self.model_name,
                        version,
                        attempt,
                        _sentence(error),
                    )
                    return False
                time.sleep(self.settings.unregister_retry_seconds)
        return False

    def watch(self, stop: threading.Event, poll_seconds: float = DEFAULT_POLL_SECONDS) -> None:
        """poll_once every poll_seconds until stop is set; an unexpected failure is logged and polling goes on."""
        while not stop.wait(poll_seconds):
            try:
                self.poll_once()
            except Exception:  # a watcher that dies silently would freeze the served version
                logger.exception("Rolling out from %s failed; retrying at the next poll.", self.model_store)


def _sentence(error: BaseException) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return " ".join(text.split()).rstrip(".")


# ---- command line ------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The watcher's flags (shared with serving.runtime.torchserve, which runs it beside TorchServe)."""
    parser.add_argument("--model-store", type=Path, required=True, help="the folder of <model>-<version>.mar archives")
    parser.add_argument("--model-name", default="digits")
    parser.add_argument("--management-url", default="http://127.0.0.1:8081", help="TorchServe's management API")
    parser.add_argument("--key-file", type=Path, help="TorchServe's key_file.json, when token authorization is on")
    parser.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS, help="seconds between scans")
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=DEFAULT_READY_TIMEOUT_SECONDS,
        help="seconds a new version's workers get to become READY",
    )
    parser.add_argument("--batch-size", type=int, help="register new versions with this batch size")
    parser.add_argument("--max-batch-delay-ms", type=int, help="... and this batch delay")
    parser.add_argument("--workers", type=int, help="... and this many workers")


def from_arguments(arguments: argparse.Namespace) -> Rollout:
    """A Rollout from add_arguments' flags; UsageError for a mistake."""
    from serving.clients import TorchServeClient

    if arguments.poll_seconds <= 0:
        raise UsageError(f"--poll-seconds must be positive, got {arguments.poll_seconds:g}.")
    if not Path(arguments.model_store).is_dir():
        raise UsageError(f"--model-store {arguments.model_store} is not a folder.")
    client = TorchServeClient(
        model_name=arguments.model_name, key_file=arguments.key_file, management_url=arguments.management_url
    )
    settings = RolloutSettings(
        arguments.ready_timeout,
        DEFAULT_DRAIN_SECONDS,
        arguments.batch_size,
        arguments.max_batch_delay_ms,
        arguments.workers,
    )
    return Rollout(client, arguments.model_store, settings)


def configure_logging() -> None:
    """Timestamped lines on stderr (the server's log when the runtime runs the watcher)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(levelname)s] %(name)s - %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Watch the model store and roll new versions out until Ctrl-C or SIGTERM."""
    from experiment.cli import run_main

    parser = argparse.ArgumentParser(prog=PROG, description="Roll new model archives out into a running TorchServe.")
    add_arguments(parser)
    arguments = parser.parse_args(argv)

    def body() -> int:
        rollout = from_arguments(arguments)
        configure_logging()
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda number, frame: stop.set())
        logger.info("Watching %s for new %s archives.", arguments.model_store, arguments.model_name)
        try:
            rollout.watch(stop, arguments.poll_seconds)
        except KeyboardInterrupt:
            pass
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
