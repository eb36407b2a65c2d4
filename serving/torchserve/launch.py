"""Start, wait for and stop TorchServe natively (the `torchserve` command, Java 17), on any ports.

Each instance gets its own run folder: the config.properties written for it, its logs, TorchServe's key_file.json
(written into the working directory) and its pid file (TorchServe keeps it in the temporary folder, so each run
folder doubles as TMPDIR: several TorchServes can then run side by side without one `--stop` killing another).

    python -m serving.torchserve.launch start [--run-dir .run/torchserve] [--inference-port 8080 ...]
    python -m serving.torchserve.launch stop  [--run-dir .run/torchserve]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Sequence

from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m serving.torchserve.launch"
TEMPLATE = Path(__file__).resolve().parent / "config.properties"
DEFAULT_MODEL_STORE = Path("models/torch/model-store")
DEFAULT_RUN_DIR = Path(".run/torchserve")
PID_FILE = ".model_server.pid"  # TorchServe's name, inside tempfile.gettempdir() of the launching process
KEY_FILE = "key_file.json"
HOST = "127.0.0.1"


@dataclasses.dataclass(frozen=True)
class TorchServePorts:
    """The five ports one TorchServe listens on (DESIGN.md defaults)."""

    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 7070
    grpc_management: int = 7071


@dataclasses.dataclass(frozen=True)
class TorchServeHandle:
    """A started TorchServe: where it runs from and how to reach it (run_dir alone is enough to stop it)."""

    run_dir: Path
    ports: TorchServePorts
    model_name: str
    token_auth: bool

    @property
    def inference_url(self) -> str:
        """Base URL of the inference API."""
        return f"http://{HOST}:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return f"http://{HOST}:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the Prometheus metrics API."""
        return f"http://{HOST}:{self.ports.metrics}"

    @property
    def key_file(self) -> Path | None:
        """TorchServe's key_file.json, or None when token authorization is off."""
        return self.run_dir / KEY_FILE if self.token_auth else None

    @property
    def log_dir(self) -> Path:
        """TorchServe's log folder (ts_log.log, model_log.log, access_log.log)."""
        return self.run_dir / "logs"

    def pid(self) -> int | None:
        """The Java frontend's process id, from TorchServe's pid file; None if it is not running."""
        return _running_pid(self.run_dir)

    def client(self, timeout: float = 10.0) -> "TorchServeClient":  # noqa: F821 (imported lazily)
        """A TorchServeClient for this instance."""
        from serving.torchserve.client import TorchServeClient

        return TorchServeClient(
            base_url=self.inference_url,
            model_name=self.model_name,
            key_file=self.key_file,
            management_url=self.management_url,
            timeout=timeout,
        )


def java_executable() -> str:
    """The java TorchServe will run (JAVA_HOME first, as torchserve does); UsageError in one sentence if missing."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not os.access(candidate, os.X_OK):
        raise UsageError(
            "TorchServe needs Java 17 or newer: install a JDK (e.g. openjdk-17-jre-headless) or set JAVA_HOME."
        )
    return candidate


def torchserve_executable() -> str:
    """The torchserve command of this virtualenv (or on PATH)."""
    beside = Path(sys.executable).parent / "torchserve"
    if beside.exists():
        return str(beside)
    found = shutil.which("torchserve")
    if found is None:
        raise UsageError("The torchserve command is not installed; run `make setup`.")
    return found


def archive_version(archive: Path) -> str:
    """The model version written into a .mar's MANIFEST.json by torch-model-archiver --version."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            manifest = json.loads(bundle.read("MAR-INF/MANIFEST.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError):
        raise UsageError(f"{archive} is not a model archive made by torch-model-archiver.") from None
    return str(manifest["model"]["modelVersion"])


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file as an ordered dict (the simple key=value subset config.properties uses)."""
    properties = {}
    for line in Path(path).read_text().splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith(("#", "!")) and "=" in stripped:
            key, value = stripped.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def write_config(
    path: Path,
    model_store: Path,
    ports: TorchServePorts,
    model_name: str = "digits",
    token_auth: bool = True,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    workers: int | None = None,
) -> Path:
    """Write a config.properties from the template, with these ports, store and the archive's own version."""
    properties = read_properties(TEMPLATE)
    properties.update(
        {
            "inference_address": f"http://{HOST}:{ports.inference}",
            "management_address": f"http://{HOST}:{ports.management}",
            "metrics_address": f"http://{HOST}:{ports.metrics}",
            "grpc_inference_port": str(ports.grpc_inference),
            "grpc_management_port": str(ports.grpc_management),
            "model_store": str(Path(model_store).resolve()),
            "load_models": f"{model_name}.mar",
        }
    )
    if not token_auth:
        properties["disable_token_authorization"] = "true"
    # TorchServe matches per-model settings by exact version, so re-key the template's settings to this archive's.
    template_models = json.loads(properties.get("models", "{}"))
    settings = next(iter(template_models.get("digits", {}).values()), {})
    settings = {**settings, "marName": f"{model_name}.mar"}
    if batch_size is not None:
        settings["batchSize"] = batch_size
    if max_batch_delay_ms is not None:
        settings["maxBatchDelay"] = max_batch_delay_ms
    if workers is not None:
        settings["minWorkers"] = settings["maxWorkers"] = workers
    version = archive_version(Path(model_store) / f"{model_name}.mar")
    properties["models"] = json.dumps({model_name: {version: settings}}, separators=(",", ":"))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{key}={value}\n" for key, value in properties.items()))
    return path


