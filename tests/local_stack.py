"""The three servers started on free ports over the models the two pipelines just trained, for one block."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.runtime import Stack


@dataclasses.dataclass(frozen=True)
class LocalStack:
    """The running stack, the models/ folder it serves and each server's start-up time in seconds."""

    stack: Stack
    models_dir: Path
    startup_seconds: dict[str, float]


@contextlib.contextmanager
def local_stack(tf_trained: Any, torch_trained: Any, root: Path) -> Iterator[LocalStack]:
    """Start the stack under root over both pipelines' exports (TrainingResults); stop it when the block ends."""
    from serving.runtime import Ports, Stack

    models_dir = root / "models"
    models_dir.mkdir()
    # One models/ folder holding both pipelines' exports, as `make serve` sees it.
    (models_dir / "tf").symlink_to(tf_trained.export_path.parent.parent, target_is_directory=True)
    (models_dir / "torch").symlink_to(torch_trained.export_path.parent.parent, target_is_directory=True)
    running = Stack(ports=Ports.free(), run_dir=root / "run", models_dir=models_dir)
    seconds = running.start(train=False, report=lambda line: None)
    try:
        yield LocalStack(running, models_dir, seconds)
    finally:
        running.stop(report=lambda line: None)
