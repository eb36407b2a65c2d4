"""`python -m serving.torchserve_launch start|stop|status`: one TorchServe natively, on any ports, outside the stack.

The run folder holds the config.properties written for this instance, TorchServe's logs, the key_file.json it writes
into its working folder, its temporary folder (with its pid file), and the launcher's own output and pid file. While
it runs, each newer <model>-<version>.mar of the model store is rolled out (serving.torchserve.rollout):

    python -m serving.torchserve_launch start [--run-dir .run/torchserve] [--inference-port 8080 ...]
    python -m serving.torchserve_launch stop  [--run-dir .run/torchserve]

Starting, waiting and stopping are `serving.runtime`'s; this module only reads the flags and reports.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from experiment.cli import run_main
from experiment.errors import UsageError
from serving.torchserve.config import TorchServePorts

PROG = "python -m serving.torchserve_launch"
DEFAULT_MODEL_STORE = Path("models/torch/model-store")
DEFAULT_RUN_DIR = Path(".run/torchserve")
OUTPUT_FILE = "torchserve.out"  # the launcher's stdout and stderr
PID_FILE = "torchserve.pid"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Start or stop TorchServe natively for the digits model.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="folder for config, logs, keys, pid file")
    parser.add_argument("--model-store", type=Path, default=DEFAULT_MODEL_STORE)
    parser.add_argument("--model-name", default="digits")
    defaults = TorchServePorts()
    for field in dataclasses.fields(TorchServePorts):
        parser.add_argument(f"--{field.name.replace('_', '-')}-port", type=int, default=getattr(defaults, field.name))
    parser.add_argument("--batch-size", type=int, help="server-side batch size (default: config.properties)")
    parser.add_argument("--max-batch-delay-ms", type=int, help="longest wait for a batch to fill")
    parser.add_argument("--workers", type=int, help="Python workers for the model")
    parser.add_argument("--no-token-auth", action="store_true", help="turn token authorization off (demos only)")
    parser.add_argument("--wait-seconds", type=float, default=180.0, help="how long start waits for READY workers")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: start (waiting until READY), stop or status."""
    from serving import runtime
    from serving.runtime import torchserve

    arguments = _parser().parse_args(argv)
    run_dir = Path(arguments.run_dir).resolve()
    ports = TorchServePorts(
        **{field.name: getattr(arguments, f"{field.name}_port") for field in dataclasses.fields(TorchServePorts)}
    )
    instance = torchserve.TorchServeInstance(run_dir, ports, token_auth=not arguments.no_token_auth)
    spec = torchserve.spec(
        instance,
        arguments.model_store,
        arguments.model_name,
        arguments.batch_size,
        arguments.max_batch_delay_ms,
        arguments.workers,
    )
    output, pid_path = run_dir / OUTPUT_FILE, run_dir / PID_FILE

    def body() -> int:
        running = runtime.ServerProcess.find(spec, pid_path, output)
        if arguments.action == "stop":
            if running is not None:
                running.stop()
            print("TorchServe stopped." if running else f"TorchServe was not running from {arguments.run_dir}.")
            return 0
        if arguments.action == "status":
            print(f"TorchServe is running (pid {running.pid})." if running else "TorchServe is not running.")
            fallback = torchserve.fallback_message(run_dir)
            if running and fallback:
                print(fallback)
            return 0 if running else 3
        if running is not None:
            raise UsageError(f"TorchServe is already running from {run_dir}; stop it first.")
        runtime.start(spec, output, arguments.wait_seconds, pid_path)
        print(f"TorchServe is ready: {instance.inference_url}/predictions/{arguments.model_name}")
        if instance.key_file is not None:
            print(f"Keys (token authorization is on): {instance.key_file}")
        else:
            print("Token authorization is off, so the model API and the live roll-out of new versions are off too.")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
