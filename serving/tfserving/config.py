"""tensorflow_model_server's command-line flags, and the model list they (or a --model_config_file) describe."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from experiment.errors import UsageError
from serving.tfserving.batching import BatchingOptions, read_batching_parameters
from serving.tfserving.monitoring import PrometheusSettings, read_monitoring_config
from serving.versions import ModelSource, VersionPolicy

MEBIBYTE = 1024 * 1024
# More processes than this rarely pay on one machine: each holds its own copy of TensorFlow and the models.
MAX_DEFAULT_WORKERS = 4
BATCHING_THREAD_LIMIT = 64


@dataclasses.dataclass(frozen=True)
class TFModelSource(ModelSource):
    """A model of tensorflow_model_server's config, with the two server-wide flags that shape how it is served."""

    warmup: bool = True  # --enable_model_warmup: replay assets.extra/tf_serving_warmup_requests before serving
    allow_unavailable_labels: bool = False  # --allow_version_labels_for_unavailable_models


@dataclasses.dataclass(frozen=True)
class ServerOptions:
    """Everything main() needs, checked: ports, models, polling, batching, limits."""

    bind_address: str
    grpc_port: int
    rest_port: int  # 0: no REST server, as in tensorflow_model_server
    sources: list[ModelSource]
    model_config_file: Path | None
    model_config_file_poll_wait_seconds: float
    poll_wait_seconds: float
    batching: BatchingOptions | None
    rest_timeout_s: float
    rest_threads: int
    grpc_threads: int
    max_request_bytes: int
    shutdown_grace_seconds: float
    workers: int = 1  # server processes sharing the ports (SO_REUSEPORT), each with its own copy of the models
    grpc_socket_path: Path | None = None  # also serve gRPC on this UNIX socket
    grpc_channel_arguments: tuple[tuple[str, str | int], ...] = ()
    monitoring: PrometheusSettings | None = None  # Prometheus text on the REST port, when configured
    intra_op_threads: int = 0  # TensorFlow's threads per op; 0: the cores divided among the workers
    inter_op_threads: int = 0  # TensorFlow's threads running ops side by side; 0: as intra_op_threads
    # Folders a HandleReloadConfigRequest may name base paths under; by default the base paths served at start.
    allowed_model_roots: tuple[Path, ...] = ()
    method_name_check: bool = False  # --enable_signature_method_name_check


