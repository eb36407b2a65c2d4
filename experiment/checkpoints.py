"""The framework-free half of training checkpoints: the run record that says which run a checkpoint folder holds.

Each pipeline saves its own checkpoints (torch_pipeline/checkpoints.py, tf_pipeline/checkpoints.py). Beside them,
`run.json` records the run name and the settings the run was started with, so that a restarted process logs into
the same TensorBoard run and a checkpoint folder of a different run is refused in one sentence instead of being
loaded into a network it does not fit.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TypedDict

from experiment.errors import UsageError
from experiment.json_types import JSONObject, JSONValue

RUN_RECORD = "run.json"


class RunRecord(TypedDict):
    """run.json: the run's name and the settings it was started with (TrainConfig.resume_settings)."""

    run_name: str
    settings: dict[str, JSONValue]


def read_run_record(directory: Path) -> RunRecord | None:
    """The record in directory, or None when no run has checkpointed there yet."""
    path = Path(directory) / RUN_RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
        if not isinstance(record, dict):
            raise ValueError
        run_name, settings = record.get("run_name"), record.get("settings")
        if not isinstance(run_name, str) or not isinstance(settings, dict):
            raise ValueError
    except (ValueError, OSError):
        raise UsageError(
            f"{path} is not a run record written by this project; use an empty --checkpoint-dir."
        ) from None
    return RunRecord(run_name=run_name, settings=settings)


def write_run_record(directory: Path, run_name: str, settings: JSONObject) -> None:
    """Write directory/run.json atomically (a crash never leaves half a record)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".run-", suffix=".json", dir=directory)
    with os.fdopen(descriptor, "w") as stream:
        json.dump({"run_name": run_name, "settings": settings}, stream, indent=2, sort_keys=True)
    os.replace(temporary, directory / RUN_RECORD)


def check_same_run(directory: Path, record: RunRecord, settings: JSONObject) -> None:
    """Raise UsageError naming the first setting that differs from the run that wrote the checkpoints."""
    for name, value in settings.items():
        saved = record["settings"].get(name)
        if saved != value:
            raise UsageError(
                f"{directory} holds checkpoints of a run with {name} {saved!r}, not {value!r}; "
                f"resume with the same settings or choose another --checkpoint-dir."
            )


def check_resumable(directory: Path | None, settings: JSONObject) -> None:
    """For launchers, before any worker starts: refuse a checkpoint folder of another run in one sentence."""
    if directory is None:
        return
    record = read_run_record(directory)
    if record is not None:
        check_same_run(directory, record, settings)


def prepare_run(directory: Path, run_name: str | None, default_run_name: str, settings: JSONObject) -> str:
    """Check a resumable folder or start a new record there; return the run name to log under.

    A folder without a record starts a run named run_name (or default_run_name); a folder with one resumes it,
    keeping its run name unless run_name says otherwise.
    """
    record = read_run_record(directory)
    if record is None:
        name = run_name or default_run_name
        write_run_record(directory, name, settings)
        return name
    check_same_run(directory, record, settings)
    return run_name or record["run_name"]
