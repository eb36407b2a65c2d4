"""`make demo`: train both models, serve them, query every endpoint, print a side-by-side table, stop.

Run with `python -m serving.demo` (`--no-train` reuses the newest exports).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from experiment.cli import run_main
from experiment.data import load_dataset
from serving.stack import PROJECT_ROOT, Stack

PROG = "python -m serving.demo"
SAMPLE_SIZE = 10
WARM_UP_REQUESTS = 20


def train_both(models_dir: Path) -> None:
    """Run both training entry points as subprocesses (serving never imports pipeline code)."""
    for module, quiet_flag in (("tf_pipeline.train", "--verbose=2"), ("torch_pipeline.train", "--no-progress")):
        print(f"\n== Training: python -m {module}", flush=True)
        completed = subprocess.run(
            [sys.executable, "-m", module, quiet_flag, "--output-dir", str(models_dir)], cwd=PROJECT_ROOT
        )
        if completed.returncode != 0:
            raise SystemExit(completed.returncode)


def _clients(stack: Stack) -> list[tuple[str, str, Callable[[], object]]]:
    from serving.client import RestClient, TFServingGrpcClient
    from serving.torchserve.client import TorchServeClient

    endpoints = stack.endpoints()
    return [
        ("TF Serving (compatible)", "gRPC", lambda: TFServingGrpcClient(endpoints["tf_grpc"], stack.model_name)),
        ("TF Serving (compatible)", "REST", lambda: RestClient(endpoints["tf_rest"], stack.model_name)),
        ("Flask + gunicorn", "REST", lambda: RestClient(endpoints["flask"], stack.model_name)),
        (
            "TorchServe",
            "REST",
            lambda: TorchServeClient(
                endpoints["torchserve"],
                stack.model_name,
                key_file=stack.torchserve_key_file,
                management_url=endpoints["torchserve_management"],
            ),
        ),
    ]


def query_endpoints(stack: Stack, images: np.ndarray, requests: int) -> list[dict[str, object]]:
    """Predict the sample on every endpoint, then time `requests` single-image calls; one row per endpoint."""
    rows = []
    for server, protocol, make_client in _clients(stack):
        client = make_client()
        try:
            _, classes = client.predict(images)
            for index in range(WARM_UP_REQUESTS):
                client.predict(images[index % len(images)][np.newaxis])
            latencies = []
            for index in range(requests):
                started = time.perf_counter()
                client.predict(images[index % len(images)][np.newaxis])  # (1, 8, 8)
                latencies.append((time.perf_counter() - started) * 1000)
        finally:
            client.close()
        rows.append(
            {"server": server, "protocol": protocol, "classes": classes, "p50_ms": statistics.median(latencies)}
        )
    return rows


def format_table(rows: list[dict[str, object]], labels: np.ndarray, requests: int) -> str:
    """The side-by-side table: endpoint, protocol, predicted classes, true labels, p50 latency."""
    header = f"{'endpoint':<24} {'protocol':<8} {'predicted':<{2 * len(labels)}} {'true':<{2 * len(labels)}} p50 (batch 1)"
    lines = [header, "-" * len(header)]
    truth = " ".join(str(label) for label in labels)
    for row in rows:
        predicted = " ".join(str(value) for value in row["classes"])
        lines.append(
            f"{row['server']:<24} {row['protocol']:<8} {predicted:<{2 * len(labels)}} {truth:<{2 * len(labels)}} "
            f"{row['p50_ms']:6.2f} ms"
        )
    lines.append(f"p50 over {requests} sequential single-image requests per endpoint, after {WARM_UP_REQUESTS} warm-up calls.")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--no-train", action="store_true", help="reuse the newest exports instead of training")
    parser.add_argument("--requests", type=int, default=300, help="single-image requests timed per endpoint")
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    arguments = parser.parse_args(argv)

    def body() -> int:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the gRPC client's TensorFlow import is chatty
        if not arguments.no_train:
            train_both(arguments.models_dir)
        stack = Stack(models_dir=arguments.models_dir)
        print("\n== Serving", flush=True)
        stack.start(train=arguments.no_train)
        try:
            test = load_dataset(seed=0).test
            images, labels = test.images[:SAMPLE_SIZE], test.labels[:SAMPLE_SIZE]
            print("\n== Querying every endpoint with the first test images", flush=True)
            rows = query_endpoints(stack, images, arguments.requests)
            print()
            print(format_table(rows, labels, arguments.requests))
        finally:
            print("\n== Stopping", flush=True)
            stack.stop()
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
