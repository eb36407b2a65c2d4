"""Prometheus metrics as tensorflow_model_server exports them: --monitoring_config_file, the series, their text.

The series carry the real server's names (`:tensorflow:serving:request_count{model_name,status}`,
`:tensorflow:serving:request_latency{model_name,API,entrypoint}` in microseconds, with its buckets) plus
`tfserving_model_version_loaded{model_name,pid}`, the highest version each server process serves. Every process
keeps its values in files under PROMETHEUS_MULTIPROC_DIR (prometheus_client's multiprocess mode), so whichever
process answers the metrics path reports the sum over all of them. That variable must be set before
prometheus_client is first imported, which is why it is imported inside ServerMetrics only.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory, text_format

from experiment.errors import UsageError
from serving.tfserving.interceptors import Behaviour, UnaryMethodInterceptor

DEFAULT_PATH = "/monitoring/prometheus/metrics"  # tensorflow_model_server's PrometheusExporter::kPrometheusPath
MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
REQUEST_COUNT = ":tensorflow:serving:request_count"
REQUEST_LATENCY = ":tensorflow:serving:request_latency"
VERSION_LOADED = "tfserving_model_version_loaded"
# The real server's latency buckets: Buckets::Exponential(10, 1.8, 33), in microseconds (10 µs to about 20 minutes),
# with the six significant digits it prints them with.
LATENCY_BUCKETS_MICROSECONDS = tuple(float(f"{10 * 1.8**power:.6g}") for power in range(33))
# gRPC methods the real server counts, and the name it gives each in the API label.
COUNTED_GRPC_METHODS = {
    "/tensorflow.serving.PredictionService/Predict": "Predict",
    "/tensorflow.serving.PredictionService/Classify": "Classify",
    "/tensorflow.serving.PredictionService/Regress": "Regress",
}
# The monitoring_config.proto of tensorflow_serving (the pip package does not ship it), as a FileDescriptorProto.
_MONITORING_PROTO = {
    "name": "tensorflow_serving/config/monitoring_config.proto",
    "package": "tensorflow.serving",
    "syntax": "proto3",
    "messageType": [
        {
            "name": "PrometheusConfig",
            "field": [
                {"name": "enable", "number": 1, "label": "LABEL_OPTIONAL", "type": "TYPE_BOOL"},
                {"name": "path", "number": 2, "label": "LABEL_OPTIONAL", "type": "TYPE_STRING"},
            ],
        },
        {
            "name": "MonitoringConfig",
            "field": [
                {
                    "name": "prometheus_config",
                    "number": 1,
                    "label": "LABEL_OPTIONAL",
                    "type": "TYPE_MESSAGE",
                    "typeName": ".tensorflow.serving.PrometheusConfig",
                }
            ],
        },
    ],
}


@dataclasses.dataclass(frozen=True)
class PrometheusSettings:
    """Where the REST port answers with Prometheus text."""

    path: str = DEFAULT_PATH


def monitoring_config_class() -> type:
    """tensorflow.serving.MonitoringConfig, built from its descriptor in a pool of its own."""
    pool = descriptor_pool.DescriptorPool()
    pool.Add(json_format.ParseDict(_MONITORING_PROTO, descriptor_pb2.FileDescriptorProto()))
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))


def read_monitoring_config(path: Path) -> PrometheusSettings | None:
    """--monitoring_config_file: the Prometheus settings, or None when prometheus_config is not enabled."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"Cannot read --monitoring_config_file {path}: {error.strerror or error}.") from None
    config = monitoring_config_class()()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as error:
        raise UsageError(
            f"--monitoring_config_file {path} is not a valid text-format MonitoringConfig: {error}."
        ) from None
    if not config.prometheus_config.enable:
        return None
    metrics_path = config.prometheus_config.path or DEFAULT_PATH
    if not metrics_path.startswith("/"):
        raise UsageError(f"The prometheus_config path must start with '/', got {metrics_path!r}.")
    return PrometheusSettings(metrics_path)


class ServerMetrics:
    """This process's series, written to the shared multiprocess folder; exposition() reads every process's."""

    def __init__(self, directory: Path) -> None:
        if os.environ.get(MULTIPROCESS_VARIABLE) != str(directory):
            raise RuntimeError(f"{MULTIPROCESS_VARIABLE} must be {directory} before prometheus_client is imported.")
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.directory = directory
        registry = CollectorRegistry()  # values live in the files; this registry only keeps the objects apart
        self.requests = Counter(
            REQUEST_COUNT, "The total number of requests.", ["model_name", "status"], registry=registry
        )
        self.latency = Histogram(
            REQUEST_LATENCY,
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ["model_name", "API", "entrypoint"],
            buckets=LATENCY_BUCKETS_MICROSECONDS,
            registry=registry,
        )
        self.version = Gauge(
            VERSION_LOADED,
            "Highest version of the model this server process serves (0 when none is loaded).",
            ["model_name"],
            registry=registry,
            multiprocess_mode="liveall",
        )

    def record(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        """Count one request; its latency too when it succeeded (as the real server does)."""
        self.requests.labels(model_name, status).inc()
        if status == "OK":
            self.latency.labels(model_name, api, entrypoint).observe(seconds * 1e6)

    def set_versions(self, versions: dict[str, int]) -> None:
        """The highest version loaded per model (0 for a model with none)."""
        for model_name, version in versions.items():
            self.version.labels(model_name).set(version)

    def exposition(self) -> bytes:
        """Every process's series in tensorflow_model_server's text layout (counters without a _total suffix)."""
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.directory))
        return render(registry.collect()).encode()


def forget_process(directory: Path, pid: int) -> None:
    """Drop a finished process's live gauges (its counters keep counting in the totals)."""
    for path in Path(directory).glob(f"gauge_live*_{pid}.db"):
        path.unlink(missing_ok=True)


def render(families: Iterable[Any]) -> str:
    """Metric families as the real server prints them: a TYPE line, then one line per sample."""
    lines = []
    for family in sorted(families, key=lambda family: family.name):
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            if sample.name.endswith(("_created", "_gsum", "_gcount")):
                continue
            name = family.name if family.type == "counter" else sample.name
            labels = ",".join(f'{key}="{_escape(value)}"' for key, value in sample.labels.items())
            value = int(sample.value) if float(sample.value).is_integer() else sample.value
            lines.append(f"{name}{{{labels}}} {value}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsInterceptor(UnaryMethodInterceptor):
    """Counts Predict, Classify and Regress calls and times the successful ones, labelled as the real server does."""

    def __init__(self, metrics: ServerMetrics) -> None:
        super().__init__()
        self.metrics = metrics

    def wrap(self, method: str, behaviour: Behaviour) -> Behaviour | None:
        """The behaviour, counted, for the methods the real server counts."""
        api = COUNTED_GRPC_METHODS.get(method)
        if api is None:
            return None
        metrics = self.metrics

        def counted(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            status = "UNKNOWN"
            try:
                response = behaviour(request, context)
                status = "OK"
                return response
            except Exception:
                code = context.code()  # set by context.abort() before it raised
                status = code.name if code is not None else "UNKNOWN"
                raise
            finally:
                metrics.record(request.model_spec.name, api, "GRPC", status, time.perf_counter() - started)

        return counted
