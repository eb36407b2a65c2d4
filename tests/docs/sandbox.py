"""The docs tests' sandbox: a folder linking to the checkout, a stack started there with `make serve`, blocks run in it.

`run_block` runs one shell block with bash after PRELUDE, which stands in for a few commands (see
test_docs_commands.py's docstring), with the default ports replaced by the sandbox stack's.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from serving.runtime import Ports, free_port
from tests.docs import blocks

DEFAULT_PORTS = {
    8500: "tf_grpc",
    8501: "tf_rest",
    5000: "flask",
    8080: "torchserve_inference",
    8081: "torchserve_management",
    8082: "torchserve_metrics",
    7070: "torchserve_grpc_inference",
    7071: "torchserve_grpc_management",
}
NOISE = re.compile(r"^(I\d{4} .*\] |E\d{4} .*cuInit|WARNING: All log messages before absl)", re.MULTILINE)
# Not linked into the sandbox: what the commands write there.
OWN = {".run", "models", "runs", "reports", "checkpoints", ".git", ".pytest_cache"}

PRELUDE = r"""
set -eo pipefail
trap 'echo "DOCS-TEST-FAILED $((LINENO - PRELUDE_LINES)) $BASH_COMMAND" >&2' ERR
# Each stand-in ends in `|| return`: errexit then stops at the documented command's line, which the trap names.
curl() { command curl --fail-with-body --max-time 120 "$@" || return $?; }
_until_answering() {  # run a server command until its page answers, then stop it
    local url="$1"; shift
    local log; log=$(mktemp)
    setsid "$@" >"$log" 2>&1 &
    local pid=$!
    local deadline=$((SECONDS + 180))
    until command curl -sf -o /dev/null "$url"; do
        if ! kill -0 "$pid" 2>/dev/null || [ "$SECONDS" -gt "$deadline" ]; then cat "$log"; return 1; fi
        sleep 0.5
    done
    kill -TERM -- "-$pid"; wait "$pid" || true
    cat "$log"
}
_with_args() {  # make with extra ARGS: appended to an ARGS=... argument, else given as ARGS
    local extra="$1"; shift
    local arguments=() given=""
    for argument in "$@"; do
        case "$argument" in ARGS=*) arguments+=("$argument $extra"); given=1 ;; *) arguments+=("$argument") ;; esac
    done
    if [ -n "$given" ]; then command make "${arguments[@]}"; else ARGS="${ARGS-$extra}" command make "${arguments[@]}"; fi
}
make() { _make "$@" || return $?; }
_make() {
    case "$1" in
        serve) if [ -s .run/stack.json ]; then echo "(docs test: the shared stack runs already)"; return 0; fi
               _with_args "$SERVE_ARGS" "$@" ;;
        stop) echo "(docs test: the shared stack stops at the end of the test)" ;;
        demo) _with_args "$DEMO_ARGS" "$@" ;;
        train-tf|train-torch) ARGS="${ARGS---epochs 1}" command make "$@" ;;
        playground) ARGS="${ARGS-$PLAYGROUND_ARGS}" _until_answering "$PLAYGROUND_URL" make "$@" ;;
        tensorboard) _until_answering "$TENSORBOARD_URL" make "$@" ;;
        *) command make "$@" ;;
    esac
}
"""


def substitute_ports(text: str, ports: dict[int, int]) -> str:
    pattern = re.compile(r"(?<=(?:127\.0\.0\.1|localhost):)(" + "|".join(map(str, ports)) + r")\b")
    return pattern.sub(lambda match: str(ports[int(match.group(1))]), text)


@dataclasses.dataclass
class Sandbox:
    """The folder, the map from default ports to the stack's, and the environment the blocks run in."""

    folder: Path
    port_map: dict[int, int]
    environment: dict[str, str]

    def make(self, *arguments: str, timeout: float = 900) -> subprocess.CompletedProcess:
        """`make ...` in the sandbox, as a user types it (no prelude)."""
        return subprocess.run(
            ["make", *arguments], cwd=self.folder, env=self.environment, capture_output=True, text=True, timeout=timeout
        )

    def start(self, *serve_arguments: str) -> None:
        """`make serve` with the sandbox's ports (and serve_arguments); the stack must come up quietly."""
        arguments = " ".join([*serve_arguments, self.environment["SERVE_ARGS"]])
        started = self.make("serve", f"ARGS={arguments}")
        output = started.stdout + started.stderr
        assert started.returncode == 0, f"make serve failed:\n{output}"
        assert not NOISE.search(output), f"make serve printed a library log line:\n{output}"

    def stop(self) -> None:
        """`make stop`, then `make status` on the stopped stack: both exit 0."""
        stopped = self.make("stop", timeout=120)
        status = self.make("status", timeout=120)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert status.returncode == 0 and "stopped" in status.stdout, status.stdout + status.stderr

    def run_block(self, block: blocks.Block) -> None:
        """Run a shell block; fail naming the document's line and the command, or a library log line printed."""
        script = PRELUDE + substitute_ports(block.text, self.port_map)
        result = subprocess.run(
            ["bash", "-c", script], cwd=self.folder, env=self.environment, capture_output=True, text=True, timeout=900
        )
        output = result.stdout + result.stderr
        if result.returncode != 0:
            failed = re.search(r"DOCS-TEST-FAILED (\d+) (.*)", result.stderr)
            line = block.line + 1 + int(failed.group(1)) if failed else block.line
            command = failed.group(2) if failed else "?"
            pytest.fail(
                f"{block.path.relative_to(blocks.ROOT)}:{line}: `{command}` failed (exit {result.returncode}):\n"
                f"{output[-4000:]}"
            )
        noise = NOISE.search(output)
        assert not noise, (
            f"{block.where}: a library log line reached the terminal: {noise.group(0)!r}\n{output[-4000:]}"
        )


