"""The stack: the three servers over one models folder, with their state under one run folder.

    <run_dir>/stack.json            ports, model name and folders of the running stack (for stop, status and logs)
    <run_dir>/pids/<server>.pid     the pid of each server's process group leader
    <run_dir>/logs/<server>.log     each server's stdout and stderr
    <run_dir>/torchserve/           TorchServe's folder: its config, key_file.json, own logs and temp folder

`make serve`, `make stop`, `make status` and `make logs` (`python -m serving.stack`) drive it; so do `make demo`, the
integration tests and the benchmarks, on free ports.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from experiment import processes
from serving.runtime import exports, flask_app, tfserving, torchserve
from serving.runtime.process import (
    STOP_GRACE_SECONDS,
    Report,
    ServerProcess,
    describe_process,
    port_holder,
    process_tree,
    read_pid_file,
    stop_all,
    tail,
    wait_until_ready,
)
from serving.runtime.spec import DEFAULT_MODEL_NAME, HOST, Endpoint, ServerError, ServerSpec, display_path
from serving.torchserve.config import TorchServePorts

DEFAULT_RUN_DIR = Path(".run")
DEFAULT_MODELS_DIR = Path("models")
STATE_FILE = "stack.json"  # in the run folder: lets stop, status and logs find a stack started by another command
# TorchServe's JVM and workers take the longest: about half a minute on two cores, longer on a busy machine.
DEFAULT_START_TIMEOUT_SECONDS = 180.0


@dataclasses.dataclass(frozen=True)
class Ports:
    """Every port the stack listens on (docs/architecture.md, 'Ports'); all bound to 127.0.0.1."""

    tf_grpc: int = tfserving.DEFAULT_GRPC_PORT
    tf_rest: int = tfserving.DEFAULT_REST_PORT
    flask: int = flask_app.DEFAULT_PORT
    torchserve_inference: int = TorchServePorts.inference
    torchserve_management: int = TorchServePorts.management
    torchserve_metrics: int = TorchServePorts.metrics
    torchserve_grpc_inference: int = TorchServePorts.grpc_inference
    torchserve_grpc_management: int = TorchServePorts.grpc_management

    def as_dict(self) -> dict[str, int]:
        """Field name → port."""
        return dataclasses.asdict(self)

    @classmethod
    def free(cls) -> Ports:
        """Ports the operating system reports free right now (for runs beside a real stack)."""
        return cls(*processes.free_ports(len(dataclasses.fields(cls))))

    def torchserve(self) -> TorchServePorts:
        """TorchServe's five."""
        return TorchServePorts(
            self.torchserve_inference,
            self.torchserve_management,
            self.torchserve_metrics,
            self.torchserve_grpc_inference,
            self.torchserve_grpc_management,
        )


@dataclasses.dataclass(frozen=True)
class ServerStatus:
    """What `status` reports for one server."""

    name: str
    pid: int | None
    running: bool
    ready: bool


