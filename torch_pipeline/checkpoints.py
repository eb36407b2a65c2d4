"""Training checkpoints of the torch loop: the weights, Adam's state and the loop's position, every N steps.

A checkpoint is `step-<step>.pt` in the checkpoint folder, written by rank 0 to a hidden file and renamed into place,
so a process killed while saving leaves the previous checkpoint as the latest. The newest KEEP are kept. Every rank
holds the same weights and optimizer state (DistributedDataParallel keeps them equal), so rank 0 alone saves; on a
restart every rank loads the checkpoint rank 0 names, so across machines the folder must be shared storage.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from experiment.errors import UsageError
from torch_pipeline import distributed

KEEP = 2
_NAME = re.compile(r"step-(\d+)\.pt")


@dataclasses.dataclass(frozen=True)
class LoopState:
    """Where the training loop stands: global step, the epoch's running totals over every rank, time spent."""

    step: int
    epoch_totals: tuple[float, float, float]  # loss sum, correct, examples of the epoch under way, all ranks
    training_seconds: float


def checkpoint_path(directory: Path, step: int) -> Path:
    """The file the checkpoint of `step` is saved to."""
    return Path(directory) / f"step-{step:09d}.pt"


def list_checkpoints(directory: Path) -> list[tuple[int, Path]]:
    """(step, path) of every checkpoint in directory, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in directory.iterdir() if (match := _NAME.fullmatch(path.name))]
    return sorted(found)


def save(directory: Path, network: torch.nn.Module, optimizer: torch.optim.Optimizer, state: LoopState) -> Path:
    """Write the checkpoint of state.step atomically and drop all but the newest KEEP; returns its path."""
    directory = Path(directory)
    target = checkpoint_path(directory, state.step)
    contents = {
        "step": state.step,
        "epoch_totals": list(state.epoch_totals),
        "training_seconds": state.training_seconds,
        "model": network.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    descriptor, temporary = tempfile.mkstemp(prefix=".step-", suffix=".pt", dir=directory)
    try:
        with os.fdopen(descriptor, "wb") as stream:
            torch.save(contents, stream)
            stream.flush()
            os.fsync(stream.fileno())  # on disk before the rename makes it the latest
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    for _, old in list_checkpoints(directory)[:-KEEP]:
        old.unlink(missing_ok=True)
    return target


def load_latest(directory: Path, group: distributed.ProcessGroup) -> dict[str, Any] | None:
    """The newest checkpoint's contents, the same one on every rank, or None when there is none.

    Rank 0 chooses the step and tells the others, so that every rank loads the same file even if the folder's
    listing differs between machines for a moment.
    """
    found = list_checkpoints(directory) if group.is_main else []
    step = distributed.broadcast_int(found[-1][0] if found else -1, group)
    if step < 0:
        return None
    path = checkpoint_path(directory, step)
    try:
        # weights_only: a checkpoint is tensors and plain numbers, nothing that needs unpickling code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(
            f"Rank {group.rank} cannot see checkpoint {path}; --checkpoint-dir must be storage every process shares."
        ) from None
    except Exception as error:  # noqa: BLE001 (torch raises several types for a damaged file)
        raise UsageError(f"Cannot read checkpoint {path} ({error}); remove it to resume from the one before.") from None


def restore(contents: dict[str, Any], network: torch.nn.Module, optimizer: torch.optim.Optimizer) -> LoopState:
    """Load weights and optimizer state from contents into network and optimizer; return the loop's position."""
    network.load_state_dict(contents["model"])
    optimizer.load_state_dict(contents["optimizer"])
    totals = tuple(float(value) for value in contents["epoch_totals"])
    return LoopState(int(contents["step"]), totals, float(contents["training_seconds"]))  # type: ignore[arg-type]
