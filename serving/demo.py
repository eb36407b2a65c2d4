"""`make demo`: train both models, serve them, query every endpoint, print a side-by-side table, stop.

Run with `python -m serving.demo` (`--no-train` reuses the newest exports). Beside a running `make serve` it refuses
before doing any work; `--free-ports` runs it there anyway, on ports the system picks, with its own run folder and
its own models folder, so the running stack never sees its exports.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiment import library_logs
from experiment.cli import run_main
from experiment.data import load_dataset
from experiment.errors import UsageError
from serving.runtime import Ports, Stack
from serving.runtime.spec import PROJECT_ROOT, ServerError
from serving.runtime.stack import DEFAULT_MODELS_DIR

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


def query_endpoints(stack: Stack, images: np.ndarray, requests: int) -> list[dict[str, object]]:
    """Predict the sample on every endpoint, then time `requests` single-image calls; one row per endpoint."""
    rows = []
    for endpoint in stack.endpoints():
        client = endpoint.client()
        try:
            _, classes = client.predict(images)
            served_format = _served_format(client, endpoint.framework)
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
            {
                "server": endpoint.title,
                "protocol": endpoint.protocol,
                "format": served_format,
                "classes": classes,
                "p50_ms": statistics.median(latencies),
            }
        )
    return rows


def _served_format(client: Any, framework: str) -> str:
    """The model format that answered: the server's own word (Flask, TorchServe), SavedModel for TF Serving."""
    try:
        metadata = client.get_metadata()
    except Exception:  # noqa: BLE001 - the column is information; the predictions above are what the demo checks
        metadata = {}
    named = metadata.get("format") if isinstance(metadata, dict) else None
    return str(named) if named else ("SavedModel" if framework == "tf" else "-")


def format_table(rows: list[dict[str, object]], labels: np.ndarray, requests: int) -> str:
    """The side-by-side table: endpoint, protocol, model format, predicted classes, true labels, p50 latency."""
    width = 2 * len(labels)  # one digit and a space per image
    header = f"{'endpoint':<24} {'protocol':<8} {'format':<10} {'predicted':<{width}} {'true':<{width}} p50 (batch 1)"
    lines = [header, "-" * len(header)]
    truth = " ".join(str(label) for label in labels)
    for row in rows:
        predicted = " ".join(str(value) for value in row["classes"])
        lines.append(
            f"{row['server']:<24} {row['protocol']:<8} {row.get('format', '-')!s:<10} {predicted:<{width}} {truth:<{width}} "
            f"{row['p50_ms']:6.2f} ms"
        )
    lines.append(
        f"p50 over {requests} sequential single-image requests per endpoint, after {WARM_UP_REQUESTS} warm-up calls."
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--no-train", action="store_true", help="reuse the newest exports instead of training")
    parser.add_argument("--requests", type=int, default=300, help="single-image requests timed per endpoint")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where to export and serve from (default: models, or a temporary folder with --free-ports)",
    )
    parser.add_argument(
        "--free-ports",
        action="store_true",
        help="serve on ports the system picks, with the servers' state and (unless --models-dir or "
        "--no-train) the models in a temporary folder: runs beside `make serve`",
    )
    arguments = parser.parse_args(argv)
    library_logs.quiet()  # the gRPC client imports TensorFlow

    def body() -> int:
        if not arguments.free_ports:
            stack = Stack(models_dir=arguments.models_dir or DEFAULT_MODELS_DIR)
            refuse_beside_running_stack(stack)
            return train_serve_and_query(stack, arguments)
        with tempfile.TemporaryDirectory(prefix="demo-") as scratch:
            own_models = DEFAULT_MODELS_DIR if arguments.no_train else Path(scratch) / "models"
            stack = Stack(
                ports=Ports.free(), run_dir=Path(scratch) / "run", models_dir=arguments.models_dir or own_models
            )
            return train_serve_and_query(stack, arguments)

    return run_main(PROG, body)


def refuse_beside_running_stack(stack: Stack) -> None:
    """UsageError, before any work, when a stack runs in the demo's run folder or holds one of its ports."""
    running = [status.name for status in Stack.from_run_dir(stack.run_dir).status() if status.running]
    if running:
        raise UsageError(
            f"The servers of `make serve` are running ({', '.join(running)}); stop them with `make stop`, "
            f"or run the demo beside them with `make demo ARGS=--free-ports`."
        )
    try:
        stack.check_ports()
    except ServerError as error:
        raise UsageError(f"{error} (`make demo ARGS=--free-ports` runs the demo on ports the system picks.)") from None


def train_serve_and_query(stack: Stack, arguments: argparse.Namespace) -> int:
    """Train both models into the stack's models folder (unless --no-train), then serve and query them."""
    if not arguments.no_train:
        train_both(stack.models_dir)
    return serve_and_query(stack, arguments.no_train, arguments.requests)


def serve_and_query(stack: Stack, train_missing: bool, requests: int) -> int:
    """Start the stack, print the table of every endpoint's answers and p50, stop the stack."""
    print("\n== Serving", flush=True)
    stack.start(train=train_missing)
    try:
        test = load_dataset(seed=0).test
        images, labels = test.images[:SAMPLE_SIZE], test.labels[:SAMPLE_SIZE]
        print("\n== Querying every endpoint with the first test images", flush=True)
        rows = query_endpoints(stack, images, requests)
        print()
        print(format_table(rows, labels, requests))
    finally:
        print("\n== Stopping", flush=True)
        stack.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
