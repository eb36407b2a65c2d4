"""Start, stop and watch the three model servers natively: `python -m serving.stack start|stop|status|logs`.

`make serve` runs `start`: it trains a model first when none is exported, starts the TensorFlow Serving-compatible
server, Flask under gunicorn and TorchServe on 127.0.0.1, waits until each one reports its model ready and prints
the endpoints. `make stop` runs `stop`. Everything a run leaves lives under the run directory (`.run/`):

    .run/stack.json            ports, model name and folders of the running stack (for stop, status and logs)
    .run/pids/<server>.pid     the pid of each server's process group leader
    .run/logs/<server>.log     each server's stdout and stderr (TorchServe's own log files beside, in torchserve/)
    .run/torchserve/           TorchServe's working folder: its config, key_file.json and temp folder

Tests and `make demo` use the same code through `Stack(ports=..., run_dir=..., models_dir=...)`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence

import psutil

from experiment import processes
from experiment.artifacts import MODEL_STORE, TORCHSCRIPT_FILE, list_versions
from experiment.errors import UsageError
from serving.torchserve.launch import TorchServePorts

PROG = "python -m serving.stack"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RUN_DIR = Path(".run")
DEFAULT_MODELS_DIR = Path("models")
DEFAULT_MODEL_NAME = "digits"
HOST = "127.0.0.1"
# TorchServe's JVM and workers take the longest: about half a minute on two cores, longer on a busy machine.
DEFAULT_START_TIMEOUT_SECONDS = 180.0
# gunicorn's graceful timeout is 30 s; an idle server exits in well under a second.
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_LINES = 20
POLL_INTERVAL_SECONDS = 0.25
GUNICORN_CONFIG = PROJECT_ROOT / "serving" / "gunicorn_conf.py"
# The first image of scikit-learn's digits (a 0), for the curl lines; pixel values 0..16 as the model expects.
SAMPLE_IMAGE = [
    [0, 0, 5, 13, 9, 1, 0, 0],
    [0, 0, 13, 15, 10, 15, 5, 0],
    [0, 3, 15, 2, 0, 11, 8, 0],
    [0, 4, 12, 0, 0, 8, 8, 0],
    [0, 5, 8, 0, 0, 9, 8, 0],
    [0, 4, 11, 0, 1, 12, 7, 0],
    [0, 2, 14, 5, 10, 12, 0, 0],
    [0, 0, 6, 13, 10, 0, 0, 0],
]

# Which training entry point makes each export; run as subprocesses, never imported.
TRAINING_MODULES = {"tf": "tf_pipeline.train", "torch": "torch_pipeline.train", "torch-archive": "torch_pipeline.train"}

Report = Callable[[str], None]


class StackError(UsageError):
    """Something the user can fix stopped the stack (a port in use, a server that did not come up)."""


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port the stack listens on (DESIGN.md, 'Ports'); all bound to 127.0.0.1."""

    tf_grpc: int = 8500
    tf_rest: int = 8501
    flask: int = 5000
    # TorchServe's five come from its launcher, the one place that knows them.
    torchserve_inference: int = TorchServePorts.inference
    torchserve_management: int = TorchServePorts.management
    torchserve_metrics: int = TorchServePorts.metrics
    torchserve_grpc_inference: int = TorchServePorts.grpc_inference
    torchserve_grpc_management: int = TorchServePorts.grpc_management

    def as_dict(self) -> dict[str, int]:
        """Field name → port."""
        return dataclasses.asdict(self)

    @classmethod
    def free(cls) -> "Ports":
        """Ports the operating system reports free right now (for tests that run beside a real stack)."""
        sockets = []
        try:
            for _ in dataclasses.fields(cls):
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind((HOST, 0))
                sockets.append(listener)
            return cls(*(listener.getsockname()[1] for listener in sockets))
        finally:
            for listener in sockets:
                listener.close()


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One way to reach a model: a name, a protocol, an address and a command to try it."""

    name: str
    protocol: str
    address: str
    try_command: str


@dataclasses.dataclass
class ServerDefinition:
    """How to start one server, how to tell that its model is ready, and how to stop it."""

    name: str
    title: str
    command: list[str]
    ports: dict[str, int]  # what the port is for → port
    is_ready: Callable[[], bool]  # True once the model answers; an exception counts as "not yet"
    endpoints: list[Endpoint] = dataclasses.field(default_factory=list)
    environment: dict[str, str] = dataclasses.field(default_factory=dict)
    working_directory: Path = PROJECT_ROOT
    stop_command: list[str] | None = None  # run before the signals, with the same environment and folder
    prepare: Callable[[], None] | None = None  # writes config files; may raise StackError
    needs: tuple[str, ...] = ()  # exports it serves: "tf", "torch" (TorchScript), "torch-archive" (.mar)


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """What `status` reports for one server."""

    name: str
    pid: int | None
    running: bool
    ready: bool


# ---------------------------------------------------------------------------------------------------------------
# Probes: small HTTP checks with the standard library, so the orchestrator starts in a fraction of a second.


def _http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 2.0) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _port_accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1.0):
        return True
    return False


def tf_model_available(rest_port: int, grpc_port: int, model_name: str) -> bool:
    """True when the REST model status lists a version AVAILABLE and the gRPC port accepts connections.

    `GET /v1/models/<name>` is TensorFlow Serving's REST form of ModelService.GetModelStatus (the same states);
    asking it over REST spares the orchestrator the official stubs' import of all of TensorFlow (~10 s of CPU
    on two cores, taken from the servers that are starting at the same moment).
    """
    status, body = _http_get(f"http://{HOST}:{rest_port}/v1/models/{model_name}")
    if status != 200:
        return False
    states = [entry.get("state") for entry in json.loads(body).get("model_version_status", [])]
    return "AVAILABLE" in states and _port_accepts(grpc_port)


def flask_ready(port: int) -> bool:
    """True when the Flask app's /readyz answers 200 (model loaded)."""
    return _http_get(f"http://{HOST}:{port}/readyz")[0] == 200


