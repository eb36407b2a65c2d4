"""The spec of TorchServe (`torchserve --foreground`, Java 17): REST 8080-8082 and gRPC 7070-7071, with live roll-out.

Each instance has its own folder: the config.properties written for it, its logs, the key_file.json TorchServe
writes into its working folder, and its temporary folder, where TorchServe keeps its pid file (so several
instances run side by side and `torchserve --stop` run with one folder stops that instance and no other).

With roll-out on (the default), the spec's command is `serving.runtime.torchserve_rollout`: it runs TorchServe as
its child and, while it runs, rolls each new `<model>-<version>.mar` of the model store out through the management
API (`serving.torchserve.rollout`), so a training run reaches a running TorchServe as it reaches the other servers.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from experiment import processes
from serving.runtime.spec import (
    DEFAULT_MODEL_NAME,
    Endpoint,
    Example,
    ServerError,
    ServerSpec,
    client_command,
    curl_command,
    display_path,
)
from serving.torchserve import config
from serving.torchserve import rollout as rollout_module
from serving.torchserve.config import TorchServePorts

if TYPE_CHECKING:
    from serving.clients import TorchServeClient

NAME = "torchserve"
FALLBACK_FILE = "fallback.txt"  # in the run folder: which newer archives did not load, and what serves instead


@dataclasses.dataclass(frozen=True)
class TorchServeInstance:
    """Where one TorchServe runs from and listens: its folder, its five ports, whether keys are needed."""

    run_dir: Path
    ports: TorchServePorts = TorchServePorts()
    token_auth: bool = True

    @classmethod
    def on_free_ports(cls, run_dir: Path, token_auth: bool = True) -> TorchServeInstance:
        """An instance on five ports the operating system reports free right now."""
        return cls(Path(run_dir), TorchServePorts(*processes.free_ports(5)), token_auth)

    def _url(self, port: int) -> str:
        return f"http://{config.HOST}:{port}"

    @property
    def inference_url(self) -> str:
        """Base URL of the inference API."""
        return self._url(self.ports.inference)

    @property
    def management_url(self) -> str:
        """Base URL of the management API."""
        return self._url(self.ports.management)

    @property
    def grpc_address(self) -> str:
        """host:port of the gRPC inference API."""
        return f"{config.HOST}:{self.ports.grpc_inference}"

    @property
    def grpc_management_address(self) -> str:
        """host:port of the gRPC management API."""
        return f"{config.HOST}:{self.ports.grpc_management}"

    @property
    def metrics_url(self) -> str:
        """Base URL of the Prometheus metrics API."""
        return self._url(self.ports.metrics)

    @property
    def key_path(self) -> Path:
        """Where TorchServe writes key_file.json when token authorization is on."""
        return self.run_dir / config.KEY_FILE

    @property
    def key_file(self) -> Path | None:
        """TorchServe's key_file.json, or None when token authorization is off."""
        return self.key_path if self.token_auth else None

    @property
    def log_dir(self) -> Path:
        """TorchServe's own log folder (ts_log.log, model_log.log, access_log.log)."""
        return self.run_dir / "logs"

    @property
    def temp_dir(self) -> Path:
        """TorchServe's temporary folder: its pid file and worker sockets."""
        return self.run_dir / "tmp"


