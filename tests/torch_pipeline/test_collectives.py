"""Only a failed collective of a distributed run is reported as a lost worker; every other error keeps its own type."""

from __future__ import annotations

import pytest
import torch

from experiment import runs
from torch_pipeline import distributed


def _group(world_size: int) -> distributed.ProcessGroup:
    return distributed.ProcessGroup(
        rank=world_size - 1, local_rank=0, world_size=world_size, device=torch.device("cpu")
    )


def test_a_failed_collective_of_a_distributed_run_is_a_lost_worker_in_one_sentence():
    expected = r"rank 1 stopped: a collective with the other ranks failed \(Connection closed by peer\); nothing"
    with pytest.raises(runs.WorkerLost, match=expected), distributed.collective_failures(_group(2)):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer. [::1]:1")


def test_a_lone_process_keeps_the_runtime_error():
    with pytest.raises(RuntimeError, match="shape mismatch"), distributed.collective_failures(_group(1)):
        raise RuntimeError("shape mismatch")


def test_an_error_that_is_not_a_runtime_error_passes_through():
    with pytest.raises(ValueError, match="a bug"), distributed.collective_failures(_group(2)):
        raise ValueError("a bug")
