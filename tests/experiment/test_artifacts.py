"""Artifact layout: integer versions, atomic publication, metadata."""

from __future__ import annotations

import os

import pytest

from experiment import artifacts
from experiment.errors import UsageError


def test_versions_ignore_non_integer_entries(tmp_path):
    for name in ("1", "10", "2", ".staging-abc", "notes", "3.bak"):
        (tmp_path / name).mkdir()
    (tmp_path / "4").write_text("a file, not a version")
    assert artifacts.list_versions(tmp_path) == [1, 2, 10]
    assert artifacts.latest_version(tmp_path) == 10
    assert artifacts.next_version(tmp_path) == 11
    assert artifacts.next_version(tmp_path / "missing") == 1


def test_failed_export_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), artifacts.staging_directory(tmp_path) as staging:
        (staging / "half-written").write_text("...")
        raise RuntimeError("export failed")
    assert list(tmp_path.iterdir()) == []


def test_publish_skips_a_version_taken_meanwhile(tmp_path):
    with artifacts.staging_directory(tmp_path) as staging:
        (staging / "model").write_text("new")
        (tmp_path / "1").mkdir()
        (tmp_path / "1" / "model").write_text("old")  # another run published 1 after we staged
        version, path = artifacts.publish_version(staging, tmp_path)
    assert version == 2 and (path / "model").read_text() == "new"
    assert (tmp_path / "1" / "model").read_text() == "old"
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["1", "2"]


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_a_published_version_has_the_mode_mkdir_gives(tmp_path, umask):
    # Servers in containers read the exports as another user: a private (0700) version folder would lock them out.
    previous = os.umask(umask)
    try:
        with artifacts.staging_directory(tmp_path) as staging:
            (staging / "model").write_text("new")
            _, path = artifacts.publish_version(staging, tmp_path)
        (tmp_path / "made-by-mkdir").mkdir()
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == (tmp_path / "made-by-mkdir").stat().st_mode & 0o777 == 0o777 & ~umask


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_check_writable_refuses_read_only_folder(tmp_path):
    tmp_path.chmod(0o500)
    try:
        with pytest.raises(UsageError, match="Cannot write"):
            artifacts.check_writable(tmp_path / "models")
    finally:
        tmp_path.chmod(0o700)


def test_check_writable_refuses_a_file_in_the_way(tmp_path):
    (tmp_path / "models").write_text("not a folder")
    with pytest.raises(UsageError, match="Cannot write"):
        artifacts.check_writable(tmp_path / "models" / "tf")


def test_metadata_round_trip(tmp_path):
    metadata = artifacts.build_metadata(
        framework="torch",
        framework_version="2.13.0",
        dataset="digits",
        network={"hidden_sizes": [64]},
        hyperparameters={"epochs": 1},
        test_accuracy=0.9712345678,
        test_loss=0.1,
        training_seconds=1.23456,
        run_name="r",
    )
    artifacts.write_metadata(tmp_path, metadata)
    loaded = artifacts.read_metadata(tmp_path)
    assert loaded["test_accuracy"] == 0.971235 and loaded["training_seconds"] == 1.235
    for key in ("framework", "framework_version", "dataset", "network", "hyperparameters", "created_at", "git_commit"):
        assert key in loaded


def _publish_under_lock(base_path, ready, go, results):
    """A process that stages a version, waits for the others, then numbers and publishes it under the lock."""
    with artifacts.staging_directory(base_path) as staging:
        (staging / "pid").write_text(str(os.getpid()))
        ready.wait()
        go.wait()
        with artifacts.publish_lock(base_path):
            version = artifacts.next_version(base_path)
            (staging / "numbered-as").write_text(str(version))
            published, _ = artifacts.publish_version(staging, base_path, version)
    results.put((os.getpid(), published))


def test_concurrent_publications_each_get_their_own_version(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    count = 6
    ready, go, results = context.Barrier(count + 1), context.Event(), context.Queue()
    processes = [context.Process(target=_publish_under_lock, args=(tmp_path, ready, go, results)) for _ in range(count)]
    for process in processes:
        process.start()
    ready.wait(timeout=60)
    go.set()  # all staged: they race for numbers now
    published = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert sorted(published.values()) == list(range(1, count + 1))
    for pid, version in published.items():
        folder = tmp_path / str(version)
        assert (folder / "pid").read_text() == str(pid)
        assert (folder / "numbered-as").read_text() == str(version), "the number chosen is the one published"
    assert not [entry.name for entry in tmp_path.iterdir() if entry.name.startswith(artifacts.STAGING_PREFIX)]


def test_publishing_onto_an_existing_version_is_refused(tmp_path):
    (tmp_path / "1").mkdir()  # even an empty folder, which a bare os.rename would replace
    with artifacts.staging_directory(tmp_path) as staging:
        (staging / "model").write_text("new")
        with pytest.raises(FileExistsError):
            artifacts.publish_version(staging, tmp_path, 1)
        assert artifacts.publish_version(staging, tmp_path) == (2, tmp_path / "2")
    assert list((tmp_path / "1").iterdir()) == []


def _hold_lock(base_path, holding, release):
    with artifacts.publish_lock(base_path):
        holding.set()
        release.wait(timeout=60)


def test_the_publish_lock_excludes_other_processes_until_released(tmp_path):
    import fcntl
    import multiprocessing

    context = multiprocessing.get_context("fork")
    holding, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path, holding, release))
    holder.start()
    try:
        assert holding.wait(timeout=60)
        with open(tmp_path / artifacts.PUBLISH_LOCK) as lock_file:
            with pytest.raises(BlockingIOError):
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            release.set()
            holder.join(timeout=60)
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free once the holder left the block
    finally:
        release.set()
        holder.join(timeout=60)
    assert holder.exitcode == 0
