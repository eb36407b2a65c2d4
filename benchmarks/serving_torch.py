"""Batch-1 latency of the torch servers: Flask on uvicorn and TorchServe, next to the model called in process.

    python -m benchmarks.serving_torch [--requests 2000] [--model-base-path models/torch/digits]

One run measures, one request at a time over a kept-alive connection: Flask's predict route and a Flask route that
does nothing (same server, same body, so it prices HTTP + WSGI + Flask; the two alternate request by request so both
see the same machine load), TorchServe's predict, and the model called in process through the app's own loader
(ONNX Runtime, one thread, as each Flask worker runs it). The target is Flask predict p50 ≤ 1.5 × (no-op p50 +
in-process p50). With batching on, it also runs
`benchmarks.torchserve_batching` (16 concurrent clients, TorchServe's server-side batching off against on).
`measure()` returns the numbers for `make compare`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import requests

from benchmarks import stats, torchserve_batching
from experiment import artifacts
from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m benchmarks.serving_torch"
TARGET_FACTOR = 1.5
NOOP_PATH = "/v1/noop"
# Answered before Flask sees the request (benchmarks.floors' front-end floor): the port, its bridge and the drain
# gate, and no framework.
FIXED_ANSWER_PATH = "/v1/fixed-answer"
BENCHMARK_APPLICATION = "benchmarks.serving_torch:create_benchmark_app()"
START_TIMEOUT_SECONDS = 180.0


@dataclasses.dataclass(frozen=True)
class TorchServingResult:
    """Batch-1 latency of Flask (predict and a no-op route) and TorchServe, next to the model called in process."""

    model_version: int
    in_process: stats.LatencySummary  # the model as each Flask worker runs it (ONNX Runtime, one thread)
    flask_noop: stats.LatencySummary
    flask_predict: stats.LatencySummary
    torchserve_predict: stats.LatencySummary | None  # as configured (server-side batching on)
    torchserve_unbatched_predict: stats.LatencySummary | None  # batch size 1
    torchserve_settings: dict[str, Any]  # batch size and delay TorchServe registered, as configured
    batching: torchserve_batching.TorchServeBatching | None

    @property
    def flask_budget_ms(self) -> float:
        """No-op route p50 + in-process p50: what Flask predict would cost with nothing else."""
        return self.flask_noop.p50_ms + self.in_process.p50_ms

    @property
    def flask_ratio(self) -> float:
        """Flask predict p50 over its budget."""
        return self.flask_predict.p50_ms / self.flask_budget_ms


def create_benchmark_app():
    """The production app plus two paths for the benchmarks only: POST /v1/noop, a Flask route that answers {}
    without reading the model, and /v1/fixed-answer, answered {} by a WSGI layer in front of Flask."""
    from serving.flask_app import create_app

    app = create_app()

    @app.post(NOOP_PATH)
    def noop():
        return app.response_class("{}", mimetype="application/json")

    app.wsgi_app = _FixedAnswer(app.wsgi_app)  # the outermost layer of the app's WSGI stack: Flask never runs
    return app


class _FixedAnswer:
    """WSGI: {} for FIXED_ANSWER_PATH (the body read and dropped), everything else to the app."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != FIXED_ANSWER_PATH:
            return self.app(environ, start_response)
        environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", "2")])
        return [b"{}"]


def _time_interleaved(calls: dict[str, Callable[[], Any]], count: int, warmup: int) -> dict[str, list[float]]:
    for _ in range(warmup):
        for call in calls.values():
            call()
    latencies: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(count):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            latencies[name].append(time.perf_counter() - started)
    return latencies


def _in_process(version_dir: Path, image: np.ndarray, count: int, warmup: int) -> stats.LatencySummary:
    """The model call each Flask worker makes, in this process: the app's own loader (ONNX Runtime, one thread)."""
    from serving.flask_app.models import load_version

    model = load_version("digits", version_dir)
    return stats.summarize_seconds(stats.time_calls(lambda: model.predict(image), count, warmup))


def _start_flask(base_path: Path, log_path: Path) -> Any:
    """The benchmark app (production app + no-op route) on a free port, through serving.runtime."""
    from serving import runtime
    from serving.runtime import flask_app

    spec = flask_app.spec(
        runtime.free_port(),
        base_path=Path(base_path).resolve(),
        environment={"FLASK_MODEL_POLL_SECONDS": "0"},
        application=BENCHMARK_APPLICATION,
    )
    return runtime.start(spec, log_path, timeout=START_TIMEOUT_SECONDS)


