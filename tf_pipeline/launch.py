"""Start N local tf_pipeline.train workers with TF_CONFIG for MultiWorkerMirroredStrategy, and watch them.

    python -m tf_pipeline.launch --nproc 2 -- --epochs 5 --run-name two-workers
    python -m tf_pipeline.launch --nproc 2 --max-restarts 3 -- --checkpoint-dir checkpoints/tf --epochs 40

Each worker gets its own TF_CONFIG naming every worker's address; worker 0 is the chief that logs and exports.
If a worker dies, the others (blocked in collectives, waiting for it) are stopped. With --max-restarts N the whole
group is then started again, up to N times, and with --checkpoint-dir the workers resume from the latest
checkpoint (what torchrun --max-restarts does for the torch side); otherwise, or once the restarts are spent, the
launcher exits non-zero naming the worker, before anything is exported. Across machines, skip this launcher: set
TF_CONFIG on each host and run `python -m tf_pipeline.train` there (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import typing
from collections.abc import Sequence

from experiment import artifacts, library_logs
from experiment import checkpoints as run_checkpoints
from experiment.cli import run_main
from experiment.config import parse_config, per_replica_batch_size
from experiment.data import dataset_name_for
from experiment.errors import UsageError
from experiment.processes import free_ports, port_is_free, split_arguments

PROG = "python -m tf_pipeline.launch"
HOST = "127.0.0.1"
POLL_SECONDS = 0.1
# How long a stopped worker gets to exit after SIGTERM before it is killed.
TERMINATE_GRACE_SECONDS = 5.0
USAGE_ERROR = 2  # the exit status of a user mistake (experiment.cli.run_main)


class _Parser(argparse.ArgumentParser):
    """Errors are one sentence on stderr, exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The launcher's own flags; everything after `--` goes to tf_pipeline.train unchanged."""
    parser = _Parser(prog=PROG, description="Run tf_pipeline.train as N local MultiWorkerMirroredStrategy workers.")
    parser.add_argument("--nproc", type=int, default=2, help="number of worker processes (default: 2)")
    parser.add_argument(
        "--base-port",
        type=int,
        default=None,
        help="worker i listens on base-port + i on 127.0.0.1 (default: free ports picked by the system)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="times to restart every worker after one fails; they resume from --checkpoint-dir (default: 0)",
    )
    return parser


def choose_ports(count: int, base_port: int | None) -> list[int]:
    """base_port, base_port + 1, ... checked free, or `count` distinct ports the system hands out."""
    if base_port is not None:
        ports = list(range(base_port, base_port + count))
        for index, port in enumerate(ports):
            if not 0 < port < 65536:
                raise UsageError(f"--base-port {base_port} gives worker {index} port {port}, outside 1-65535.")
            if not port_is_free(port):
                raise UsageError(f"Port {port} for worker {index} is already in use; choose another --base-port.")
        return ports
    return free_ports(count, HOST)


def tf_config(addresses: list[str], index: int) -> str:
    """The TF_CONFIG JSON for worker `index` of a cluster of workers at `addresses`."""
    return json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})


def describe_exit(returncode: int) -> str:
    """'exited with status 3' or 'was killed by SIGKILL'."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def stop_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM every worker still running, then SIGKILL those that have not exited after a grace period."""
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
    for worker in workers:
        try:
            worker.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def watch(workers: list[subprocess.Popen]) -> tuple[int, int] | None:
    """Wait until every worker exits 0 (None) or one fails: (its index, its return code), the rest still running."""
    while True:
        running = False
        for index, worker in enumerate(workers):
            returncode = worker.poll()
            if returncode is None:
                running = True
            elif returncode != 0:
                return index, returncode
        if not running:
            return None
        time.sleep(POLL_SECONDS)


def launch(num_workers: int, train_argv: list[str], base_port: int | None = None, max_restarts: int = 0) -> int:
    """Start the workers and wait for them; when one fails, stop the rest and start them all again up to
    max_restarts times. Returns 0, or 1 once a failure finds no restart left."""
    from tf_pipeline.train import PROG as TRAIN_PROG
    from tf_pipeline.train import TFTrainConfig

    if num_workers < 1:
        raise UsageError(f"--nproc must be a positive integer, got {num_workers}.")
    if max_restarts < 0:
        raise UsageError(f"--max-restarts must be 0 or more, got {max_restarts}.")
    # Check the training flags here, once, rather than as N identical errors from N workers.
    config = parse_config(TFTrainConfig, train_argv, TRAIN_PROG, "")
    per_replica_batch_size(config.batch_size, num_workers)
    artifacts.check_writable(config.output_dir)
    artifacts.check_writable(config.log_dir)
    run_checkpoints.check_resumable(config.checkpoint_dir, config.resume_settings(dataset_name_for(config.data_dir)))

    for attempt in range(max_restarts + 1):
        failure = run_workers(num_workers, train_argv, base_port)
        if failure is None:
            return 0
        index, pid, returncode = failure
        what = f"worker {index} (pid {pid}) {describe_exit(returncode)}"
        if attempt == max_restarts or returncode == USAGE_ERROR:
            break  # no restarts left, or a mistake in the flags that a restart would only repeat
        print(
            f"{PROG}: {what}; restarting all {num_workers} workers (restart {attempt + 1} of {max_restarts}).",
            file=sys.stderr,
            flush=True,
        )
    print(f"{PROG}: error: {what}; stopped the other workers, nothing was exported.", file=sys.stderr)
    return 1


def run_workers(num_workers: int, train_argv: list[str], base_port: int | None) -> tuple[int, int, int] | None:
    """One attempt: start every worker on fresh ports and wait; None when all exit 0, else the first failure's
    (index, pid, return code) after the others have been stopped."""
    addresses = [f"{HOST}:{port}" for port in choose_ports(num_workers, base_port)]
    command = [sys.executable, "-m", "tf_pipeline.train", *train_argv]
    workers: list[subprocess.Popen] = []
    try:
        for index in range(num_workers):
            environment = {**os.environ, "TF_CONFIG": tf_config(addresses, index)}
            library_logs.quiet_environment(environment)
            # Share the cores instead of every worker sizing its op thread pool to the whole machine
            # (torchrun does the same with OMP_NUM_THREADS).
            environment.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, (os.cpu_count() or 1) // num_workers)))
            workers.append(subprocess.Popen(command, env=environment))
        failure = watch(workers)
    except KeyboardInterrupt:
        stop_workers(workers)
        raise
    if failure is None:
        return None
    index, returncode = failure
    stop_workers(workers)
    return index, workers[index].pid, returncode


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    launcher_argv, train_argv = split_arguments(sys.argv[1:] if argv is None else argv)
    arguments = build_parser().parse_args(launcher_argv)
    return run_main(PROG, lambda: launch(arguments.nproc, train_argv, arguments.base_port, arguments.max_restarts))


if __name__ == "__main__":
    raise SystemExit(main())