class Stack:
    """The three servers over one models folder, with their state under one run folder."""

    def __init__(
        self,
        ports: Ports | None = None,
        run_dir: Path | str = DEFAULT_RUN_DIR,
        models_dir: Path | str = DEFAULT_MODELS_DIR,
        model_name: str = DEFAULT_MODEL_NAME,
        python: str = sys.executable,
        specs: Sequence[ServerSpec] | None = None,
        only: Sequence[str] | None = None,
        flask_format: str | None = None,
    ) -> None:
        self.ports = ports or Ports()
        # Absolute paths: TorchServe runs in its own working folder.
        self.run_dir = Path(run_dir).resolve()
        self.models_dir = Path(models_dir).resolve()
        self.model_name = model_name
        self.python = python
        self._specs = list(specs) if specs is not None else None
        self.only = list(only) if only else None
        self.flask_format = flask_format  # which file Flask serves: onnx (default), pt2 or torchscript
        self._servers: dict[str, ServerProcess] = {}  # the servers this object started

    # -- places ---------------------------------------------------------------------------------------------

    @property
    def logs_dir(self) -> Path:
        """Where each server's log goes."""
        return self.run_dir / "logs"

    @property
    def torchserve_instance(self) -> torchserve.TorchServeInstance:
        """TorchServe's folder (run_dir/torchserve) and ports; token authorization on, its default."""
        return torchserve.TorchServeInstance(self.run_dir / "torchserve", self.ports.torchserve(), token_auth=True)

    @property
    def torchserve_key_file(self) -> Path:
        """key_file.json, written by TorchServe into its folder."""
        return self.torchserve_instance.key_path

    def pid_path(self, name: str) -> Path:
        """The pid file of one server."""
        return self.run_dir / "pids" / f"{name}.pid"

    def log_path(self, name: str) -> Path:
        """The log file of one server."""
        return self.logs_dir / f"{name}.log"

    @property
    def tf_base_path(self) -> Path:
        """models/tf/<model>: TensorFlow Serving's model base path."""
        return exports.tf_base_path(self.models_dir, self.model_name)

    @property
    def torch_base_path(self) -> Path:
        """models/torch/<model>: the torch versions (model.onnx, ...) Flask serves."""
        return exports.torch_base_path(self.models_dir, self.model_name)

    @property
    def model_store(self) -> Path:
        """models/torch/model-store: where TorchServe finds <model>.mar."""
        return exports.model_store(self.models_dir)

    # -- what runs ------------------------------------------------------------------------------------------

    def specs(self) -> list[ServerSpec]:
        """The servers of this stack, in start order."""
        specs = self._specs if self._specs is not None else self._default_specs()
        if self.only:
            unknown = sorted(set(self.only) - {spec.name for spec in specs})
            if unknown:
                names = ", ".join(spec.name for spec in specs)
                raise ServerError(f"Unknown server {unknown[0]!r}; the servers are {names}.")
            specs = [spec for spec in specs if spec.name in self.only]
        return specs

    def _default_specs(self) -> list[ServerSpec]:
        ports, name, python = self.ports, self.model_name, self.python
        return [
            tfserving.spec(
                tfserving.TFServingPorts(ports.tf_grpc, ports.tf_rest),
                name,
                self.tf_base_path,
                (f"--monitoring_config_file={tfserving.MONITORING_CONFIG}",),
                python,
            ),
            flask_app.spec(ports.flask, name, self.torch_base_path, python=python, model_format=self.flask_format),
            torchserve.spec(self.torchserve_instance, self.model_store, name, python=python),
        ]

    def endpoints(self) -> list[Endpoint]:
        """Every endpoint of the stack's servers, each with its client."""
        return [endpoint for spec in self.specs() for endpoint in spec.endpoints]

    def _needed_exports(self) -> set[str]:
        return {export for spec in self.specs() for export in spec.needs}

    def missing_exports(self) -> list[str]:
        """The exports ('tf', 'torch', 'torch-archive') that the servers need and cannot find."""
        return exports.missing_exports(self._needed_exports(), self.models_dir, self.model_name)

    # -- start ----------------------------------------------------------------------------------------------

    def check_ports(self) -> None:
        """ServerError naming the first port that is taken and, when visible, the process holding it."""
        for spec in self.specs():
            for purpose, port in spec.ports.items():
                if processes.port_is_free(port, HOST, reuse_address=True):
                    continue
                holder = port_holder(port)
                if holder is not None and holder.pid in self._own_processes():
                    raise ServerError(
                        f"The stack is already running (port {port}, {spec.name}); stop it with `make stop` first."
                    )
                who = f" by {describe_process(holder)}" if holder is not None else ""
                raise ServerError(
                    f"Port {port} ({spec.name} {purpose}) is already in use{who}; "
                    f"stop that process or choose another port."
                )

    def _own_processes(self) -> set[int]:
        leaders = [read_pid_file(self.pid_path(spec.name)) for spec in self.specs()]
        return {member.pid for leader in leaders if leader is not None for member in process_tree(leader)}

    def start(
        self, timeout: float = DEFAULT_START_TIMEOUT_SECONDS, report: Report = print, train: bool = True
    ) -> dict[str, float]:
        """Start every server, wait until each has its model ready, and return the seconds each one took.

        On any failure everything this call started is stopped again before the error is raised.
        """
        specs = self.specs()
        running = [spec.name for spec in specs if read_pid_file(self.pid_path(spec.name))]
        if running:
            raise ServerError(
                f"The stack in {display_path(self.run_dir)} is already running "
                f"({', '.join(running)}); stop it with `make stop` first."
            )
        self.check_ports()
        if train:
            exports.train_missing(self._needed_exports(), self.models_dir, self.model_name, self.python, report)
        exports.require_exports(self._needed_exports(), self.models_dir, self.model_name)
        self._write_state()
        try:
            # Every check and config file first (Java for TorchServe, say), so a mistake starts nothing.
            for spec in specs:
                if spec.prepare is not None:
                    spec.prepare()
            for spec in specs:
                log_path = self.log_path(spec.name)
                report(f"Starting {spec.name:<10} {spec.title}; log {display_path(log_path)}")
                self._servers[spec.name] = ServerProcess.launch(spec, log_path, self.pid_path(spec.name))

            def on_ready(server: ServerProcess, seconds: float) -> None:
                ports = ", ".join(f"{purpose} {port}" for purpose, port in server.spec.ports.items())
                report(f"Ready    {server.name:<10} after {seconds:5.1f} s ({ports})")

            return wait_until_ready(list(self._servers.values()), timeout, on_ready)
        except BaseException:
            # Ctrl-C or a failed server while starting: leave nothing behind.
            self.stop(report=lambda line: None)
            raise

    def exited_servers(self) -> dict[str, int]:
        """Servers this object started that have exited since, with their exit status."""
        return {name: code for name, server in self._servers.items() if (code := server.exit_status()) is not None}

    def _write_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "ports": self.ports.as_dict(),
            "models_dir": str(self.models_dir),
            "model_name": self.model_name,
            "servers": [spec.name for spec in self.specs()],
        }
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def from_run_dir(cls, run_dir: Path | str = DEFAULT_RUN_DIR, python: str = sys.executable) -> Stack:
        """The stack a previous `start` left in run_dir (default ports and folders when it left no state)."""
        try:
            state = json.loads((Path(run_dir) / STATE_FILE).read_text())
            return cls(
                Ports(**state["ports"]),
                run_dir,
                state["models_dir"],
                state["model_name"],
                python,
                only=state.get("servers"),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return cls(run_dir=run_dir, python=python)

    # -- stop and inspect -----------------------------------------------------------------------------------

    def stop(self, report: Report = print, grace: float = STOP_GRACE_SECONDS) -> list[str]:
        """Stop every server this run folder knows of, their children included; return the names stopped."""
        servers = []
        for spec in self.specs():
            server = self._servers.pop(spec.name, None) or ServerProcess.find(
                spec, self.pid_path(spec.name), self.log_path(spec.name)
            )
            if server is not None:
                servers.append(server)
        stopped = stop_all(servers, grace, report)
        for spec in self.specs():
            for path in (self.pid_path(spec.name), *spec.remove_after_stop):
                path.unlink(missing_ok=True)
        return stopped

    def status(self) -> list[ServerStatus]:
        """For each server: its pid, whether it runs and whether its model is ready."""
        statuses = []
        for spec in self.specs():
            server = ServerProcess.find(spec, self.pid_path(spec.name), self.log_path(spec.name))
            ready = server is not None and server.is_ready()
            statuses.append(ServerStatus(spec.name, server.pid if server else None, server is not None, ready))
        return statuses

    def describe_endpoints(self) -> str:
        """The endpoint list and a command to try each one, as printed after start."""
        lines = ["Endpoints:"]
        for spec in self.specs():
            for example in spec.examples:
                lines.append(f"  {example.label:<22} {example.protocol:<5} {example.address}")
                lines.append(f"      {example.command}")
        lines += [note for spec in self.specs() for note in spec.notes]
        lines.append("Try it in a browser: make playground (draw a digit, see every endpoint answer)")
        lines.append("Logs: make logs    Stop: make stop")
        return "\n".join(lines)

    def run_in_foreground(self, report: Report = print) -> int:
        """Block until Ctrl-C, SIGTERM or a server exiting on its own, then stop everything; the exit status."""

        def raise_interrupt(signal_number: int, frame: object) -> None:
            raise KeyboardInterrupt

        # SIGINT too: a shell that starts us in the background leaves SIGINT ignored, so Python would not raise.
        previous = {number: signal.signal(number, raise_interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
        exit_code = 0
        try:
            report("Serving in the foreground; press Ctrl-C to stop every server.")
            while True:
                for name, code in self.exited_servers().items():
                    report(
                        f"{name} exited on its own with status {code}; stopping the others. "
                        f"Last lines of its log:\n{tail(self.log_path(name))}"
                    )
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

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop(report=lambda line: None)
