"""The torch.distributed process group a training process belongs to, read from the environment torchrun sets."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import re
from collections.abc import Iterator

import torch
from torch import distributed

from experiment import runs

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
    distributed.init_process_group(
        backend=backend,
        timeout=COLLECTIVE_TIMEOUT,
        store=_restart_store(rank, world_size),
        rank=rank,
        world_size=world_size,
    )
    return ProcessGroup(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def _restart_store(rank: int, world_size: int) -> distributed.Store:
    """The rendezvous store of torchrun's MASTER_ADDR:MASTER_PORT, with keys private to this restart of the group.

    torchrun's elastic agent keeps one TCPStore for every restart of the worker group, and workers connect to it
    without a per-restart prefix: after --max-restarts restarts a group, the new ranks would read the addresses
    the dead ranks published and fail to connect. TORCHELASTIC_RESTART_COUNT (0 on the first start) separates them.
    """
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    # Under the elastic agent the agent hosts the store; a plain launch (static MASTER_ADDR) has rank 0 host it.
    hosted_by_agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = distributed.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world_size,
        is_master=rank == 0 and not hosted_by_agent,
        timeout=COLLECTIVE_TIMEOUT,
    )
    return distributed.PrefixStore(f"restart-{restart}", store)


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


def broadcast_int(value: int, group: ProcessGroup) -> int:
    """Rank 0's integer on every rank (a lone process returns it unchanged)."""
    if not group.is_distributed:
        return value
    tensor = torch.tensor([value if group.is_main else 0], dtype=torch.int64, device=group.device)
    distributed.broadcast(tensor, src=0)
    return int(tensor.item())


@contextlib.contextmanager
def collective_failures(group: ProcessGroup) -> Iterator[None]:
    """Around a collective call: a failure of a distributed run's collective becomes runs.WorkerLost.

    A peer that died (or became unreachable) breaks the collectives of every rank still waiting on it; gloo and NCCL
    report it as a RuntimeError. Only collective calls sit inside this block, so a bug elsewhere keeps its own error.
    """
    try:
        yield
    except RuntimeError as error:
        if not group.is_distributed:
            raise
        # gloo's message starts with "[source.cc:line] "; keep its first sentence.
        detail = re.sub(r"^\[[^\]]*\]\s*", "", (str(error).strip().splitlines() or [""])[0]).split(". ")[0]
        raise runs.WorkerLost(
            f"rank {group.rank} stopped: a collective with the other ranks failed ({detail or type(error).__name__}); "
            "nothing was exported."
        ) from None
