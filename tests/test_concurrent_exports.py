"""Trainings started at once into one models folder: each run its own version and archive, the newest is the default."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from deploy import kserve_storage
from experiment import artifacts

ROOT = Path(__file__).resolve().parent.parent
TORCH_RUNS, TF_RUNS = 3, 2


def _start(module: str, run_name: str, tmp_path: Path) -> subprocess.Popen:
    arguments = ["--epochs", "1", "--run-name", run_name]
    arguments += ["--output-dir", str(tmp_path / "models"), "--log-dir", str(tmp_path / "runs")]
    if module.startswith("torch"):
        arguments.append("--no-progress")
    return subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def _archive(path: Path) -> tuple[str, str]:
    """The version in a .mar's manifest and the run name in the metadata.json it carries."""
    with zipfile.ZipFile(path) as bundle:
        version = json.loads(bundle.read("MAR-INF/MANIFEST.json"))["model"]["modelVersion"]
        return version, json.loads(bundle.read(artifacts.METADATA_FILE))["run_name"]


def _hidden(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith(".") and entry.is_dir())


@pytest.mark.training
def test_trainings_started_at_once_each_publish_their_own_version_and_archive(tmp_path):
    runs = {f"torch-{index}": "torch_pipeline.train" for index in range(TORCH_RUNS)}
    runs |= {f"tf-{index}": "tf_pipeline.train" for index in range(TF_RUNS)}
    processes = {name: _start(module, name, tmp_path) for name, module in runs.items()}
    for name, process in processes.items():
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}:\n{output}"

    models = tmp_path / "models"
    for framework, count in (("torch", TORCH_RUNS), ("tf", TF_RUNS)):
        base_path = artifacts.model_base_path(models, framework, "digits")
        assert artifacts.list_versions(base_path) == list(range(1, count + 1))
        owners = {artifacts.read_metadata(base_path / str(v))["run_name"] for v in artifacts.list_versions(base_path)}
        assert owners == {name for name in runs if name.startswith(framework)}, "one version per run"
        assert _hidden(base_path) == [], "no staging folder left"

    torch_base = artifacts.model_base_path(models, "torch", "digits")
    store = artifacts.model_store_path(models)
    archives = sorted(path.name for path in store.glob("digits*.mar"))
    assert archives == sorted([f"digits-{v}.mar" for v in range(1, TORCH_RUNS + 1)] + ["digits.mar"])
    for version in range(1, TORCH_RUNS + 1):
        owner = artifacts.read_metadata(torch_base / str(version))["run_name"]
        assert _archive(store / f"digits-{version}.mar") == (str(version), owner), "an archive matches its version"
    assert _archive(store / "digits.mar") == _archive(store / f"digits-{TORCH_RUNS}.mar"), "the default is the newest"
    assert _hidden(store) == []

    # Layouts written at once for KServe follow each other; the one left is whole and holds the newest archive.
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        layouts = [pool.submit(kserve_storage.write_layout, models, "digits") for _ in range(3)]
    layout = kserve_storage.layout_path(models, "digits")
    assert [future.result(timeout=120) for future in layouts] == [layout] * 3
    assert _archive(layout / "model-store" / "digits.mar") == _archive(store / "digits.mar")
    assert f'"{TORCH_RUNS}":' in (layout / "config" / "config.properties").read_text()
    assert _hidden(layout.parent) == []


def test_archives_of_one_model_built_at_once_in_different_folders_are_all_whole(torch_smoke_run, tmp_path):
    # torch-model-archiver gathers its files in <temp dir>/<model name>: without a temp dir per run, builds of the
    # same model at once (trainings into different models folders) removed each other's files and failed.
    from torch_pipeline import export

    folders = [tmp_path / f"store-{index}" for index in range(4)]
    for folder in folders:
        folder.mkdir()
    with concurrent.futures.ThreadPoolExecutor(len(folders)) as pool:
        builds = [
            pool.submit(export.write_model_archive, torch_smoke_run.export_path, "digits", index + 1, folder)
            for index, folder in enumerate(folders)
        ]
        archives = [build.result(timeout=300) for build in builds]
    for index, archive in enumerate(archives):
        assert _archive(archive) == (str(index + 1), torch_smoke_run.run_dir.name)
