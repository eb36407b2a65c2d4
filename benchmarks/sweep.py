"""Every endpoint of the serving stack under the closed-loop load generator: cold start, then a concurrency sweep.

By default the three servers are started through `serving.runtime` on free ports over the models this comparison
trained, each one's seconds until ready are recorded, and every endpoint (TF gRPC, TF REST, Flask, TorchServe REST)
is driven at each concurrency with one client per load thread, made by the endpoint's own runtime spec. The REST
endpoints are then driven again by an external generator (`hey` or `wrk`, `benchmarks.http_load`) when one is
installed, so that the Python generator's own cost does not hide a server's. When the stack under test is named by
environment (`serving.runtime.external`'s variables, which the integration tests
accept too; for example a `docker compose up` stack running the real TensorFlow Serving), those endpoints are
measured instead, and labelled as given.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import http_load, load
from benchmarks.labels import ENDPOINTS, EndpointLabel

START_TIMEOUT_SECONDS = 240.0
CONCURRENCIES = (1, 4, 16)
ClientFactory = Callable[[], Any]  # a new client of one endpoint, as its server's runtime spec makes it


@dataclasses.dataclass(frozen=True)
class EndpointSweep:
    """One endpoint at every concurrency, or why it could not be measured."""

    endpoint: EndpointLabel
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
    external: http_load.ExternalSweep | None = None  # None: neither hey nor wrk is installed

    def at(self, key: str, concurrency: int) -> load.LoadResult | None:
        """An endpoint's point at a concurrency, or None when it was not measured."""
        sweep = next((sweep for sweep in self.endpoints if sweep.endpoint.key == key), None)
        return sweep.at(concurrency) if sweep else None


def given_endpoints(environment: Mapping[str, str] = os.environ) -> list[Any] | None:
    """The runtime's endpoints the environment names, or None when it names none (start the stack here)."""
    from serving.runtime.external import endpoints_from_environment

    return endpoints_from_environment(environment)


def _sweep_endpoint(
    endpoint: EndpointLabel,
    make_client: ClientFactory,
    image: np.ndarray,
    concurrencies: Sequence[int],
    settings: load.LoadSettings,
) -> EndpointSweep:
    batch = np.asarray(image, dtype=np.float32)[np.newaxis]  # (1, H, W)
    try:
        with load.client_per_thread(make_client, lambda client: client.predict(batch)) as sender_factory:
            points = load.sweep_concurrency(None, concurrencies, settings, endpoint.key, sender_factory)
        return EndpointSweep(endpoint, list(points.values()))
    except Exception as error:  # noqa: BLE001 (one endpoint failing must not hide the others)
        return EndpointSweep(endpoint, [], f"{type(error).__name__}: {error}"[:300])


def rest_target(endpoint: Any, label: EndpointLabel, key_file: Path | None) -> http_load.Target | None:
    """Where an external generator POSTs a predict body to one of the runtime's REST endpoints (None: not REST)."""
    if endpoint.protocol != "REST":
        return None
    if endpoint.server == "torchserve":
        headers = {}
        if key_file is not None and Path(key_file).is_file():  # TorchServe's token authorization
            headers["Authorization"] = f"Bearer {json.loads(Path(key_file).read_text())['inference']['key']}"
        return http_load.Target(label, f"{endpoint.address}/predictions/{endpoint.model_name}", headers)
    return http_load.Target(label, f"{endpoint.address}/v1/models/{endpoint.model_name}:predict")


def _external_sweep(
    targets: Sequence[http_load.Target | None],
    image: np.ndarray,
    concurrencies: Sequence[int],
    settings: load.LoadSettings,
) -> http_load.ExternalSweep | None:
    body = json.dumps({"instances": [np.asarray(image, dtype=np.float32).tolist()]}).encode()
    # As long as the Python generator's two reported windows.
    return http_load.measure([target for target in targets if target], body, concurrencies, 2 * settings.window_seconds)


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
        shown = {endpoint.name: ENDPOINTS[endpoint.name].given_by_environment(endpoint.address) for endpoint in given}
        sweeps = [
            _sweep_endpoint(shown[endpoint.name], endpoint.client, image, concurrencies, settings) for endpoint in given
        ]
        key_file = environment.get("TORCHSERVE_KEY_FILE")
        targets = [
            rest_target(endpoint, shown[endpoint.name], Path(key_file) if key_file else None) for endpoint in given
        ]
        return SweepResult(True, {}, sweeps, _external_sweep(targets, image, concurrencies, settings))
    from serving import runtime

    stack = runtime.Stack(ports=runtime.Ports.free(), run_dir=Path(run_dir), models_dir=Path(models_dir))
    try:
        cold = stack.start(timeout=START_TIMEOUT_SECONDS, report=lambda line: None, train=False)
        sweeps = [
            _sweep_endpoint(ENDPOINTS[endpoint.name], endpoint.client, image, concurrencies, settings)
            for endpoint in stack.endpoints()
        ]
        targets = [
            rest_target(endpoint, ENDPOINTS[endpoint.name], stack.torchserve_key_file) for endpoint in stack.endpoints()
        ]
        external = _external_sweep(targets, image, concurrencies, settings)
    finally:
        stack.stop(report=lambda line: None)
    return SweepResult(False, cold, sweeps, external)
