"""Batch-1 latency of the torch servers: Flask under gunicorn and TorchServe, next to in-process TorchScript.

    python -m benchmarks.serving_torch [--requests 2000] [--model-base-path models/torch/digits]

One run measures, one request at a time over a kept-alive connection: Flask's predict route and a Flask route that
does nothing (same server, same body, so it prices HTTP + WSGI + Flask; the two alternate request by request so both
see the same machine load), TorchServe's predict, and the TorchScript call in-process with one thread (as each
gunicorn worker runs it). The target is
Flask predict p50 ≤ 1.5 × (no-op p50 + in-process p50). It also drives TorchServe with 16 concurrent clients with
server-side batching off (batch size 1) and on (config.properties' batch size and delay), two instances alternating
(`measure_torchserve_batching()`). `measure()` returns the numbers for `make compare`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import requests

from benchmarks import load, stats
from experiment import artifacts
from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m benchmarks.serving_torch"
ROOT = Path(__file__).resolve().parent.parent
TARGET_FACTOR = 1.5
NOOP_PATH = "/v1/noop"
BATCHING_CLIENTS = 16
# Off and on alternate in this many rounds, so a change in the machine's other load hits both settings alike.
BATCHING_ROUNDS = 2
# Short windows keep the whole on/off comparison near 20 s of load (plus two TorchServe starts).
BATCHING_LOAD_SETTINGS = load.LoadSettings(warmup_seconds=0.5, window_seconds=1.0, max_windows=4)


def create_benchmark_app():
    """The production app plus POST /v1/noop, which answers {} without reading the model: for this benchmark only."""
    from serving.flask_app import create_app

    app = create_app()

    @app.post(NOOP_PATH)
    def noop():
        return app.response_class("{}", mimetype="application/json")

    return app


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _time_calls(call: Callable[[], Any], count: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


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


def _summary(latencies: Sequence[float]) -> dict[str, float]:
    summary = stats.summarize_seconds(latencies)
    return {"p50_ms": summary.p50_ms, "p99_ms": summary.p99_ms, "mean_ms": summary.mean_ms, "count": summary.count}


def _in_process(model_path: Path, image: np.ndarray, count: int, warmup: int) -> dict[str, float]:
    import torch

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what gunicorn_conf.py gives each worker
    try:
        module = torch.jit.load(str(model_path)).eval()
        tensor = torch.from_numpy(image)

        def call() -> None:
            with torch.inference_mode():
                module(tensor)

        return _summary(_time_calls(call, count, warmup))
    finally:
        torch.set_num_threads(previous_threads)


def _start_gunicorn(base_path: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    environment = {**os.environ, "FLASK_MODEL_BASE_PATH": str(base_path.resolve()), "FLASK_MODEL_POLL_SECONDS": "0"}
    environment.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "serving/gunicorn_conf.py", "-b", f"127.0.0.1:{port}",
             "benchmarks.serving_torch:create_benchmark_app()"],
            cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited early; see {log_path}.")
        try:
            if requests.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.3)
    process.terminate()
    raise RuntimeError(f"gunicorn was not ready within 180 s; see {log_path}.")


def merge_load_results(label: str, runs: Sequence[load.LoadResult]) -> load.LoadResult:
    """One LoadResult from several runs of the same setting: latencies pooled, throughput over their total wall time."""
    if not runs:
        raise ValueError("merge_load_results needs at least one run.")
    wall_seconds = sum(run.wall_seconds for run in runs)
    successes = sum(run.throughput_per_second * run.wall_seconds for run in runs)
    first_errors = [run.first_error for run in runs if run.first_error]
    return load.LoadResult(
        label=label,
        concurrency=runs[0].concurrency,
        latencies_seconds=[latency for run in runs for latency in run.latencies_seconds],
        errors=sum(run.errors for run in runs),
        throughput_per_second=successes / wall_seconds,
        windows=[window for run in runs for window in run.windows],
        stable=all(run.stable for run in runs),
        wall_seconds=wall_seconds,
        generator_cpu_seconds=sum(run.generator_cpu_seconds for run in runs),
        first_error=first_errors[0] if first_errors else None,
    )


def measure_torchserve_batching(
    model_store: Path = Path("models/torch/model-store"),
    work_dir: Path | None = None,
    clients: int = BATCHING_CLIENTS,
    rounds: int = BATCHING_ROUNDS,
    settings: load.LoadSettings = BATCHING_LOAD_SETTINGS,
) -> dict[str, Any]:
    """TorchServe REST throughput and p50/p99 at `clients` concurrent clients, batching off (batch size 1) vs on."""
    from serving.torchserve.launch import TorchServePorts, start_torchserve, stop_torchserve

    if not (Path(model_store) / "digits.mar").is_file():
        raise UsageError(f"No digits.mar in {model_store}; run `make train-torch` first.")
    if clients < 1 or rounds < 1:
        raise UsageError("clients and rounds must be at least 1.")
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="torchserve-batching-"))
    image = np.random.default_rng(0).integers(0, 17, size=(1, 8, 8)).astype(np.float32)  # (1, H, W)
    # Off is batch size 1; on keeps config.properties' batch size and delay (None = the template's values), the
    # setting the project serves with. Workers stay the template's in both, so batching is the only difference.
    batch_sizes = {"batching_off": 1, "batching_on": None}
    started = time.perf_counter()
    handles: dict[str, Any] = {}
    try:
        # Both instances run for the whole comparison so that off and on can alternate; the idle one only waits.
        for setting, batch_size in batch_sizes.items():
            ports = TorchServePorts(*(_free_port() for _ in range(5)))
            handles[setting] = start_torchserve(model_store, ports, work_dir / setting, batch_size=batch_size)
        configured: dict[str, dict[str, Any]] = {}
        for setting, handle in handles.items():
            with handle.client() as client:
                metadata = client.get_metadata()  # what TorchServe registered, not what we asked for
            configured[setting] = {
                "batch_size": metadata.get("batch_size"),
                "max_batch_delay_ms": metadata.get("max_batch_delay_ms"),
                "workers": len(metadata.get("workers", [])),
            }
        runs: dict[str, list[load.LoadResult]] = {setting: [] for setting in handles}
        for _ in range(rounds):
            for setting, handle in handles.items():
                opened: list[Any] = []

                def sender_factory(handle: Any = handle, opened: list[Any] = opened) -> Callable[[], Any]:
                    client = handle.client()  # one client (one kept-alive connection) per load thread
                    opened.append(client)
                    return lambda: client.predict(image)

                try:
                    runs[setting].append(
                        load.run_closed_loop(None, clients, settings, f"torchserve_{setting}", sender_factory=sender_factory)
                    )
                finally:
                    for client in opened:
                        client.close()
    finally:
        for handle in handles.values():
            stop_torchserve(handle)
    results: dict[str, Any] = {"clients": clients, "rounds": rounds}
    for setting, setting_runs in runs.items():
        point = merge_load_results(f"torchserve_{setting}", setting_runs).to_dict()
        point.pop("latencies_ms")  # the raw latencies are for distribution plots, which this comparison does not draw
        results[setting] = {**configured[setting], "load": point}
    off, on = results["batching_off"]["load"], results["batching_on"]["load"]
    results["throughput_ratio"] = on["throughput_per_second"] / off["throughput_per_second"]
    results["p99_growth_ms"] = on["p99_ms"] - off["p99_ms"]
    results["seconds"] = time.perf_counter() - started
    return results


def measure(
    model_base_path: Path = Path("models/torch/digits"),
    model_store: Path = Path("models/torch/model-store"),
    requests_per_endpoint: int = 2000,
    warmup: int = 200,
    include_torchserve: bool = True,
    include_batching: bool = True,
) -> dict[str, Any]:
    """Run the whole benchmark and return its numbers (milliseconds) as a JSON-ready dict."""
    from serving.torchserve.launch import TorchServePorts, start_torchserve, stop_torchserve

    version = artifacts.latest_version(model_base_path)
    if version is None:
        raise UsageError(f"No TorchScript export in {model_base_path}; run `make train-torch` first.")
    if include_torchserve and not (Path(model_store) / "digits.mar").is_file():
        raise UsageError(f"No digits.mar in {model_store}; run `make train-torch` first.")
    image = np.random.default_rng(0).integers(0, 17, size=(1, 8, 8)).astype(np.float32)  # (1, H, W)
    body = json.dumps({"instances": image.tolist()})
    headers = {"Content-Type": "application/json"}
    results: dict[str, Any] = {
        "in_process": _in_process(model_base_path / str(version) / artifacts.TORCHSCRIPT_FILE, image, 5000, 500)
    }

    work_dir = Path(tempfile.mkdtemp(prefix="serving-torch-benchmark-"))
    process, url = _start_gunicorn(Path(model_base_path), work_dir / "gunicorn.log")
    try:
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
            results.update({name: _summary(latencies) for name, latencies in timed.items()})
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)

    if include_torchserve:
        # As configured (server-side batching on) and with batching off: a lone request waits up to the batch
        # delay for company that never comes, so batching off is the tuning for single-request latency.
        for label, batch_size in (("torchserve", None), ("torchserve_unbatched", 1)):
            ports = TorchServePorts(*(_free_port() for _ in range(5)))
            handle = start_torchserve(model_store, ports, work_dir / label, batch_size=batch_size)
            try:
                with handle.client() as client:
                    results[f"{label}_predict"] = _summary(
                        _time_calls(lambda: client.predict(image), requests_per_endpoint, warmup)
                    )
                    results[f"{label}_settings"] = {
                        key: value
                        for key, value in client.get_metadata().items()
                        if key in ("batch_size", "max_batch_delay_ms", "model_version")
                    }
            finally:
                stop_torchserve(handle)
        if include_batching:
            results["torchserve_batching"] = measure_torchserve_batching(model_store, work_dir / "torchserve-batching")

    budget = results["flask_noop"]["p50_ms"] + results["in_process"]["p50_ms"]
    results["target"] = {
        "factor": TARGET_FACTOR,
        "budget_ms": budget,
        "limit_ms": TARGET_FACTOR * budget,
        "ratio": results["flask_predict"]["p50_ms"] / budget,
        "met": results["flask_predict"]["p50_ms"] <= TARGET_FACTOR * budget,
    }
    results["model_version"] = version
    return results


def format_report(results: dict[str, Any]) -> str:
    """The numbers as a small table and the verdict on the target."""
    rows = [
        ("in-process TorchScript (1 thread)", "in_process"),
        ("Flask no-op route (gunicorn)", "flask_noop"),
        ("Flask predict (gunicorn)", "flask_predict"),
        ("TorchServe predict (as configured)", "torchserve_predict"),
        ("TorchServe predict (batching off)", "torchserve_unbatched_predict"),
    ]
    lines = [f"{'batch-1 latency':38} {'p50 ms':>8} {'p99 ms':>8}"]
    for label, key in rows:
        if key in results:
            lines.append(f"{label:38} {results[key]['p50_ms']:8.3f} {results[key]['p99_ms']:8.3f}")
    if "torchserve_settings" in results:
        settings = results["torchserve_settings"]
        lines.append(
            f"(TorchServe as configured: batch size {settings.get('batch_size')}, "
            f"max batch delay {settings.get('max_batch_delay_ms')} ms)"
        )
    if "torchserve_batching" in results:
        lines.append(format_batching(results["torchserve_batching"]))
    target = results["target"]
    verdict = "met" if target["met"] else "NOT met"
    lines.append(
        f"Flask predict p50 / (no-op p50 + in-process p50) = {target['ratio']:.2f} "
        f"(target ≤ {target['factor']}: {verdict}; limit {target['limit_ms']:.3f} ms)"
    )
    return "\n".join(lines)


def format_batching(batching: dict[str, Any]) -> str:
    """measure_torchserve_batching's numbers as a small table with the on/off ratio."""
    lines = [
        f"TorchServe REST, {batching['clients']} concurrent clients ({batching['rounds']} alternating rounds each):",
        f"{'setting':14} {'batch':>5} {'delay ms':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'gen. cores':>10}",
    ]
    for setting in ("batching_off", "batching_on"):
        values = batching[setting]
        point = values["load"]
        lines.append(
            f"{setting:14} {values['batch_size']!s:>5} {values['max_batch_delay_ms']!s:>8} "
            f"{point['throughput_per_second']:8.0f} {point['p50_ms']:8.3f} {point['p99_ms']:8.3f} "
            f"{point['errors']:6d} {point['generator_cores']:10.2f}"
        )
    lines.append(
        f"throughput on / off = {batching['throughput_ratio']:.2f}, p99 growth {batching['p99_growth_ms']:+.3f} ms "
        f"({batching['seconds']:.0f} s including both starts)"
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
            arguments.model_base_path, arguments.model_store, arguments.requests, arguments.warmup,
            include_torchserve=not arguments.no_torchserve, include_batching=not arguments.no_batching,
        )  # fmt: skip
        print(format_report(results))
        if arguments.json:
            arguments.json.parent.mkdir(parents=True, exist_ok=True)
            arguments.json.write_text(json.dumps(results, indent=2) + "\n")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