def measure(
    model_base_path: Path = Path("models/torch/digits"),
    model_store: Path = Path("models/torch/model-store"),
    requests_per_endpoint: int = 2000,
    warmup: int = 200,
    include_torchserve: bool = True,
    include_batching: bool = True,
) -> TorchServingResult:
    """Run the whole benchmark and return its numbers."""
    version = artifacts.latest_version(model_base_path)
    if version is None:
        raise UsageError(f"No torch export in {model_base_path}; run `make train-torch` first.")
    if include_torchserve and not (Path(model_store) / "digits.mar").is_file():
        raise UsageError(f"No digits.mar in {model_store}; run `make train-torch` first.")
    image = np.random.default_rng(0).integers(0, 17, size=(1, 8, 8)).astype(np.float32)  # (1, H, W)
    body = json.dumps({"instances": image.tolist()})
    headers = {"Content-Type": "application/json"}
    in_process = _in_process(model_base_path / str(version), image, 5000, 500)

    work_dir = Path(tempfile.mkdtemp(prefix="serving-torch-benchmark-"))
    with _start_flask(Path(model_base_path), work_dir / "flask.log") as server:
        url = server.spec.endpoint("flask-rest").address
        with requests.Session() as session:

            def caller(path: str) -> Callable[[], None]:
                def call() -> None:
                    response = session.post(url + path, data=body, headers=headers)
                    if response.status_code != 200:
                        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:200]}")

                return call

            # Alternate the two routes request by request, so that both see the same machine load.
            timed = _time_interleaved(
                {"flask_noop": caller(NOOP_PATH), "flask_predict": caller("/v1/models/digits:predict")},
                requests_per_endpoint,
                warmup,
            )
            flask = {name: stats.summarize_seconds(latencies) for name, latencies in timed.items()}

    torchserve: dict[str, stats.LatencySummary] = {}
    settings: dict[str, Any] = {}
    if include_torchserve:
        # As configured (server-side batching on) and with batching off: a lone request waits up to the batch
        # delay for company that never comes, so batching off is the tuning for single-request latency.
        for label, batch_size in (("configured", None), ("unbatched", 1)):
            with torchserve_batching.start_torchserve(model_store, work_dir / label, batch_size) as server:
                client = server.spec.endpoint("torchserve-rest").client()
                try:
                    torchserve[label] = stats.summarize_seconds(
                        stats.time_calls(functools.partial(client.predict, image), requests_per_endpoint, warmup)
                    )
                    if label == "configured":
                        metadata = client.get_metadata()
                        settings = {
                            key: metadata[key] for key in ("batch_size", "max_batch_delay_ms") if key in metadata
                        }
                finally:
                    client.close()
    batching = None
    if include_torchserve and include_batching:
        batching = torchserve_batching.measure_torchserve_batching(model_store, work_dir / "torchserve-batching")
    return TorchServingResult(
        model_version=version,
        in_process=in_process,
        flask_noop=flask["flask_noop"],
        flask_predict=flask["flask_predict"],
        torchserve_predict=torchserve.get("configured"),
        torchserve_unbatched_predict=torchserve.get("unbatched"),
        torchserve_settings=settings,
        batching=batching,
    )


def format_report(result: TorchServingResult) -> str:
    """The numbers as a small table and the verdict on the target."""
    rows = [
        ("in process, ONNX Runtime, 1 thread", result.in_process),
        ("Flask no-op route (uvicorn)", result.flask_noop),
        ("Flask predict (uvicorn)", result.flask_predict),
        ("TorchServe predict (as configured)", result.torchserve_predict),
        ("TorchServe predict (batching off)", result.torchserve_unbatched_predict),
    ]
    lines = [f"{'batch-1 latency':38} {'p50 ms':>8} {'p99 ms':>8}"]
    lines += [f"{label:38} {summary.p50_ms:8.3f} {summary.p99_ms:8.3f}" for label, summary in rows if summary]
    if result.torchserve_settings:
        lines.append(
            f"(TorchServe as configured: batch size {result.torchserve_settings.get('batch_size')}, "
            f"max batch delay {result.torchserve_settings.get('max_batch_delay_ms')} ms)"
        )
    if result.batching:
        lines.append(torchserve_batching.format_batching(result.batching))
    limit = TARGET_FACTOR * result.flask_budget_ms
    verdict = "met" if result.flask_ratio <= TARGET_FACTOR else "NOT met"
    lines.append(
        f"Flask predict p50 / (no-op p50 + in-process p50) = {result.flask_ratio:.2f} "
        f"(target ≤ {TARGET_FACTOR}: {verdict}; limit {limit:.3f} ms)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: run the benchmark, print the table, optionally write the numbers as JSON."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path, default=Path("models/torch/digits"))
    parser.add_argument("--model-store", type=Path, default=Path("models/torch/model-store"))
    parser.add_argument("--requests", type=int, default=2000, help="timed requests per endpoint")
    parser.add_argument("--warmup", type=int, default=200, help="untimed requests first")
    parser.add_argument("--no-torchserve", action="store_true", help="skip TorchServe (no Java)")
    parser.add_argument("--no-batching", action="store_true", help="skip TorchServe's batching on/off comparison")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    arguments = parser.parse_args(argv)

    def body() -> int:
        if arguments.requests < 10 or arguments.warmup < 0:
            raise UsageError("--requests must be at least 10 and --warmup not negative.")
        results = measure(
            arguments.model_base_path,
            arguments.model_store,
            arguments.requests,
            arguments.warmup,
            include_torchserve=not arguments.no_torchserve,
            include_batching=not arguments.no_batching,
        )
        print(format_report(results))
        if arguments.json:
            arguments.json.parent.mkdir(parents=True, exist_ok=True)
            arguments.json.write_text(json.dumps(dataclasses.asdict(results), indent=2) + "\n")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
