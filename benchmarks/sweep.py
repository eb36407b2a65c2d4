"""Every endpoint of the serving stack under the closed-loop load generator: cold start, then a concurrency sweep.

By default the three servers are started through `serving.runtime` on free ports over the models this comparison
trained, each one's seconds until ready are recorded, and every endpoint (TF gRPC, TF REST, Flask, TorchServe REST)
is driven at each concurrency with one client per load thread, made by the endpoint's own runtime spec. When the
stack under test is named by environment (`serving.runtime.external`'s variables, which the integration tests
accept too; for example a `docker compose up` stack running the real TensorFlow Serving), those endpoints are
measured instead, and labelled as given.
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
ClientFactory = Callable[[], Any]  # a new client of one endpoint, as its server's runtime spec makes it


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


def given_endpoints(environment: Mapping[str, str] = os.environ) -> list[Any] | None:
    """The runtime's endpoints the environment names, or None when it names none (start the stack here)."""
    from serving.runtime.external import endpoints_from_environment

    return endpoints_from_environment(environment)


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


def measure_endpoints(
    models_dir: Path,
    run_dir: Path,
    image: np.ndarray,
    concurrencies: Sequence[int] = CONCURRENCIES,
    settings: load.LoadSettings = load.LoadSettings(),
    environment: Mapping[str, str] = os.environ,
) -> SweepResult:
    """Sweep the stack the environment names, or start one over models_dir on free ports and sweep it."""
    given = given_endpoints(environment)
    if given is not None:
        sweeps = [_sweep_endpoint(ENDPOINTS[endpoint.name].given_by_environment(endpoint.address), endpoint.client,
                                  image, concurrencies, settings) for endpoint in given]  # fmt: skip
        return SweepResult(True, {}, sweeps)
    from serving import runtime

    stack = runtime.Stack(ports=runtime.Ports.free(), run_dir=Path(run_dir), models_dir=Path(models_dir))
    try:
        cold = stack.start(timeout=START_TIMEOUT_SECONDS, report=lambda line: None, train=False)
        sweeps = [_sweep_endpoint(ENDPOINTS[endpoint.name], endpoint.client, image, concurrencies, settings)
                  for endpoint in stack.endpoints()]  # fmt: skip
    finally:
        stack.stop(report=lambda line: None)
    return SweepResult(False, cold, sweeps)
