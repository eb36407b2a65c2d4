"""serving.versions: the one version watcher (policies, load before unload, keep the old version on a failed load)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from serving import versions


class Model:
    """A stand-in for a loaded framework model."""

    def __init__(self, name: str, version: int) -> None:
        self.name, self.version = name, version


class Loader:
    """Loads every version folder except those marked broken; records what it was asked and what was served then."""

    def __init__(self) -> None:
        self.broken: dict[int, Exception] = {}
        self.events: list[str] = []
        self.watcher: versions.VersionWatcher | None = None

    def __call__(self, name: str, version: int, path: Path) -> Model:
        served = self.watcher.versions(name).latest() if self.watcher else None
        self.events.append(f"load {version} while serving {served.version if served else None}")
        if version in self.broken:
            raise self.broken[version]
        return Model(name, version)


def watch(base_path: Path, policy: versions.VersionPolicy = versions.VersionPolicy(), **options):
    loader = Loader()
    watcher = versions.VersionWatcher([versions.ModelSource("digits", base_path, policy)], loader, **options)
    loader.watcher = watcher
    return watcher, loader


def served(watcher: versions.VersionWatcher) -> list[int]:
    return sorted(watcher.versions("digits").loaded)


@pytest.mark.parametrize(
    "policy, expected",
    [
        (versions.VersionPolicy(), {4}),
        (versions.VersionPolicy("latest", num_versions=2), {3, 4}),
        (versions.VersionPolicy("all"), {1, 2, 3, 4}),
        (versions.VersionPolicy("specific", versions=frozenset({2, 9})), {2}),
    ],
)
def test_policies_select_among_the_present_versions(policy, expected):
    assert policy.select([1, 2, 3, 4]) == expected
    assert policy.select([]) == set()


def test_a_new_version_is_loaded_while_the_old_one_serves_and_then_replaces_it(tmp_path):
    (tmp_path / "1").mkdir()
    changes: list[list[int]] = []
    watcher, loader = watch(tmp_path, on_change=lambda: changes.append(served(watcher)))
    watcher.poll_once()
    (tmp_path / "2").mkdir()
    (tmp_path / "not-a-version").mkdir()
    watcher.poll_once()
    assert loader.events == ["load 1 while serving None", "load 2 while serving 1"]
    assert changes == [[1], [1, 2], [2]]  # 2 loaded next to 1, then 1 unloaded
    statuses = watcher.versions("digits").statuses
    assert (statuses[1].state, statuses[2].state) == (versions.END, versions.AVAILABLE)
    assert watcher.versions("digits").latest().version == 2 and watcher.versions("cats") is None


def test_a_failed_load_keeps_the_old_version_and_is_retried_only_when_its_folder_changes(tmp_path):
    (tmp_path / "1").mkdir()
    watcher, loader = watch(tmp_path)
    watcher.poll_once()
    loader.broken[2] = ValueError("version 2 is\ncorrupt")
    (tmp_path / "2").mkdir()
    watcher.poll_once()
    watcher.poll_once()
    assert served(watcher) == [1] and len(loader.events) == 2
    failure = watcher.versions("digits").failure()
    assert (failure.version, failure.state, failure.error_code) == (2, versions.END, "UNKNOWN")
    assert failure.error_message == "version 2 is corrupt"  # one line
    del loader.broken[2]
    (tmp_path / "2" / "saved_model.pb").write_bytes(b"fixed")
    watcher.poll_once()
    assert served(watcher) == [2] and watcher.versions("digits").failure() is None


def test_error_codes_come_from_the_servers_classifier(tmp_path):
    (tmp_path / "1").mkdir()
    watcher, loader = watch(tmp_path)
    loader.broken[1] = FileNotFoundError("model.pt")
    watcher.poll_once()
    assert watcher.versions("digits").failure().error_code == "NOT_FOUND"
    custom, custom_loader = watch(tmp_path, error_code=lambda error: "DATA_LOSS")
    custom_loader.broken[1] = ValueError("bad")
    custom.poll_once()
    assert custom.versions("digits").failure().error_code == "DATA_LOSS"


def test_a_vanished_version_is_unloaded_unless_kept_until_replaced(tmp_path):
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
    strict, _ = watch(tmp_path)
    keeping, _ = watch(tmp_path, keep_vanished_until_replaced=True)
    for watcher in (strict, keeping):
        watcher.poll_once()
    shutil.rmtree(tmp_path / "2")  # version 1 is left: both fall back to it
    for watcher in (strict, keeping):
        watcher.poll_once()
        assert served(watcher) == [1]
    shutil.rmtree(tmp_path / "1")  # nothing left
    for watcher in (strict, keeping):
        watcher.poll_once()
    assert served(strict) == [] and served(keeping) == [1]


def test_a_pinned_version_stays_while_newer_ones_appear(tmp_path):
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
    watcher, _ = watch(tmp_path, versions.VersionPolicy("specific", versions=frozenset({1})))
    watcher.poll_once()
    (tmp_path / "3").mkdir()
    watcher.poll_once()
    assert served(watcher) == [1]


def test_reconfigure_adds_and_removes_models(tmp_path):
    for name in ("digits", "letters"):
        (tmp_path / name / "1").mkdir(parents=True)
    watcher, _ = watch(tmp_path / "digits")
    watcher.poll_once()
    watcher.reconfigure([versions.ModelSource("letters", tmp_path / "letters")])
    assert watcher.model_names() == ["letters"] and watcher.versions("digits") is None
    assert watcher.versions("letters").latest().name == "letters"


def test_the_background_thread_picks_up_a_new_version(tmp_path):
    (tmp_path / "1").mkdir()
    watcher, _ = watch(tmp_path, poll_wait_seconds=0.02)
    watcher.poll_once()
    watcher.start()
    try:
        (tmp_path / "2").mkdir()
        deadline = time.monotonic() + 10
        while served(watcher) != [2] and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        watcher.stop()
    assert served(watcher) == [2]


@pytest.mark.parametrize("keep_vanished", [False, True], ids=["TF Serving's rule", "the Flask app's rule"])
def test_a_corrupt_newest_version_at_start_falls_back_to_the_newest_that_loads(tmp_path, caplog, keep_vanished):
    for version in ("1", "2", "3"):
        (tmp_path / version).mkdir()
    watcher, loader = watch(tmp_path, keep_vanished_until_replaced=keep_vanished)
    loader.broken[3] = ValueError("version 3 is corrupt")
    loader.broken[2] = ValueError("version 2 is corrupt too")
    with caplog.at_level("INFO", logger="serving.versions"):
        watcher.poll_once()
        watcher.poll_once()  # nothing changed: no retry, no second fallback
    assert served(watcher) == [1] and watcher.versions("digits").latest().version == 1
    assert loader.events == ["load 3 while serving None", "load 2 while serving None", "load 1 while serving None"]
    statuses = watcher.versions("digits").statuses
    assert [(statuses[v].state, statuses[v].error_code) for v in (3, 2, 1)] == [
        (versions.END, "UNKNOWN"),
        (versions.END, "UNKNOWN"),
        (versions.AVAILABLE, "OK"),
    ]
    assert watcher.versions("digits").failure().version == 3  # what a status page reports as the failure
    fallbacks = [record.getMessage() for record in caplog.records if "instead" in record.getMessage()]
    assert fallbacks == [
        "Model digits: version 3 failed to load; serving version 1, the newest version that loads, instead."
    ]
    (tmp_path / "4").mkdir()  # a good newer version replaces the fallback
    watcher.poll_once()
    assert served(watcher) == [4]


def test_the_fallback_also_covers_a_served_version_whose_folder_vanishes(tmp_path):
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
    watcher, loader = watch(tmp_path)
    watcher.poll_once()
    loader.broken[3] = ValueError("corrupt")
    (tmp_path / "3").mkdir()
    shutil.rmtree(tmp_path / "2")  # the served version goes while the newest fails: the one before it serves
    watcher.poll_once()
    assert served(watcher) == [1]


def test_no_fallback_for_a_pinned_version_or_when_turned_off(tmp_path):
    for version in ("1", "2"):
        (tmp_path / version).mkdir()
    pinned, pinned_loader = watch(tmp_path, versions.VersionPolicy("specific", versions=frozenset({2})))
    strict, strict_loader = watch(tmp_path, fall_back_to_last_good=False)
    for watcher, loader in ((pinned, pinned_loader), (strict, strict_loader)):
        loader.broken[2] = ValueError("corrupt")
        watcher.poll_once()
        assert served(watcher) == [] and loader.events == ["load 2 while serving None"]
