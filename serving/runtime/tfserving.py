"""The spec of the TensorFlow Serving-compatible server (`python -m serving.tfserving`): gRPC 8500, REST 8501."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from experiment import library_logs, processes
from serving.runtime.spec import (
    DEFAULT_MODEL_NAME,
    HOST,
    PROJECT_ROOT,
    Endpoint,
    Example,
    ServerSpec,
    client_command,
    curl_command,
)

NAME = "tfserving"
DEFAULT_GRPC_PORT = 8500
DEFAULT_REST_PORT = 8501
TITLE = "TF Serving (compatible)"
# Prometheus metrics on the REST port at /monitoring/prometheus/metrics, as `make serve` runs the server.
MONITORING_CONFIG = PROJECT_ROOT / "serving" / "tfserving" / "monitoring.config"


@dataclasses.dataclass(frozen=True)
class TFServingPorts:
    """gRPC and REST ports (docs/architecture.md); rest=None: gRPC alone, as tensorflow_model_server's default."""

    grpc: int = DEFAULT_GRPC_PORT
    rest: int | None = DEFAULT_REST_PORT

    @classmethod
    def free(cls, rest: bool = True) -> TFServingPorts:
        """Ports the operating system reports free right now."""
        grpc, rest_port = processes.free_ports(2)
        return cls(grpc, rest_port if rest else None)


def endpoints(grpc_address: str | None, rest_url: str | None, model_name: str = DEFAULT_MODEL_NAME) -> list[Endpoint]:
    """The server's endpoints at these addresses (the real TensorFlow Serving has the same two)."""
    from serving.clients import RestClient, TFServingGrpcClient

    found = []
    if grpc_address:
        found.append(
            Endpoint(
                "tf-grpc",
                NAME,
                TITLE,
                "tf",
                "gRPC",
                grpc_address,
                model_name,
                lambda model, timeout: TFServingGrpcClient(grpc_address, model, timeout_s=timeout),
            )
        )
    if rest_url:
        found.append(
            Endpoint(
                "tf-rest",
                NAME,
                TITLE,
                "tf",
                "REST",
                rest_url,
                model_name,
                lambda model, timeout: RestClient(rest_url, model, timeout, "TensorFlow Serving (REST)"),
            )
        )
    return found


def is_serving(grpc_address: str, rest_port: int | None) -> bool:
    """True when the gRPC health service says SERVING (every configured model has a version AVAILABLE) and the
    REST port, when there is one, accepts connections.

    The health service is the server's own "all models loaded"; asking it spares the caller the official stubs'
    import of all of TensorFlow (seconds of CPU, taken from the servers that are starting at the same moment).
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(grpc_address) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        except grpc.RpcError:
            return False
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    return serving and (rest_port is None or processes.port_accepts(rest_port))


def spec(
    ports: TFServingPorts = TFServingPorts(),
    model_name: str = DEFAULT_MODEL_NAME,
    base_path: Path | None = None,
    flags: Sequence[str] = (),
    python: str = sys.executable,
) -> ServerSpec:
    """The server on these ports serving base_path as model_name; flags are more tensorflow_model_server flags.

    Without base_path, flags must name the models (--model_config_file); endpoints then use model_name.
    """
    command = [python, "-m", "serving.tfserving", f"--port={ports.grpc}"]
    if ports.rest is not None:
        command.append(f"--rest_api_port={ports.rest}")
    if base_path is not None:
        command += [f"--model_name={model_name}", f"--model_base_path={base_path}"]
    grpc_address = f"{HOST}:{ports.grpc}"
    rest_url = f"http://{HOST}:{ports.rest}" if ports.rest is not None else None
    try_grpc = f"{client_command(python)} tf --grpc {grpc_address} --sample 10"
    examples = [Example("TF Serving gRPC", "gRPC", grpc_address, try_grpc)]
    if rest_url is not None:
        predict_url = f"{rest_url}/v1/models/{model_name}:predict"
        examples.append(Example("TF Serving REST", "REST", predict_url, curl_command(predict_url)))
    return ServerSpec(
        name=NAME,
        title="TensorFlow Serving-compatible server (serving.tfserving)",
        command=[*command, *flags],
        ports={"gRPC": ports.grpc, **({"REST": ports.rest} if ports.rest is not None else {})},
        is_ready=lambda: is_serving(grpc_address, ports.rest),
        endpoints=endpoints(grpc_address, rest_url, model_name),
        examples=examples,
        environment=library_logs.quiet_environment({}),
        needs=("tf",),
    )
