"""Every endpoint of the serving stack under the closed-loop load generator: cold start, then a concurrency sweep.

By default the three servers are started on free ports over the models this comparison trained, each one's seconds
until ready are recorded, and every endpoint (TF gRPC, TF REST, Flask, TorchServe REST) is driven at each
concurrency with one client object per load thread. When the stack under test is named by environment (the
variables `tests/integration/conftest.py` accepts, for example a `docker compose up` stack running the real
TensorFlow Serving), those endpoints are measured instead, and labelled as given.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from benchmarks import load
from benchmarks.labels import ENDPOINTS, Endpoint

START_TIMEOUT_SECONDS = 240.0
CONCURRENCIES = (1, 4, 16)
ClientFactory = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class EndpointSweep:
    """One endpoint at every concurrency, or why it could not be measured."""

    endpoint: Endpoint
    points: list[load.LoadResult]
    error: str | None = None

    def at(self, concurrency: int) -> load.LoadResult | None:
        """The point measured with this many clients."""
        return next((point for point in self.points if point.concurrency == concurrency), None)


@dataclasses.dataclass(frozen=True)
class SweepResult:
    """Cold starts (when this run started the servers) and the sweep of every endpoint."""

    given_by_environment: bool
    cold_start_seconds: dict[str, float]
    endpoints: list[EndpointSweep]

    def at(self, key: str, concurrency: int) -> load.LoadResult | None:
        """An endpoint's point at a concurrency, or None when it was not measured."""
        sweep = next((sweep for sweep in self.endpoints if sweep.endpoint.key == key), None)
        return sweep.at(concurrency) if sweep else None


def given_endpoints(environment: Mapping[str, str] = os.environ) -> dict[str, str]:
    """Endpoint key → address for every endpoint the environment names (empty: start the stack here)."""
    return {key: environment[endpoint.variable] for key, endpoint in ENDPOINTS.items() if environment.get(endpoint.variable)}


def _sweep_endpoint(
    endpoint: Endpoint, make_client: ClientFactory, image: np.ndarray, concurrencies: Sequence[int], settings: load.LoadSettings
) -> EndpointSweep:
    batch = np.asarray(image, dtype=np.float32)[np.newaxis]  # (1, H, W)
    try:
        with load.client_per_thread(make_client, lambda client: client.predict(batch)) as sender_factory:
            points = load.sweep_concurrency(None, concurrencies, settings, endpoint.key, sender_factory)
        return EndpointSweep(endpoint, list(points.values()))
    except Exception as error:  # one endpoint failing must not hide the others
        return EndpointSweep(endpoint, [], f"{type(error).__name__}: {error}"[:300])


def _started_stack_clients(stack: Any, ports: Any) -> dict[str, ClientFactory]:
    from serving.client import RestClient, TFServingGrpcClient
    from serving.torchserve.client import TorchServeClient

    host = "127.0.0.1"
    return {
        "tf_grpc": lambda: TFServingGrpcClient(f"{host}:{ports.tf_grpc}"),
        "tf_rest": lambda: RestClient(f"http://{host}:{ports.tf_rest}"),
        "flask_rest": lambda: RestClient(f"http://{host}:{ports.flask}"),
        "torchserve_rest": lambda: TorchServeClient(
            f"http://{host}:{ports.torchserve_inference}",
            key_file=stack.torchserve_key_file,
            management_url=f"http://{host}:{ports.torchserve_management}",
        ),
    }


def _given_clients(addresses: dict[str, str], environment: Mapping[str, str]) -> dict[str, ClientFactory]:
    from serving.client import RestClient, TFServingGrpcClient
    from serving.torchserve.client import TorchServeClient

    management = environment.get("TORCHSERVE_MANAGEMENT_URL")
    key_file = environment.get("TORCHSERVE_KEY_FILE")
    makers: dict[str, Callable[[str], Any]] = {
        "tf_grpc": TFServingGrpcClient,
        "tf_rest": RestClient,
        "flask_rest": RestClient,
        "torchserve_rest": lambda address: TorchServeClient(
            address,
            key_file=Path(key_file) if key_file else None,
            management_url=management or address.rsplit(":", 1)[0] + ":8081",
        ),
    }
    return {key: (lambda key=key, address=address: makers[key](address)) for key, address in addresses.items()}


def measure_endpoints(
    models_dir: Path,
    run_dir: Path,
    image: np.ndarray,
    concurrencies: Sequence[int] = CONCURRENCIES,
    settings: load.LoadSettings = load.LoadSettings(),
    environment: Mapping[str, str] = os.environ,
) -> SweepResult:
    """Sweep the stack the environment names, or start one over models_dir on free ports and sweep it."""
    addresses = given_endpoints(environment)
    if addresses:
        factories = _given_clients(addresses, environment)
        sweeps = [_sweep_endpoint(ENDPOINTS[key].given_by_environment(addresses[key]), factory, image, concurrencies, settings)
                  for key, factory in factories.items()]  # fmt: skip
        return SweepResult(True, {}, sweeps)
    from serving.stack import Ports, Stack

    ports = Ports.free()
    stack = Stack(ports=ports, run_dir=Path(run_dir), models_dir=Path(models_dir))
    try:
        cold = stack.start(timeout=START_TIMEOUT_SECONDS, report=lambda line: None, train=False)
        sweeps = [_sweep_endpoint(ENDPOINTS[key], factory, image, concurrencies, settings)
                  for key, factory in _started_stack_clients(stack, ports).items()]  # fmt: skip
    finally:
        stack.stop(report=lambda line: None)
    return SweepResult(False, cold, sweeps)