# ---------------------------------------------------------------------------------------------------------------
# Processes: pid files, process groups, the holder of a port.


def _read_pid_file(path: Path) -> psutil.Process | None:
    """The live process a pid file names, or None when it is gone or the pid now belongs to a newer process."""
    try:
        pid = int(path.read_text().split()[0])
        written_at = path.stat().st_mtime
        process = psutil.Process(pid)
        # A process created after the pid file was written is an unrelated one that reused the number.
        if process.create_time() > written_at + 1.0 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def _process_tree(leader: psutil.Process) -> list[psutil.Process]:
    """The leader, its descendants and everything else in its process group (servers start their own group)."""
    members: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        members[leader.pid] = leader
        for child in leader.children(recursive=True):
            members[child.pid] = child
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == leader.pid:
                members.setdefault(process.pid, process)
    return list(members.values())


def _is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_until_gone(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to timeout seconds for the processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if _is_alive(process)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [process for process in alive if _is_alive(process)]
    return alive


def _describe_process(process: psutil.Process) -> str:
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return f"process {process.pid}"
    if len(command) > 100:
        command = command[:97] + "..."
    return f"process {process.pid} ({command})"


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1 (or all addresses) at port, when the system lets us see it."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for connection in connections:
        if connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port:
            if connection.pid:
                with contextlib.suppress(psutil.Error):
                    return psutil.Process(connection.pid)
    return None


def port_is_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (a socket in TIME_WAIT does not count)."""
    return processes.port_is_free(port, HOST, reuse_address=True)


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))  # the last 64 KiB hold far more than `lines` lines
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------------------------------
# The stack.


class Stack:
    """The three servers over one models folder, with their state under one run folder."""

    def __init__(
        self,
        ports: Ports | None = None,
        run_dir: Path | str = DEFAULT_RUN_DIR,
        models_dir: Path | str = DEFAULT_MODELS_DIR,
        model_name: str = DEFAULT_MODEL_NAME,
        python: str = sys.executable,
        definitions: Sequence[ServerDefinition] | None = None,
        only: Sequence[str] | None = None,
    ) -> None:
        self.ports = ports or Ports()
        # Absolute paths: TorchServe runs in its own working folder.
        self.run_dir = Path(run_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.model_name = model_name
        self.python = python
        self._definitions = list(definitions) if definitions is not None else None
        self.only = list(only) if only else None
        self._processes: dict[str, subprocess.Popen] = {}

    # -- places ---------------------------------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        """Where each server's log goes."""
        return self.run_dir / "logs"

    @property
    def state_file(self) -> Path:
        """The JSON file that lets stop, status and logs find a stack started by another command."""
        return self.run_dir / "stack.json"

    @property
    def torchserve_dir(self) -> Path:
        """TorchServe's working folder: its config copy, key_file.json and temp folder."""
        return self.run_dir / "torchserve"

    @property
    def torchserve_key_file(self) -> Path:
        """key_file.json, written by TorchServe (token authorization is on, its default)."""
        return self.torchserve_dir / "key_file.json"  # serving.torchserve.launch's layout

    def pid_path(self, name: str) -> Path:
        """The pid file of one server."""
        return self.run_dir / "pids" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        """The log file of one server."""
        return self.logs_dir / f"{name}.log"

    @property
    def tf_base_path(self) -> Path:
        """models/tf/<model>: TensorFlow Serving's model base path."""
        return self.models_dir / "tf" / self.model_name

    @property
    def torch_base_path(self) -> Path:
        """models/torch/<model>: the TorchScript versions Flask serves."""
        return self.models_dir / "torch" / self.model_name

    @property
    def model_store(self) -> Path:
        """models/torch/model-store: where TorchServe finds <model>.mar."""
        return self.models_dir / "torch" / MODEL_STORE

    # -- what runs ------------------------------------------------------------------------------------------

    def definitions(self) -> list[ServerDefinition]:
        """The servers of this stack, in start order."""
        definitions = self._definitions if self._definitions is not None else self._default_definitions()
        if self.only:
            unknown = sorted(set(self.only) - {definition.name for definition in definitions})
            if unknown:
                names = ", ".join(definition.name for definition in definitions)
                raise StackError(f"Unknown server {unknown[0]!r}; the servers are {names}.")
            definitions = [definition for definition in definitions if definition.name in self.only]
        return definitions

    def _default_definitions(self) -> list[ServerDefinition]:
        return [self._tfserving_definition(), self._flask_definition(), self._torchserve_definition()]

    def _sample_body(self) -> str:
        return json.dumps({"instances": [SAMPLE_IMAGE]}, separators=(",", ":"))

    def _tfserving_definition(self) -> ServerDefinition:
        ports = self.ports
        predict_url = f"http://{HOST}:{ports.tf_rest}/v1/models/{self.model_name}:predict"
        return ServerDefinition(
            name="tfserving",
            title="TensorFlow Serving-compatible server (serving.tfserving)",
            command=[
                self.python, "-m", "serving.tfserving",
                f"--port={ports.tf_grpc}",
                f"--rest_api_port={ports.tf_rest}",
                f"--model_name={self.model_name}",
                f"--model_base_path={self.tf_base_path}",
            ],
            ports={"gRPC": ports.tf_grpc, "REST": ports.tf_rest},
            is_ready=lambda: tf_model_available(ports.tf_rest, ports.tf_grpc, self.model_name),
            endpoints=[
                Endpoint("TF Serving gRPC", "gRPC", f"{HOST}:{ports.tf_grpc}",
                         f"{self._client_command()} tf --grpc {HOST}:{ports.tf_grpc} --sample 10"),
                Endpoint("TF Serving REST", "REST", predict_url, self._curl(predict_url)),
            ],
            environment={"TF_CPP_MIN_LOG_LEVEL": "2"},
            needs=("tf",),
        )

    def _flask_definition(self) -> ServerDefinition:
        port = self.ports.flask
        predict_url = f"http://{HOST}:{port}/v1/models/{self.model_name}:predict"
        return ServerDefinition(
            name="flask",
            title="Flask app under gunicorn (serving.flask_app)",
            # `python -m gunicorn` uses this interpreter, so the stack needs no PATH set-up.
            command=[
                self.python, "-m", "gunicorn",
                "-c", str(GUNICORN_CONFIG),
                "-b", f"{HOST}:{port}",
                "serving.flask_app:create_app()",
            ],
            ports={"REST": port},
            is_ready=lambda: flask_ready(port),
            endpoints=[
                Endpoint("Flask REST", "REST", predict_url, self._curl(predict_url)),
            ],
            environment={
                "FLASK_MODEL_BASE_PATH": str(self.torch_base_path),
                "FLASK_MODEL_NAME": self.model_name,
            },
            needs=("torch",),
        )

    def _torchserve_definition(self) -> ServerDefinition:
        # The TorchServe specifics (config from the template with these ports and the archive's version, the run
        # folder layout, readiness through the management API) live in serving.torchserve; the stack adds its
        # own process group, a foreground launcher whose exit it can watch, and the shared pid and log files.
        from serving.torchserve import launch

        ports = self.ports
        torchserve_ports = launch.TorchServePorts(
            inference=ports.torchserve_inference,
            management=ports.torchserve_management,
            metrics=ports.torchserve_metrics,
            grpc_inference=ports.torchserve_grpc_inference,
            grpc_management=ports.torchserve_grpc_management,
        )
        handle = launch.TorchServeHandle(
            run_dir=self.torchserve_dir, ports=torchserve_ports, model_name=self.model_name, token_auth=True
        )
        config_path = self.torchserve_dir / "config.properties"
        temp_dir = self.torchserve_dir / "tmp"
        predict_url = f"{handle.inference_url}/predictions/{self.model_name}"
        def key_command(kind: str) -> str:
            # Read at call time: TorchServe's keys expire (60 minutes by default) and it rewrites the file.
            return (
                f"{self._client_python()} -c 'import json; "
                f"print(json.load(open(\"{self._display_path(self.torchserve_key_file)}\"))[\"{kind}\"][\"key\"])'"
            )
        # The virtualenv's torchserve, found without raising so that `stop` works even where it is missing.
        executable = str(Path(self.python).parent / "torchserve")
        client = None

        def is_ready() -> bool:
            nonlocal client
            if client is None:
                client = handle.client(timeout=2.0)
            return client.is_available()

        def prepare() -> None:
            try:
                launch.java_executable()
                launch.torchserve_executable()
            except UsageError as error:
                raise StackError(str(error)) from None
            temp_dir.mkdir(parents=True, exist_ok=True)
            handle.log_dir.mkdir(parents=True, exist_ok=True)
            self.torchserve_key_file.unlink(missing_ok=True)  # a stale key file would hand out expired keys
            launch.write_config(config_path, self.model_store, torchserve_ports, self.model_name, token_auth=True)

        definition = ServerDefinition(
            name="torchserve",
            title="TorchServe",
            # --foreground keeps the launcher alive as the JVM's parent: its exit tells that TorchServe died.
            command=[
                executable, "--start", "--foreground", "--ncs",
                "--ts-config", str(config_path),
                "--model-store", str(self.model_store),
            ],
            ports={
                "inference": ports.torchserve_inference,
                "management": ports.torchserve_management,
                "metrics": ports.torchserve_metrics,
                "gRPC inference": ports.torchserve_grpc_inference,
                "gRPC management": ports.torchserve_grpc_management,
            },
            is_ready=is_ready,
            endpoints=[
                Endpoint("TorchServe REST", "REST", predict_url, self._curl(predict_url, key_command("inference"))),
                Endpoint(
                    "TorchServe management", "REST", f"{handle.management_url}/models/{self.model_name}",
                    f"curl -s -H \"Authorization: Bearer $({key_command('management')})\" "
                    f"{handle.management_url}/models/{self.model_name}",
                ),
                Endpoint(
                    "TorchServe client", "REST", predict_url,
                    f"{self._client_command()} torchserve --rest {handle.inference_url} "
                    f"--key-file {self._display_path(self.torchserve_key_file)} --sample 10",
                ),
            ],
            environment={
                # torchserve keeps its pid file in the temp folder: one folder per stack keeps stacks apart,
                # and `torchserve --stop` run with the same folder stops this stack's server and no other.
                "TEMP": str(temp_dir),
                "TMPDIR": str(temp_dir),
                "LOG_LOCATION": str(handle.log_dir),
                "METRICS_LOCATION": str(handle.log_dir),
            },
            working_directory=self.torchserve_dir,  # TorchServe writes key_file.json into its working folder
            stop_command=[executable, "--stop"],
            prepare=prepare,
            needs=("torch-archive",),
        )
        return definition

    def _curl(self, url: str, key_command: str | None = None) -> str:
        authorization = f" -H \"Authorization: Bearer $({key_command})\"" if key_command else ""
        # TorchServe reads a body as JSON only when told so; TF Serving and Flask accept the header too.
        return f"curl -s -H 'Content-Type: application/json'{authorization} -d '{self._sample_body()}' {url}"

    def _client_python(self) -> str:
        return self._display_path(Path(self.python))

    def _client_command(self) -> str:
        return f"{self._client_python()} -m serving.client"

    @staticmethod
    def _display_path(path: Path) -> str:
        """A path relative to the current folder when it lies below it, for shorter copy-paste lines."""
        with contextlib.suppress(ValueError):
            return str(Path(path).absolute().relative_to(Path.cwd()))
        return str(path)

    # -- models ---------------------------------------------------------------------------------------------

    def missing_exports(self) -> list[str]:
        """The exports ('tf', 'torch', 'torch-archive') that the servers need and cannot find."""
        needed = {export for definition in self.definitions() for export in definition.needs}
        return [
            export for export in ("tf", "torch", "torch-archive") if export in needed and not self._has_export(export)
        ]

    def _has_export(self, export: str) -> bool:
        if export == "tf":
            versions = list_versions(self.tf_base_path)
            return any((self.tf_base_path / str(version) / "saved_model.pb").is_file() for version in versions)
        if export == "torch":
            versions = list_versions(self.torch_base_path)
            return any((self.torch_base_path / str(version) / TORCHSCRIPT_FILE).is_file() for version in versions)
        return (self.model_store / f"{self.model_name}.mar").is_file()

    def train_missing(self, report: Report = print) -> None:
        """Train each framework whose export is missing, as a subprocess (serving never imports the pipelines)."""
        modules = {TRAINING_MODULES[export] for export in self.missing_exports()}
        for module in sorted(modules):
            if self.model_name != DEFAULT_MODEL_NAME:
                raise StackError(f"No export of model {self.model_name!r} exists; "
                                 f"train it with `python -m {module} --data-dir ...` first.")
            report(f"No export of {self.model_name!r} under {self._display_path(self.models_dir)} for {module}; "
                   f"training one first.")
            result = subprocess.run(
                [self.python, "-m", module, "--output-dir", str(self.models_dir)],
                cwd=PROJECT_ROOT,
                env=self._environment({}),
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise StackError(
                    f"Training with {module} failed (exit status {result.returncode}); see its output above."
                )

    # -- start ----------------------------------------------------------------------------------------------

    def check_ports(self) -> None:
        """Raise StackError naming the first port that is taken and, when visible, the process holding it."""
        for definition in self.definitions():
            for purpose, port in definition.ports.items():
                if port_is_free(port):
                    continue
                holder = port_holder(port)
                if holder is not None and self._is_own(holder):
                    raise StackError(f"The stack is already running (port {port}, {definition.name}); "
                                     f"stop it with `make stop` first.")
                who = f" by {_describe_process(holder)}" if holder is not None else ""
                raise StackError(f"Port {port} ({definition.name} {purpose}) is already in use{who}; "
                                 f"stop that process or choose another port.")

    def _is_own(self, process: psutil.Process) -> bool:
        leaders = [_read_pid_file(self.pid_path(definition.name)) for definition in self.definitions()]
        owned = set()
        for leader in leaders:
            if leader is not None:
                owned.update(member.pid for member in _process_tree(leader))
        return process.pid in owned

    def _environment(self, extra: dict[str, str]) -> dict[str, str]:
        environment = dict(os.environ)
        # The servers import `serving` and `experiment` from this checkout, whatever folder they run in.
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")]))
        environment["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they happen
        environment.update(extra)
        return environment

    def start(
        self,
        timeout: float = DEFAULT_START_TIMEOUT_SECONDS,
        report: Report = print,
        train: bool = True,
    ) -> dict[str, float]:
        """Start every server, wait until each has its model ready, and return the seconds each one took.

        On any failure everything this call started is stopped again before the error is raised.
        """
        definitions = self.definitions()
        running = [definition.name for definition in definitions if _read_pid_file(self.pid_path(definition.name))]
        if running:
            raise StackError(f"The stack in {self._display_path(self.run_dir)} is already running "
                             f"({', '.join(running)}); stop it with `make stop` first.")
        self.check_ports()
        if train:
            self.train_missing(report)
        missing = self.missing_exports()
        if missing:
            target = "train-tf" if missing[0] == "tf" else "train-torch"
            raise StackError(f"No {missing[0]} export of {self.model_name!r} under "
                             f"{self._display_path(self.models_dir)}; train one first with `make {target}`.")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self.pid_path("any").parent.mkdir(parents=True, exist_ok=True)
        self._write_state()
        try:
            # Every check and config file first (Java for TorchServe, say), so a mistake starts nothing.
            for definition in definitions:
                if definition.prepare is not None:
                    definition.prepare()
            started_at = {}
            for definition in definitions:
                started_at[definition.name] = self._launch(definition, report)
            return self._wait_until_ready(definitions, started_at, timeout, report)
        except BaseException:
            # Ctrl-C or a failed server while starting: leave nothing behind.
            self.stop(report=lambda line: None)
            raise

    def _launch(self, definition: ServerDefinition, report: Report) -> float:
        log_path = self.log_path(definition.name)
        report(f"Starting {definition.name:<10} {definition.title}; log {self._display_path(log_path)}")
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(definition.command)}\n".encode())
            log.flush()
            try:
                process = subprocess.Popen(
                    definition.command,
                    cwd=definition.working_directory,
                    env=self._environment(definition.environment),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session and process group: Ctrl-C in the terminal reaches only the orchestrator,
                    # which stops the servers in order, and `stop` can signal the whole group at once.
                    start_new_session=True,
                )
            except OSError as error:
                raise StackError(
                    f"Cannot start {definition.name} ({definition.command[0]}): {error.strerror}."
                ) from None
        self._processes[definition.name] = process
        self.pid_path(definition.name).write_text(f"{process.pid}\n")
        return time.monotonic()

    def _wait_until_ready(
        self,
        definitions: Sequence[ServerDefinition],
        started_at: dict[str, float],
        timeout: float,
        report: Report,
    ) -> dict[str, float]:
        pending = {definition.name: definition for definition in definitions}
        seconds: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while pending:
            for name, definition in list(pending.items()):
                exit_status = self._exit_status(name)
                if exit_status is not None:
                    raise StackError(
                        f"{name} exited with status {exit_status} before its model was ready; "
                        f"last lines of {self._display_path(self.log_path(name))}:\n{tail(self.log_path(name))}"
                    )
                try:
                    ready = definition.is_ready()
                except (OSError, ValueError, KeyError, TypeError, AttributeError):
                    ready = False  # not listening yet, or answering before its routes are up
                if ready:
                    seconds[name] = time.monotonic() - started_at[name]
                    ports = ", ".join(f"{purpose} {port}" for purpose, port in definition.ports.items())
                    report(f"Ready    {name:<10} after {seconds[name]:5.1f} s ({ports})")
                    del pending[name]
            if pending and time.monotonic() > deadline:
                name = next(iter(pending))
                raise StackError(
                    f"{name} did not report its model ready within {timeout:.0f} s; "
                    f"last lines of {self._display_path(self.log_path(name))}:\n{tail(self.log_path(name))}"
                )
            if pending:
                time.sleep(POLL_INTERVAL_SECONDS)
        return seconds

    def exited_servers(self) -> dict[str, int]:
        """Servers this object started that have exited since, with their exit status."""
        return {name: code for name, process in self._processes.items() if (code := process.poll()) is not None}

    def _exit_status(self, name: str) -> int | None:
        process = self._processes.get(name)
        return process.poll() if process is not None else None

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "ports": self.ports.as_dict(),
            "models_dir": str(self.models_dir),
            "model_name": self.model_name,
            "servers": [definition.name for definition in self.definitions()],
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def from_run_dir(cls, run_dir: Path | str = DEFAULT_RUN_DIR, python: str = sys.executable) -> "Stack":
        """The stack a previous `start` left in run_dir (default ports and folders when it left no state)."""
        state_file = Path(run_dir) / "stack.json"
        try:
            state = json.loads(state_file.read_text())
            return cls(
                ports=Ports(**state["ports"]),
                run_dir=run_dir,
                models_dir=state["models_dir"],
                model_name=state["model_name"],
                python=python,
                only=state.get("servers"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return cls(run_dir=run_dir, python=python)

    # -- stop -----------------------------------------------------------------------------------------------

    def stop(self, report: Report = print, grace: float = STOP_GRACE_SECONDS) -> list[str]:
        """Stop every server this run folder knows of, their children included; return the names stopped."""
        leaders: dict[str, psutil.Process] = {}
        for definition in self.definitions():
            leader = _read_pid_file(self.pid_path(definition.name))
            if leader is not None:
                leaders[definition.name] = leader
        # Collected before any signal: once a leader exits, its children are re-parented and harder to find.
        members = {name: _process_tree(leader) for name, leader in leaders.items()}
        by_name = {definition.name: definition for definition in self.definitions()}
        for name, leader in leaders.items():
            report(f"Stopping {name} ({_describe_process(leader)})")
            if by_name[name].stop_command:
                self._run_stop_command(by_name[name])  # the server's own way first (TorchServe: --stop)
            else:
                self._terminate(members[name], leader)
        everything = [member for group in members.values() for member in group]
        alive = _wait_until_gone(everything, grace)
        if alive:
            # Whatever the server's own stop left running (a launcher, a worker) gets SIGTERM, then SIGKILL.
            for member in alive:
                with contextlib.suppress(psutil.Error):
                    member.terminate()
            alive = _wait_until_gone(alive, min(5.0, grace))
        for member in alive:
            report(f"Killing {_describe_process(member)}, still running after SIGTERM")
            with contextlib.suppress(psutil.Error):
                member.kill()
        _wait_until_gone(alive, 5.0)
        for name, process in list(self._processes.items()):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=1)  # reap our own children so no zombie outlives the stack
            self._processes.pop(name, None)
        for definition in self.definitions():
            self.pid_path(definition.name).unlink(missing_ok=True)
        self.torchserve_key_file.unlink(missing_ok=True)
        return list(leaders)

    @staticmethod
    def _terminate(members: list[psutil.Process], leader: psutil.Process) -> None:
        with contextlib.suppress(OSError):
            os.killpg(leader.pid, signal.SIGTERM)
        for member in members:
            with contextlib.suppress(psutil.Error):
                member.terminate()  # members that left the group (a worker with its own session)

    def _run_stop_command(self, definition: ServerDefinition) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(
                definition.stop_command,
                cwd=definition.working_directory,
                env=self._environment(definition.environment),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )

    # -- inspect --------------------------------------------------------------------------------------------

    def status(self) -> list[ServerStatus]:
        """For each server: its pid, whether it runs and whether its model is ready."""
        statuses = []
        for definition in self.definitions():
            leader = _read_pid_file(self.pid_path(definition.name))
            ready = False
            if leader is not None:
                with contextlib.suppress(Exception):
                    ready = definition.is_ready()
            statuses.append(ServerStatus(definition.name, leader.pid if leader else None, leader is not None, ready))
        return statuses

    def endpoints(self) -> dict[str, str]:
        """Addresses for clients and tests: tf_grpc, tf_rest, flask, torchserve, torchserve_management, ..."""
        ports = self.ports
        return {
            "tf_grpc": f"{HOST}:{ports.tf_grpc}",
            "tf_rest": f"http://{HOST}:{ports.tf_rest}",
            "flask": f"http://{HOST}:{ports.flask}",
            "torchserve": f"http://{HOST}:{ports.torchserve_inference}",
            "torchserve_management": f"http://{HOST}:{ports.torchserve_management}",
            "torchserve_metrics": f"http://{HOST}:{ports.torchserve_metrics}",
            "torchserve_grpc": f"{HOST}:{ports.torchserve_grpc_inference}",
        }

    def environment_for_clients(self) -> dict[str, str]:
        """The variables the integration suite reads to query an already running stack."""
        endpoints = self.endpoints()
        return {
            "TFSERVING_GRPC": endpoints["tf_grpc"],
            "TFSERVING_REST": endpoints["tf_rest"],
            "FLASK_URL": endpoints["flask"],
            "TORCHSERVE_URL": endpoints["torchserve"],
            "TORCHSERVE_MANAGEMENT_URL": endpoints["torchserve_management"],
            "TORCHSERVE_KEY_FILE": str(self.torchserve_key_file),
        }

    def describe_endpoints(self) -> str:
        """The endpoint table and a command to try each one, as printed after start."""
        lines = ["Endpoints:"]
        for definition in self.definitions():
            for endpoint in definition.endpoints:
                lines.append(f"  {endpoint.name:<22} {endpoint.protocol:<5} {endpoint.address}")
                lines.append(f"      {endpoint.try_command}")
        if any(definition.name == "torchserve" for definition in self.definitions()):
            lines.append(f"TorchServe token authorization is on; its keys are in "
                         f"{self._display_path(self.torchserve_key_file)}.")
        lines.append("Try it in a browser: make playground (draw a digit, see every endpoint answer)")
        lines.append("Logs: make logs    Stop: make stop")
        return "\n".join(lines)

    def run_in_foreground(self, report: Report = print) -> int:
        """Block until Ctrl-C, SIGTERM or a server exiting on its own, then stop everything; the exit status."""
        def raise_interrupt(signal_number: int, frame: object) -> None:
            raise KeyboardInterrupt

        # SIGINT too: a shell that starts us in the background leaves SIGINT ignored, so Python would not raise.
        previous = {number: signal.signal(number, raise_interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
        report("Serving in the foreground; press Ctrl-C to stop every server.")
        exit_code = 0
        try:
            while True:
                for name, code in self.exited_servers().items():
                    report(f"{name} exited on its own with status {code}; stopping the others. "
                           f"Last lines of its log:\n{tail(self.log_path(name))}")
                    exit_code = 1
                    raise KeyboardInterrupt
                time.sleep(0.5)
        except KeyboardInterrupt:
            report("Stopping every server...")
            # A second Ctrl-C must not cut the stop short and leave servers behind; stopping is bounded in time.
            previous_interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                stopped = self.stop(report=report)
            finally:
                signal.signal(signal.SIGINT, previous_interrupt)
            report(f"Stopped {', '.join(stopped) or 'nothing'}.")
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)
        return exit_code

    def __enter__(self) -> "Stack":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(report=lambda line: None)


# ---------------------------------------------------------------------------------------------------------------
# Command line.


def _port_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("ports (DESIGN.md's defaults)")
    for field in dataclasses.fields(Ports):
        group.add_argument(f"--{field.name.replace('_', '-')}-port", type=int, default=field.default,
                           dest=f"port_{field.name}", metavar="PORT")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    start = commands.add_parser("start", help="start the servers and wait until every model is ready")
    start.add_argument("--foreground", action="store_true",
                       help="stay attached; Ctrl-C stops every server")
    start.add_argument("--timeout", type=float, default=DEFAULT_START_TIMEOUT_SECONDS,
                       help="seconds to wait for all models to be ready (default %(default)s)")
    start.add_argument("--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
                       help="folder with tf/<model>/ and torch/<model>/ exports (default %(default)s)")
    start.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="model to serve (default %(default)s)")
    start.add_argument("--no-train", action="store_true", help="fail instead of training when no export exists")
    start.add_argument("--only", default=None,
                       help="comma-separated subset of servers: tfserving,flask,torchserve")
    _port_flags(start)

    for name, help_text in (("stop", "stop every server and remove the pid files"),
                            ("status", "show which servers run and have their model ready")):
        commands.add_parser(name, help=help_text)

    logs = commands.add_parser("logs", help="show the end of each server's log")
    logs.add_argument("servers", nargs="*", help="servers to show (default: all)")
    logs.add_argument("--lines", type=int, default=40, help="lines per log (default %(default)s)")
    logs.add_argument("--follow", action="store_true", help="keep printing new lines until Ctrl-C")

    for subparser in (start, *(commands.choices[name] for name in ("stop", "status", "logs"))):
        subparser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                               help="where pid files and logs live (default %(default)s)")
    return parser


def _command_start(arguments: argparse.Namespace) -> int:
    ports = Ports(**{field.name: getattr(arguments, f"port_{field.name}") for field in dataclasses.fields(Ports)})
    for name, port in ports.as_dict().items():
        if not 0 < port < 65536:
            raise StackError(f"--{name.replace('_', '-')}-port must be between 1 and 65535, got {port}.")
    only = [name.strip() for name in arguments.only.split(",") if name.strip()] if arguments.only else None
    stack = Stack(ports=ports, run_dir=arguments.run_dir, models_dir=arguments.models_dir,
                  model_name=arguments.model_name, only=only)
    began = time.monotonic()
    seconds = stack.start(timeout=arguments.timeout, train=not arguments.no_train)
    print(f"All {len(seconds)} servers ready in {time.monotonic() - began:.1f} s.")
    print(stack.describe_endpoints())
    if not arguments.foreground:
        return 0
    return stack.run_in_foreground()


def _command_stop(arguments: argparse.Namespace) -> int:
    stack = Stack.from_run_dir(arguments.run_dir)
    stopped = stack.stop()
    print(f"Stopped {', '.join(stopped)}." if stopped else "Nothing was running.")
    return 0


def _command_status(arguments: argparse.Namespace) -> int:
    stack = Stack.from_run_dir(arguments.run_dir)
    statuses = stack.status()
    for status in statuses:
        state = "ready" if status.ready else ("starting or not ready" if status.running else "stopped")
        pid = f"pid {status.pid}" if status.pid else ""
        print(f"{status.name:<10} {state:<22} {pid}")
    if any(status.running for status in statuses):
        print(stack.describe_endpoints())
    return 0 if all(status.ready for status in statuses) else 1


def _command_logs(arguments: argparse.Namespace) -> int:
    stack = Stack.from_run_dir(arguments.run_dir)
    names = arguments.servers or [definition.name for definition in Stack(run_dir=arguments.run_dir).definitions()]
    known = {definition.name for definition in Stack(run_dir=arguments.run_dir).definitions()}
    for name in names:
        if name not in known:
            raise StackError(f"Unknown server {name!r}; the servers are {', '.join(sorted(known))}.")
    paths = [stack.log_path(name) for name in names]
    if not any(path.exists() for path in paths):
        raise StackError(f"No logs under {stack._display_path(stack.logs_dir)}; start the servers with `make serve`.")
    for path in paths:
        if path.exists():
            print(f"==> {stack._display_path(path)} <==")
            print(tail(path, arguments.lines))
    if arguments.follow:
        _follow(paths)
    return 0


def _follow(paths: list[Path]) -> None:
    positions = {path: path.stat().st_size if path.exists() else 0 for path in paths}
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            for path in paths:
                with contextlib.suppress(OSError), open(path, "rb") as handle:
                    handle.seek(positions[path])
                    chunk = handle.read()
                    positions[path] = handle.tell()
                    for line in chunk.decode("utf-8", errors="replace").splitlines():
                        print(f"{path.stem}| {line}")
            time.sleep(0.5)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m serving.stack`."""
    arguments = _build_parser().parse_args(argv)
    handlers = {"start": _command_start, "stop": _command_stop, "status": _command_status, "logs": _command_logs}
    try:
        return handlers[arguments.command](arguments)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # start() stops whatever it had started before the interrupt reaches here.
        print(f"{PROG}: interrupted; every server it had started was stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
