"""The command the TorchServe spec runs with roll-out on: TorchServe as a child, new model versions rolled out into it.

    python -m serving.runtime.torchserve_rollout --model-store STORE --management-url URL [--key-file F] \
        -- torchserve --start --foreground ...

It lives in the runtime because it starts TorchServe; the roll-out itself is `serving.torchserve.rollout`.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from experiment.cli import run_main
from experiment.errors import UsageError
from serving.torchserve import rollout as rollout_module

PROG = "python -m serving.runtime.torchserve_rollout"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the TorchServe command after `--` as a child and roll new archives out while it runs; its exit status.

    The child stays in this process's group, so the runtime's stop (`torchserve --stop`, then signals to the group)
    reaches both; a SIGTERM here only ends the watching, and the exit follows the child's.
    """
    arguments_list = list(sys.argv[1:] if argv is None else argv)
    split = arguments_list.index("--") if "--" in arguments_list else len(arguments_list)
    command = arguments_list[split + 1 :]
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run TorchServe and roll new model versions out into it.",
        usage=f"{PROG} [options] -- TORCHSERVE COMMAND...",
    )
    rollout_module.add_arguments(parser)
    parser.add_argument(
        "--fallback-file",
        type=Path,
        help="a file whose sentence (newer archives that did not load) goes into the log at start",
    )
    arguments = parser.parse_args(arguments_list[:split])

    def body() -> int:
        if not command:
            raise UsageError("Give the TorchServe command after `--`.")
        rollout = rollout_module.from_arguments(arguments)
        rollout_module.configure_logging()
        if arguments.fallback_file is not None and arguments.fallback_file.is_file():
            rollout_module.logger.warning("%s", arguments.fallback_file.read_text().strip())
        stop = threading.Event()
        # Ctrl-C and SIGTERM reach the whole group: TorchServe's launcher stops itself, this process waits for it.
        for number in (signal.SIGTERM, signal.SIGINT):
            signal.signal(number, lambda received, frame: stop.set())
        try:
            child = subprocess.Popen(command)
        except OSError as error:
            raise UsageError(f"Cannot start {command[0]}: {error.strerror}.") from None
        watcher = threading.Thread(target=rollout.watch, args=(stop, arguments.poll_seconds), daemon=True)
        watcher.start()
        try:
            return child.wait()
        finally:
            stop.set()
            watcher.join(timeout=10)

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
