"""torchrun for torch_pipeline.train, with its flags checked first and failures reported in one sentence.

    python -m torch_pipeline.launch --nproc-per-node 2 -- --epochs 5 --run-name ddp

Everything before `--` is a torchrun option (--nproc-per-node, --nnodes, --node-rank, --rdzv-endpoint,
--master-port, ...), everything after it a flag of torch_pipeline.train. It is the same as
`torchrun <options> -m torch_pipeline.train <flags>`, run through torch.distributed.run in this process, plus:
the training flags and the global batch split are checked once before any worker starts, a rendezvous port that
is already taken is reported in one sentence, and a worker that dies is named by rank (torchrun itself stops the
other workers). With torchrun's --max-restarts N and the training flag --checkpoint-dir, torchrun restarts the
whole group after a failure and every rank resumes from the latest checkpoint (docs/distributed.md).
"""

from __future__ import annotations

import signal
import socket
import sys
from collections.abc import Sequence

from experiment import artifacts
from experiment import checkpoints as run_checkpoints
from experiment.cli import run_main
from experiment.config import parse_config, per_replica_batch_size
from experiment.data import dataset_name_for
from experiment.errors import UsageError
from experiment.processes import port_is_free, split_arguments

PROG = "python -m torch_pipeline.launch"
TRAIN_MODULE = "torch_pipeline.train"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")


class WorkerFailed(Exception):
    """A training process died or exited non-zero; the message is one sentence naming its rank."""


def check_rendezvous_port(torchrun_arguments: object) -> None:
    """On the node that hosts the static rendezvous (rank 0's), its port must be free; raise UsageError otherwise."""
    arguments = torchrun_arguments
    if arguments.standalone or arguments.rdzv_backend != "static" or arguments.node_rank != 0:
        return  # torchrun picks a free port itself, or another node hosts the rendezvous
    if arguments.rdzv_endpoint:
        host, _, port_text = arguments.rdzv_endpoint.rpartition(":")
    else:
        host, port_text = arguments.master_addr, str(arguments.master_port or "")
    if not port_text.isdigit() or (host not in LOCAL_HOSTS and host != socket.gethostname()):
        return
    port = int(port_text)
    if not port_is_free(port, reuse_address=True):
        raise UsageError(
            f"Rendezvous port {port} is already in use on this machine; pass --master-port with a free port "
            f"(or leave it out on one machine and torchrun picks one)."
        )


def describe_failure(rank: int, exitcode: int, pid: int) -> str:
    """'rank 1 (pid 123) was killed by SIGKILL' or 'rank 0 (pid 9) exited with status 1'."""
    if exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-exitcode}"
    else:
        how = f"exited with status {exitcode}"
    return f"rank {rank} (pid {pid}) {how}"


def launch(torchrun_argv: list[str], train_argv: list[str]) -> int:
    """Check the training flags and the rendezvous port, then run torchrun; a dead worker raises WorkerFailed."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    from torch_pipeline.train import PROG as TRAIN_PROG
    from torch_pipeline.train import TorchTrainConfig

    arguments = torchrun.parse_args([*torchrun_argv, "--module", TRAIN_MODULE, *train_argv])
    # Check the training flags here, once, rather than as one identical error per worker.
    config = parse_config(TorchTrainConfig, train_argv, TRAIN_PROG, "")
    min_nodes, max_nodes = torchrun.parse_min_max_nnodes(arguments.nnodes)
    if arguments.nproc_per_node.isdigit() and min_nodes == max_nodes:  # else each process checks its own split
        per_replica_batch_size(config.batch_size, int(arguments.nproc_per_node) * max_nodes)
    if arguments.node_rank == 0:
        artifacts.check_writable(config.output_dir)
        artifacts.check_writable(config.log_dir)
    run_checkpoints.check_resumable(config.checkpoint_dir, config.resume_settings(dataset_name_for(config.data_dir)))
    check_rendezvous_port(arguments)
    try:
        torchrun.run(arguments)
    except ChildFailedError as error:
        # torchrun has already stopped the other workers; name the first to fail.
        rank, failure = min(error.failures.items(), key=lambda item: item[1].timestamp)
        raise WorkerFailed(
            f"{describe_failure(rank, failure.exitcode, failure.pid)}; torchrun stopped the other ranks, "
            f"nothing was exported."
        ) from None
    except Exception as error:  # torchrun's rendezvous errors carry the socket error in their text
        if "address already in use" in str(error).lower() or "EADDRINUSE" in str(error):
            raise UsageError(
                "The rendezvous port is already in use on this machine; pass --master-port with a free port."
            ) from None
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    torchrun_argv, train_argv = split_arguments(sys.argv[1:] if argv is None else argv)

    def body() -> int:
        try:
            return launch(torchrun_argv, train_argv)
        except WorkerFailed as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