def parse_bool(text: str) -> bool:
    """'true'/'false' (and 1/0, yes/no) as tensorflow_model_server accepts them."""
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    """The flags: tensorflow_model_server's names, plus --bind_address, limits and a shutdown grace period."""
    parser = argparse.ArgumentParser(
        prog="python -m serving.tfserving",
        description="A TensorFlow Serving–compatible server (gRPC + REST) for SavedModels under a model base path.",
    )
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500)")
    parser.add_argument(
        "--rest_api_port", type=int, default=0, help="REST port; 0 turns REST off (default 0, as TF Serving)"
    )
    parser.add_argument("--bind_address", default="127.0.0.1", help="address both servers bind (default 127.0.0.1)")
    parser.add_argument("--model_name", default="default", help="name of the single served model (default 'default')")
    parser.add_argument("--model_base_path", type=Path, help="folder whose integer subfolders are SavedModel versions")
    parser.add_argument("--model_config_file", type=Path, help="text-format ModelServerConfig listing several models")
    parser.add_argument(
        "--model_config_file_poll_wait_seconds",
        type=float,
        default=0.0,
        help="re-read --model_config_file this often (0: never)",
    )
    parser.add_argument(
        "--file_system_poll_wait_seconds",
        type=float,
        default=1.0,
        help="scan base paths for new versions this often (0: only at start)",
    )
    parser.add_argument(
        "--enable_batching", type=parse_bool, nargs="?", const=True, default=False, help="merge concurrent requests"
    )
    parser.add_argument(
        "--batching_parameters_file", type=Path, help="text-format BatchingParameters (needs --enable_batching)"
    )
    parser.add_argument(
        "--rest_api_timeout_in_ms", type=int, default=30000, help="REST request timeout (default 30000)"
    )
    parser.add_argument(
        "--rest_api_num_threads", type=int, default=0, help="REST requests run at once per worker (0: auto, see below)"
    )
    parser.add_argument(
        "--grpc_max_threads", type=int, default=0, help="gRPC calls run at once per worker (0: auto, see below)"
    )
    parser.add_argument(
        "--max_request_bytes",
        type=int,
        default=64 * MEBIBYTE,
        help="largest gRPC message or REST body accepted (default 64 MiB)",
    )
    parser.add_argument(
        "--shutdown_grace_seconds", type=float, default=30.0, help="time in-flight requests get after SIGTERM"
    )
    parser.add_argument(
        "--enable_model_warmup",
        type=parse_bool,
        nargs="?",
        const=True,
        default=True,
        help="replay each version's assets.extra/tf_serving_warmup_requests before serving it (default true)",
    )
    parser.add_argument(
        "--allow_version_labels_for_unavailable_models",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="let the model config's version_labels name versions that are not loaded yet (default false)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="server processes sharing both ports (default 0: one per core, at most 4)",
    )
    parser.add_argument(
        "--enable_signature_method_name_check",
        type=parse_bool,
        nargs="?",
        const=True,
        default=False,
        help="refuse Classify/Regress/Predict on a signature whose method_name is not theirs (default false: TF2 "
        "SavedModels write every signature with the predict method name)",
    )
    parser.add_argument("--grpc_socket_path", type=Path, help="also serve gRPC on this UNIX socket")
    parser.add_argument(
        "--grpc_channel_arguments",
        default="",
        help="comma-separated gRPC server arguments, e.g. grpc.max_connection_age_ms=2000",
    )
    parser.add_argument(
        "--allowed_model_roots",
        default="",
        help="comma-separated folders HandleReloadConfigRequest may serve models from (default: the base paths at start)",
    )
    parser.add_argument(
        "--monitoring_config_file", type=Path, help="text-format MonitoringConfig (Prometheus metrics on the REST port)"
    )
    for name, what in (("session", "both pools below"), ("intra_op", "one op"), ("inter_op", "ops side by side")):
        parser.add_argument(
            f"--tensorflow_{name}_parallelism", type=int, default=0, help=f"TensorFlow threads for {what} (0: auto)"
        )
    return parser


def sources_from_config(config: model_server_config_pb2.ModelServerConfig) -> list[ModelSource]:
    """ModelSources from a ModelServerConfig's model_config_list."""
    if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
        raise UsageError(
            "The model config must have a model_config_list with at least one config entry "
            "(only ModelConfigList is currently supported)."
        )
    sources, names = [], set()
    for entry in config.model_config_list.config:
        if not entry.name or not entry.base_path:
            raise UsageError("Every model config entry needs a name and a base_path.")
        if entry.name in names:
            raise UsageError(f"Illegal to list model {entry.name} multiple times in config list.")
        if entry.model_platform and entry.model_platform != "tensorflow":
            raise UsageError(
                f"Model {entry.name!r} has platform {entry.model_platform!r}; only 'tensorflow' is served."
            )
        names.add(entry.name)
        sources.append(
            TFModelSource(
                name=entry.name,
                base_path=_existing_directory(Path(entry.base_path), f"base_path of model {entry.name!r}"),
                policy=_policy(entry),
                labels=dict(entry.version_labels),
            )
        )
    return sources


def check_reload_base_paths(config: model_server_config_pb2.ModelServerConfig, roots: tuple[Path, ...]) -> None:
    """Refuse a reloaded config naming a base path that is not an existing folder under one of roots.

    The refusal is the same sentence whether the path is outside the roots, missing, or a file, so a client cannot
    learn which paths exist on the server.
    """
    if config.WhichOneof("config") != "model_config_list":
        return  # sources_from_config refuses it with its own sentence
    for entry in config.model_config_list.config:
        if entry.base_path and not _is_folder_under(entry.base_path, roots):
            raise UsageError(
                f"The base_path of model {entry.name!r} is not an existing folder under the server's allowed model "
                "roots (--allowed_model_roots); the config was not applied."
            )


