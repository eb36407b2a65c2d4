"""The torch.distributed process group a training process belongs to, read from the environment torchrun sets."""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
from torch import distributed

# How long a rank waits in a collective for the others: generous for a slow first step, bounded so that a rank
# whose peer vanished without torchrun noticing (another machine) does not hang for gloo's default 30 minutes.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class ProcessGroup:
    """This process's rank among world_size data-parallel processes, and the device it trains on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_distributed(self) -> bool:
        """Whether gradients are averaged with other processes (DistributedDataParallel is in use)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes TensorBoard logs and exports."""
        return self.rank == 0


def join_process_group() -> ProcessGroup:
    """Join the group torchrun describes (RANK, WORLD_SIZE, MASTER_ADDR, ...); a lone process stays on its own.

    Backend: NCCL with one GPU per process when CUDA is present, gloo on CPU otherwise.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return ProcessGroup(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    distributed.init_process_group(backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return ProcessGroup(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def leave_process_group(group: ProcessGroup) -> None:
    """Tear the process group down (no-op for a lone process)."""
    if group.is_distributed and distributed.is_initialized():
        distributed.destroy_process_group()


def sum_over_ranks(values: list[float], group: ProcessGroup) -> list[float]:
    """Element-wise sum of a few numbers over every rank (a lone process returns them unchanged)."""
    if not group.is_distributed:
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=group.device)
    distributed.all_reduce(tensor, op=distributed.ReduceOp.SUM)
    return tensor.tolist()