def _running_pid(run_dir: Path) -> int | None:
    pid_file = Path(run_dir) / "tmp" / PID_FILE
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by someone else
    return pid


def start_torchserve(
    model_store: Path = DEFAULT_MODEL_STORE,
    ports: TorchServePorts = TorchServePorts(),
    run_dir: Path = DEFAULT_RUN_DIR,
    token_auth: bool = True,
    model_name: str = "digits",
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    workers: int | None = None,
    wait_seconds: float | None = 180.0,
) -> TorchServeHandle:
    """Start TorchServe in the background from run_dir; with wait_seconds, return only once the workers are READY."""
    java_executable()
    model_store = Path(model_store).resolve()
    if not (model_store / f"{model_name}.mar").is_file():
        raise UsageError(f"No {model_name}.mar in {model_store}; train one first with `make train-torch`.")
    run_dir = Path(run_dir).resolve()
    if _running_pid(run_dir) is not None:
        raise UsageError(f"TorchServe is already running from {run_dir}; stop it first.")
    temporary = run_dir / "tmp"
    log_dir = run_dir / "logs"
    temporary.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)  # a stale key file would hand clients expired keys
    config = write_config(
        run_dir / "config.properties",
        model_store,
        ports,
        model_name,
        token_auth,
        batch_size,
        max_batch_delay_ms,
        workers,
    )
    command = [torchserve_executable(), "--start", "--ts-config", str(config), "--model-store", str(model_store)]
    command.append("--ncs")  # no config snapshots: each start reads only the config written above
    if not token_auth:
        command.append("--disable-token-auth")
    environment = {
        **os.environ,
        "TMPDIR": str(temporary),  # TorchServe's pid file goes here: one per instance
        "TEMP": str(temporary),  # and the JVM's java.io.tmpdir
        "LOG_LOCATION": str(log_dir),
        "METRICS_LOCATION": str(log_dir),
    }
    with open(run_dir / "torchserve.out", "ab") as output:
        # Without --foreground the launcher starts the JVM, writes the pid file and exits.
        completed = subprocess.run(
            command, cwd=run_dir, env=environment, stdout=output, stderr=subprocess.STDOUT, timeout=60
        )
    pid = _running_pid(run_dir)
    if completed.returncode != 0 or pid is None:
        raise RuntimeError(f"TorchServe did not start; see {run_dir / 'torchserve.out'}.")
    handle = TorchServeHandle(run_dir=run_dir, ports=ports, model_name=model_name, token_auth=token_auth)
    if wait_seconds is not None:
        try:
            wait_until_ready(handle, wait_seconds)
        except BaseException:
            stop_torchserve(handle)
            raise
    return handle


def wait_until_ready(handle: TorchServeHandle, timeout: float = 180.0) -> None:
    """Block until the model's workers report READY (management API); RuntimeError if TorchServe exits first."""
    client = handle.client()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if handle.pid() is None:
                raise RuntimeError(f"TorchServe exited while loading {handle.model_name}; see {handle.log_dir}.")
            if client.is_available():
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"TorchServe's {handle.model_name} workers were not READY within {timeout:.0f} s.")
            time.sleep(0.5)
    finally:
        client.close()


def stop_torchserve(handle: TorchServeHandle | Path, timeout: float = 60.0) -> bool:
    """Stop the TorchServe started from this handle (or run folder): SIGTERM, then SIGKILL after timeout.

    Returns True once it has exited, False if it was not running.
    """
    run_dir = handle.run_dir if isinstance(handle, TorchServeHandle) else Path(handle).resolve()
    pid = _running_pid(run_dir)
    if pid is None:
        return False
    # TorchServe stops gracefully on SIGTERM (what `torchserve --stop` sends), taking its Python workers with it.
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    (run_dir / "tmp" / PID_FILE).unlink(missing_ok=True)
    (run_dir / KEY_FILE).unlink(missing_ok=True)
    return True


def _alive(pid: int) -> bool:
    try:
        # Reap it if it is our child (it is not once the launcher has exited, but a caller may hold it).
        waited_pid, _ = os.waitpid(pid, os.WNOHANG)
        if waited_pid == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


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
    arguments = _parser().parse_args(argv)

    def body() -> int:
        if arguments.action == "stop":
            stopped = stop_torchserve(arguments.run_dir)
            print("TorchServe stopped." if stopped else f"TorchServe was not running from {arguments.run_dir}.")
            return 0
        if arguments.action == "status":
            pid = _running_pid(arguments.run_dir)
            print(f"TorchServe is running (pid {pid})." if pid else "TorchServe is not running.")
            return 0 if pid else 3
        ports = TorchServePorts(
            **{field.name: getattr(arguments, f"{field.name}_port") for field in dataclasses.fields(TorchServePorts)}
        )
        try:
            handle = start_torchserve(
                arguments.model_store,
                ports,
                arguments.run_dir,
                token_auth=not arguments.no_token_auth,
                model_name=arguments.model_name,
                batch_size=arguments.batch_size,
                max_batch_delay_ms=arguments.max_batch_delay_ms,
                workers=arguments.workers,
                wait_seconds=arguments.wait_seconds,
            )
        except (RuntimeError, TimeoutError) as error:
            raise UsageError(str(error)) from None
        print(f"TorchServe is ready: {handle.inference_url}/predictions/{handle.model_name}")
        if handle.key_file is not None:
            print(f"Keys (token authorization is on): {handle.key_file}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