def _is_folder_under(base_path: str, roots: tuple[Path, ...]) -> bool:
    try:
        # Symbolic links resolved first, so that neither '..' nor a link inside a root leads out of it.
        resolved = Path(base_path).expanduser().resolve()
        return any(resolved.is_relative_to(root) for root in roots) and resolved.is_dir()
    except (OSError, RuntimeError):  # unreadable, or a symbolic-link loop
        return False


def allowed_roots(text: str, sources: list[ModelSource]) -> tuple[Path, ...]:
    """--allowed_model_roots as resolved folders; empty text means the base paths of sources (those served at start)."""
    if not text.strip():
        return tuple(dict.fromkeys(Path(source.base_path).resolve() for source in sources))
    roots = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        roots.append(_existing_directory(Path(item), "--allowed_model_roots entry"))
    return tuple(dict.fromkeys(roots))


def _policy(entry: model_server_config_pb2.ModelConfig) -> VersionPolicy:
    choice = entry.model_version_policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy("all")
    if choice == "specific":
        versions = frozenset(int(version) for version in entry.model_version_policy.specific.versions)
        if not versions:
            raise UsageError(f"Model {entry.name!r} has a specific version policy with no versions.")
        return VersionPolicy("specific", versions=versions)
    num_versions = entry.model_version_policy.latest.num_versions if choice == "latest" else 1
    return VersionPolicy("latest", num_versions=max(int(num_versions), 1))


def with_server_flags(sources: list[ModelSource], warmup: bool, allow_unavailable_labels: bool) -> list[TFModelSource]:
    """The sources carrying the two flags; at start-up no version is loaded yet, so a label needs the allow flag."""
    flagged = []
    for source in sources:
        if source.labels and not allow_unavailable_labels:
            label, version = next(iter(sorted(source.labels.items())))
            raise UsageError(
                f"Request to assign label to version {version} of model {source.name}, which is not currently available "
                f"for inference (label {label!r}): labels at start-up need --allow_version_labels_for_unavailable_models; "
                "without it, add them once the version is loaded (HandleReloadConfigRequest or a reloaded config file)."
            )
        fields = {field.name: getattr(source, field.name) for field in dataclasses.fields(ModelSource)}
        flagged.append(TFModelSource(**fields, warmup=warmup, allow_unavailable_labels=allow_unavailable_labels))
    return flagged