def make_sandbox(folder: Path) -> Sandbox:
    """Link the checkout into folder (all but what commands write) and choose free ports for everything."""
    for entry in blocks.ROOT.iterdir():
        if entry.name not in OWN:
            (folder / entry.name).symlink_to(entry)
    ports = Ports.free()
    port_map = {default: getattr(ports, name) for default, name in DEFAULT_PORTS.items()}
    playground_port, tensorboard_port = free_port(), free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("ARGS", "TF_CPP_MIN_LOG_LEVEL", "SHOW_LIBRARY_LOGS", "MAKEFLAGS", "MFLAGS")
    }
    environment.update(
        SERVE_ARGS=" ".join(f"--{name.replace('_', '-')}-port={port}" for name, port in ports.as_dict().items())
        + " --timeout 400",
        DEMO_ARGS="--free-ports --no-train --requests 20",
        PLAYGROUND_ARGS=f"--port {playground_port}",
        PLAYGROUND_URL=f"http://127.0.0.1:{playground_port}/",
        TENSORBOARD_PORT=str(tensorboard_port),
        TENSORBOARD_URL=f"http://127.0.0.1:{tensorboard_port}/",
        PRELUDE_LINES=str(PRELUDE.count("\n") + 1),
    )
    return Sandbox(folder, port_map, environment)


def _newest(folder: Path) -> int:
    versions = [int(path.name) for path in folder.iterdir() if path.name.isdigit()] if folder.is_dir() else []
    return max(versions, default=0)


def wait_until_current(sandbox: Sandbox, model_name: str = "digits", timeout: float = 180.0) -> None:
    """Poll until the TF server and Flask report the newest version on disk AVAILABLE and TorchServe serves it."""
    from serving.clients import RestClient, ServingError, TorchServeClient

    folder, port_map = sandbox.folder, sandbox.port_map
    tf_newest = _newest(folder / "models/tf" / model_name)
    torch_newest = _newest(folder / "models/torch" / model_name)
    tf = RestClient(f"http://127.0.0.1:{port_map[8501]}", model_name, timeout_s=5)
    flask = RestClient(f"http://127.0.0.1:{port_map[5000]}", model_name, timeout_s=5)
    torchserve = TorchServeClient(
        f"http://127.0.0.1:{port_map[8080]}",
        model_name,
        key_file=folder / ".run/torchserve/key_file.json",
        management_url=f"http://127.0.0.1:{port_map[8081]}",
        timeout=5,
    )
    deadline = time.monotonic() + timeout
    missing = "nothing asked yet"
    try:
        while time.monotonic() < deadline:
            try:
                available = {
                    name: {
                        int(status["version"]) for status in client.get_status() if status.get("state") == "AVAILABLE"
                    }
                    for name, client in (("tfserving", tf), ("flask", flask))
                }
                served = int(torchserve.describe()["modelVersion"])
            except (ServingError, KeyError, ValueError) as error:
                missing = str(error)
            else:
                missing = ", ".join(
                    [
                        f"{name} lacks version {newest}"
                        for name, newest in (("tfserving", tf_newest), ("flask", torch_newest))
                        if newest not in available[name]
                    ]
                    + ([f"torchserve serves {served}, not {torch_newest}"] if served != torch_newest else [])
                )
                if not missing:
                    return
            time.sleep(0.5)
        pytest.fail(f"The stack did not serve the newest exports within {timeout:g} s: {missing}.")
    finally:
        for client in (tf, flask, torchserve):
            client.close()