def java_executable() -> str:
    """The java TorchServe will run (JAVA_HOME first, as torchserve does); ServerError in one sentence if missing."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not os.access(candidate, os.X_OK):
        raise ServerError(
            "TorchServe needs Java 17 or newer: install a JDK (e.g. openjdk-17-jre-headless) or set JAVA_HOME."
        )
    return candidate


def torchserve_executable(python: str = sys.executable) -> str:
    """The torchserve command beside python (the virtualenv's), else on PATH; the beside path if neither exists.

    It never raises, so that stopping works where the command is missing; `spec`'s prepare checks it before a start.
    """
    beside = Path(python).parent / "torchserve"
    return str(beside) if beside.exists() else shutil.which("torchserve") or str(beside)


def endpoints(
    inference_url: str | None,
    management_url: str | None = None,
    key_file: Path | None = None,
    model_name: str = DEFAULT_MODEL_NAME,
    grpc_address: str | None = None,
    grpc_management_address: str | None = None,
) -> list[Endpoint]:
    """TorchServe's endpoints at these addresses (REST, gRPC, or both); key_file when token authorization is on.

    The management addresses default to TorchServe's own layout: REST management on 8081 of the inference URL's
    host (the gRPC client renews expired keys through it), gRPC management on the gRPC inference port + 1.
    """
    from serving.clients import TorchServeClient, TorchServeGrpcClient

    def default_management_url(host_url: str) -> str:
        return f"{host_url.rsplit(':', 1)[0]}:{TorchServePorts.management}"

    found = []
    if inference_url:
        rest_management_url = management_url or default_management_url(inference_url)
        found.append(
            Endpoint(
                "torchserve-rest",
                NAME,
                "TorchServe",
                "torch",
                "REST",
                inference_url,
                model_name,
                lambda model, timeout: TorchServeClient(inference_url, model, key_file, rest_management_url, timeout),
            )
        )
    if grpc_address:
        token_url = management_url or default_management_url(inference_url or f"http://{grpc_address}")
        found.append(
            Endpoint(
                "torchserve-grpc",
                NAME,
                "TorchServe",
                "torch",
                "gRPC",
                grpc_address,
                model_name,
                lambda model, timeout: TorchServeGrpcClient(
                    grpc_address, model, key_file, grpc_management_address, timeout, token_url=token_url
                ),
            )
        )
    return found


def spec(
    instance: TorchServeInstance,
    model_store: Path,
    model_name: str = DEFAULT_MODEL_NAME,
    batch_size: int | None = None,
    max_batch_delay_ms: int | None = None,
    workers: int | None = None,
    python: str = sys.executable,
    rollout: bool = True,
    poll_seconds: float = rollout_module.DEFAULT_POLL_SECONDS,
) -> ServerSpec:
    """TorchServe serving model_store/<model_name>.mar from instance's folder and ports, REST and gRPC.

    rollout: also roll out each newer <model>-<version>.mar of the store while TorchServe runs (polling every
    poll_seconds); only with token authorization, which guards the model API the roll-out needs. batch_size,
    max_batch_delay_ms and workers override the archives' own settings, for the version loaded at start (a
    model_snapshot in its config.properties: config.write_config) and for every version rolled out (the
    registration's query parameters and a scale request).
    """
    model_store = Path(model_store).resolve()
    run_dir = Path(instance.run_dir).resolve()
    notes = []
    if instance.key_file is not None:  # token authorization on
        notes.append(f"TorchServe token authorization is on; its keys are in {display_path(instance.key_file)}.")
    # The roll-out needs the model API, which without keys would let any local user register an archive: without
    # token authorization both stay off (the launcher says so).
    rollout = rollout and instance.token_auth
    instance = dataclasses.replace(instance, run_dir=run_dir)  # TorchServe runs in its own working folder
    executable = torchserve_executable(python)
    config_path = run_dir / "config.properties"
    ports = instance.ports
    found = endpoints(
        instance.inference_url,
        instance.management_url,
        instance.key_file,
        model_name,
        instance.grpc_address,
        instance.grpc_management_address,
    )
    rest = found[0]
    probe: TorchServeClient | None = None

    def is_ready() -> bool:
        nonlocal probe
        if probe is None:  # the REST endpoint's client, which also reads the workers' states
            from serving.clients import TorchServeClient

            probe = TorchServeClient(
                instance.inference_url, model_name, instance.key_file, instance.management_url, 2.0
            )
        return probe.is_available()

    def prepare() -> None:
        if not (model_store / f"{model_name}.mar").is_file():
            raise ServerError(f"No {model_name}.mar in {model_store}; train one first with `make train-torch`.")
        java_executable()
        if not os.access(executable, os.X_OK):
            raise ServerError("The torchserve command is not installed; run `make setup`.")
        instance.temp_dir.mkdir(parents=True, exist_ok=True)
        instance.log_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / config.KEY_FILE).unlink(missing_ok=True)  # a stale key file would hand clients expired keys
        choice = serving_archive(model_store, model_name, run_dir)
        config.write_config(
            config_path,
            model_store,
            ports,
            model_name,
            instance.token_auth,
            batch_size,
            max_batch_delay_ms,
            workers,
            model_api=rollout,
            archive=choice.archive,
        )

    # --foreground keeps the launcher alive as the JVM's parent: its exit tells that TorchServe died.
    command = [
        executable,
        "--start",
        "--foreground",
        "--ncs",
        "--ts-config",
        str(config_path),
        "--model-store",
        str(model_store),
    ]
    if not instance.token_auth:
        command.append("--disable-token-auth")
    if rollout:
        watcher = [
            python,
            "-m",
            "serving.runtime.torchserve_rollout",
            "--model-store",
            str(model_store),
            "--model-name",
            model_name,
            "--management-url",
            instance.management_url,
            "--poll-seconds",
            f"{poll_seconds:g}",
            "--fallback-file",
            str(run_dir / FALLBACK_FILE),
        ]
        if instance.key_file is not None:
            watcher += ["--key-file", str(instance.key_file)]
        for flag, value in (
            ("--batch-size", batch_size),
            ("--max-batch-delay-ms", max_batch_delay_ms),
            ("--workers", workers),
        ):
            if value is not None:
                watcher += [flag, str(value)]
        command = [*watcher, "--", *command]
    return ServerSpec(
        name=NAME,
        title="TorchServe",
        command=command,
        ports={
            "inference": ports.inference,
            "management": ports.management,
            "metrics": ports.metrics,
            "gRPC inference": ports.grpc_inference,
            "gRPC management": ports.grpc_management,
        },
        is_ready=is_ready,
        endpoints=found,
        examples=_examples(instance, rest, model_name, python),
        notes=notes,
        environment={
            # The pid file goes into the temporary folder: one folder per instance keeps instances apart.
            "TEMP": str(instance.temp_dir),
            "TMPDIR": str(instance.temp_dir),
            "LOG_LOCATION": str(instance.log_dir),
            "METRICS_LOCATION": str(instance.log_dir),
        },
        working_directory=run_dir,  # TorchServe writes key_file.json into its working folder
        stop_command=[executable, "--stop"],
        prepare=prepare,
        needs=("torch-archive",),
        remove_after_stop=(run_dir / config.KEY_FILE,),
    )


def serving_archive(model_store: Path, model_name: str, run_dir: Path) -> config.ArchiveChoice:
    """The archive TorchServe loads at start: the newest that loads (config.choose_archive).

    When newer archives are passed over, it says so on stderr (the launcher's output) and in the run folder's
    FALLBACK_FILE, which the roll-out watcher copies into the server's log at start and `python -m
    serving.torchserve_launch status` prints; the roll-out then logs, once, that it refuses the newer version.
    """
    fallback = Path(run_dir) / FALLBACK_FILE
    fallback.unlink(missing_ok=True)
    choice = config.choose_archive(model_store, model_name)
    if choice.message:
        print(f"TorchServe: {choice.message}", file=sys.stderr, flush=True)
        fallback.write_text(choice.message + "\n")
    return choice


def fallback_message(run_dir: Path) -> str | None:
    """The sentence serving_archive wrote when the newest archive did not load; None when it did."""
    path = Path(run_dir) / FALLBACK_FILE
    return path.read_text().strip() if path.is_file() else None


def _examples(instance: TorchServeInstance, endpoint: Endpoint, model_name: str, python: str) -> list[Example]:
    predict_url = f"{endpoint.address}/predictions/{model_name}"
    models_url = f"{instance.management_url}/models/{model_name}"
    key_file = instance.key_file

    def key_command(kind: str) -> str | None:
        if key_file is None:
            return None
        # Read at call time: TorchServe's keys expire (60 minutes by default) and it rewrites the file.
        return (
            f"{display_path(Path(python))} -c 'import json; "
            f'print(json.load(open("{display_path(key_file)}"))["{kind}"]["key"])\''
        )

    management_key = key_command("management")
    authorization = f'-H "Authorization: Bearer $({management_key})" ' if management_key else ""
    key_flag = f" --key-file {display_path(key_file)}" if key_file is not None else ""
    return [
        Example("TorchServe REST", "REST", predict_url, curl_command(predict_url, key_command("inference"))),
        Example("TorchServe management", "REST", models_url, f"curl -s {authorization}{models_url}"),
        Example(
            "TorchServe client",
            "REST",
            predict_url,
            f"{client_command(python)} torchserve --rest {endpoint.address}{key_flag} --sample 10",
        ),
        Example(
            "TorchServe gRPC",
            "gRPC",
            instance.grpc_address,
            f"{client_command(python)} torchserve --grpc {instance.grpc_address}{key_flag} --sample 10",
        ),
    ]