def read_model_config(path: Path) -> list[ModelSource]:
    """Parse a text-format ModelServerConfig file into ModelSources."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"Cannot read --model_config_file {path}: {error.strerror or error}.") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise UsageError(
            f"Error parsing text-format tensorflow.serving.ModelServerConfig in --model_config_file {path}: {error}."
        ) from None
    return sources_from_config(config)


def _existing_directory(path: Path, what: str) -> Path:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise UsageError(f"The {what}, {path}, is not a directory; train and export a model there first.")
    return path


def _check_port(port: int, flag: str, allow_zero: bool) -> None:
    if not (0 if allow_zero else 1) <= port <= 65535:
        raise UsageError(f"{flag} must be between {0 if allow_zero else 1} and 65535, got {port}.")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_workers() -> int:
    """One server process per core this process may run on, at most MAX_DEFAULT_WORKERS."""
    return max(1, min(available_cores(), MAX_DEFAULT_WORKERS))


def default_threads(workers: int, batching: BatchingOptions | None) -> int:
    """Request threads per worker and protocol: tensorflow_model_server's 4 per core, the cores shared among the
    workers; with batching, enough to gather a full batch (up to BATCHING_THREAD_LIMIT).

    More threads than this buy nothing in Python: requests then mostly wait for the interpreter lock, and switching
    between many waiting threads costs more than it overlaps.
    """
    threads = max(4, 4 * available_cores() // workers)
    return max(threads, min(batching.max_batch_size, BATCHING_THREAD_LIMIT)) if batching is not None else threads


def parse_channel_arguments(text: str) -> tuple[tuple[str, str | int], ...]:
    """`key=value,key=value` as tensorflow_model_server reads it: integer values as integers, others as strings."""
    arguments = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise UsageError(f"--grpc_channel_arguments entries must look like key=value, got {item!r}.")
        try:
            arguments.append((key.strip(), int(value)))
        except ValueError:
            arguments.append((key.strip(), value.strip()))
    return tuple(arguments)


def _threads(arguments: argparse.Namespace) -> tuple[int, int]:
    for flag in ("session", "intra_op", "inter_op"):
        if getattr(arguments, f"tensorflow_{flag}_parallelism") < 0:
            raise UsageError(f"--tensorflow_{flag}_parallelism must be 0 (auto) or more.")
    session = arguments.tensorflow_session_parallelism
    # As in tensorflow_model_server: the intra- and inter-op flags win over the session flag.
    return arguments.tensorflow_intra_op_parallelism or session, arguments.tensorflow_inter_op_parallelism or session


def parse_options(argv: list[str] | None) -> ServerOptions:
    """Parse and check the flags; mistakes raise UsageError with one sentence."""
    arguments = build_parser().parse_args(argv)
    _check_port(arguments.port, "--port", allow_zero=False)
    _check_port(arguments.rest_api_port, "--rest_api_port", allow_zero=True)
    if arguments.rest_api_port == arguments.port:
        raise UsageError("--port and --rest_api_port must differ.")
    if arguments.model_config_file and arguments.model_base_path:
        raise UsageError("Give either --model_config_file or --model_base_path, not both.")
    if arguments.model_config_file:
        sources = read_model_config(arguments.model_config_file)
    elif arguments.model_base_path:
        sources = [
            TFModelSource(arguments.model_name, _existing_directory(arguments.model_base_path, "--model_base_path"))
        ]
    else:
        raise UsageError("Give --model_base_path (with --model_name) or --model_config_file.")
    sources = with_server_flags(
        sources, arguments.enable_model_warmup, arguments.allow_version_labels_for_unavailable_models
    )
    if arguments.batching_parameters_file and not arguments.enable_batching:
        raise UsageError("--batching_parameters_file needs --enable_batching.")
    batching = read_batching_parameters(arguments.batching_parameters_file) if arguments.enable_batching else None
    for flag, value in (
        ("--rest_api_timeout_in_ms", arguments.rest_api_timeout_in_ms),
        ("--max_request_bytes", arguments.max_request_bytes),
    ):
        if value < 1:
            raise UsageError(f"{flag} must be at least 1, got {value}.")
    for flag, value in (
        ("--workers", arguments.workers),
        ("--rest_api_num_threads", arguments.rest_api_num_threads),
        ("--grpc_max_threads", arguments.grpc_max_threads),
    ):
        if value < 0:
            raise UsageError(f"{flag} must be 0 (automatic) or more, got {value}.")
    workers = arguments.workers or default_workers()
    threads = default_threads(workers, batching)
    intra_op_threads, inter_op_threads = _threads(arguments)
    return ServerOptions(
        bind_address=arguments.bind_address,
        grpc_port=arguments.port,
        rest_port=arguments.rest_api_port,
        sources=sources,
        model_config_file=arguments.model_config_file,
        model_config_file_poll_wait_seconds=arguments.model_config_file_poll_wait_seconds,
        poll_wait_seconds=arguments.file_system_poll_wait_seconds,
        batching=batching,
        rest_timeout_s=arguments.rest_api_timeout_in_ms / 1000,
        rest_threads=arguments.rest_api_num_threads or threads,
        grpc_threads=arguments.grpc_max_threads or threads,
        max_request_bytes=arguments.max_request_bytes,
        shutdown_grace_seconds=arguments.shutdown_grace_seconds,
        workers=workers,
        grpc_socket_path=arguments.grpc_socket_path.expanduser().absolute() if arguments.grpc_socket_path else None,
        grpc_channel_arguments=parse_channel_arguments(arguments.grpc_channel_arguments),
        monitoring=read_monitoring_config(arguments.monitoring_config_file)
        if arguments.monitoring_config_file
        else None,
        intra_op_threads=intra_op_threads,
        inter_op_threads=inter_op_threads,
        allowed_model_roots=allowed_roots(arguments.allowed_model_roots, sources),
        method_name_check=arguments.enable_signature_method_name_check,
    )
