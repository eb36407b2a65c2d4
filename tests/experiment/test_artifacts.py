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
    with pytest.raises(RuntimeError):
        with artifacts.staging_directory(tmp_path) as staging:
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
