"""Every endpoint of the serving stack under the closed-loop load generator: cold start, then a concurrency sweep.

Starts the three servers with `serving.stack.Stack` on free ports over the models this comparison trained, records
each one's seconds until ready, and drives every endpoint (TF gRPC, TF REST, Flask, TorchServe REST) at each
concurrency with one client object per load thread.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from benchmarks import load

START_TIMEOUT_SECONDS = 240.0


def _client_factories(stack: Any, ports: Any) -> dict[str, Callable[[], Any]]:
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


def measure_endpoints(
    models_dir: Path,
    run_dir: Path,
    image: np.ndarray,
    concurrencies: Sequence[int] = (1, 4, 16),
    settings: load.LoadSettings = load.LoadSettings(),
) -> dict[str, Any]:
    """{'cold_start_seconds': {server: s}, 'endpoints': {endpoint: {'concurrency_<n>': LoadResult}}}."""
    from serving.stack import Ports, Stack

    ports = Ports.free()
    stack = Stack(ports=ports, run_dir=Path(run_dir), models_dir=Path(models_dir))
    batch = np.asarray(image, dtype=np.float32)[np.newaxis]  # (1, H, W)
    results: dict[str, Any] = {"endpoints": {}}
    try:
        results["cold_start_seconds"] = stack.start(timeout=START_TIMEOUT_SECONDS, report=lambda line: None, train=False)
        for endpoint, make_client in _client_factories(stack, ports).items():
            clients: list[Any] = []

            def sender_factory(make_client: Callable[[], Any] = make_client) -> Callable[[], Any]:
                client = make_client()
                clients.append(client)
                return lambda: client.predict(batch)

            try:
                results["endpoints"][endpoint] = load.sweep_concurrency(
                    None, concurrencies, settings, label=endpoint, sender_factory=sender_factory
                )
            except Exception as error:  # one endpoint failing must not hide the others
                results["endpoints"][endpoint] = {"error": f"{type(error).__name__}: {error}"[:300]}
            finally:
                for client in clients:
                    close = getattr(client, "close", None)
                    if callable(close):
                        close()
    finally:
        stack.stop(report=lambda line: None)
    return results
