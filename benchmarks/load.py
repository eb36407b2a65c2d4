"""A closed-loop load generator: N threads each send one request at a time, measured in windows until stable.

Works with any callable that sends one request (for instance `lambda: client.predict(images)` for every client in
`serving.client`). Warm-up requests are discarded; windows repeat until two consecutive ones agree within 10 % in
both throughput and p50 latency (Triton perf_analyzer's rule); the generator's own CPU time is measured with
`time.process_time()` so a point where the client, not the server, is the bottleneck is flagged.
"""

from __future__ import annotations

import array
import bisect
import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from benchmarks import stats

# A Python client holds the GIL for its serialisation and bookkeeping, so it saturates near one core; above this
# many cores of generator CPU per second of wall time the measured throughput says more about the client.
GENERATOR_BOUND_CORES = 0.8

# Percentiles come from at most this many latencies (a uniform subsample of a very fast endpoint's requests).
WINDOW_SAMPLE_LIMIT = 20_000
REPORT_SAMPLE_LIMIT = 200_000

Sender = Callable[[], Any]


@dataclasses.dataclass(frozen=True)
class LoadSettings:
    """How long to warm up and measure, and when to stop."""

    warmup_seconds: float = 1.0
    window_seconds: float = 2.0
    max_windows: int = 6
    tolerance: float = stats.DEFAULT_STABILITY_TOLERANCE

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.warmup_seconds < 0:
            raise ValueError("window_seconds must be positive and warmup_seconds non-negative.")
        if self.max_windows < 2:
            raise ValueError("max_windows must be at least 2: stability compares two consecutive windows.")


QUICK_SETTINGS = LoadSettings(warmup_seconds=0.2, window_seconds=0.4, max_windows=4)


@dataclasses.dataclass
class LoadResult:
    """One point of a closed-loop measurement: the stable windows' latencies, throughput, errors and client cost."""

    label: str
    concurrency: int
    latencies_seconds: list[float]  # successful requests of the reported (last two) windows, maybe subsampled
    errors: int
    throughput_per_second: float
    windows: list[stats.WindowMeasurement]
    stable: bool
    wall_seconds: float  # of the reported windows
    generator_cpu_seconds: float  # process CPU time during the reported windows
    first_error: str | None = None

    @property
    def latency(self) -> stats.LatencySummary:
        """Percentiles of the reported latencies."""
        return stats.summarize_seconds(self.latencies_seconds)

    @property
    def generator_cores(self) -> float:
        """CPU seconds the generator process used per second of wall time."""
        return self.generator_cpu_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0

    @property
    def generator_bound(self) -> bool:
        """Whether the load generator, not the server, probably limited this point."""
        return self.generator_cores >= GENERATOR_BOUND_CORES

    @property
    def throughput_range(self) -> tuple[float, float]:
        """Lowest and highest throughput of the reported (last two) windows: the spread behind the number."""
        reported = [window.throughput_per_second for window in self.windows[-2:]] or [self.throughput_per_second]
        return min(reported), max(reported)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary without the raw latencies."""
        return {
            "label": self.label,
            "concurrency": self.concurrency,
            "errors": self.errors,
            "first_error": self.first_error,
            "throughput_per_second": self.throughput_per_second,
            "throughput_range": list(self.throughput_range),
            **(self.latency.to_dict() if self.latencies_seconds else {}),
            "stable": self.stable,
            "windows_measured": len(self.windows),
            "wall_seconds": self.wall_seconds,
            "generator_cores": self.generator_cores,
            "generator_bound": self.generator_bound,
        }


class _Worker(threading.Thread):
    """Sends requests back to back, recording each one's finish time, latency and error."""

    def __init__(self, send: Sender, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.send = send
        self.stop = stop
        # Compact arrays (16 bytes a request): a fast endpoint completes hundreds of thousands of requests.
        self.finish_times = array.array("d")
        self.latencies = array.array("d")
        self.errors: dict[int, str] = {}  # request index → error message

    def run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            error = None
            try:
                self.send()
            except Exception as exception:  # noqa: BLE001 (a failed request is counted, never fatal to the measurement)
                error = f"{type(exception).__name__}: {exception}"[:200]
            finished = time.perf_counter()
            if error is not None:
                self.errors[len(self.latencies)] = error
            self.finish_times.append(finished)
            self.latencies.append(finished - started)

    def span(self, start: float, end: float) -> tuple[int, int]:
        """Indices [first, last) of the requests that finished in [start, end); O(log n), finish times only grow."""
        count = min(len(self.finish_times), len(self.latencies))
        first = bisect.bisect_left(self.finish_times, start, 0, count)
        return first, bisect.bisect_left(self.finish_times, end, first, count)

    def records(self, start: float, end: float, stride: int = 1) -> tuple[list[float], list[str]]:
        """Latencies of successful requests (every stride-th) and errors of failed ones finished in [start, end)."""
        first, last = self.span(start, end)
        errors = [message for index, message in list(self.errors.items()) if first <= index < last]
        if not errors:
            return self.latencies[first:last:stride].tolist(), []
        latencies = [self.latencies[index] for index in range(first, last, stride) if index not in self.errors]
        return latencies, errors


def _window_records(
    workers: Sequence[_Worker], start: float, end: float, sample_limit: int
) -> tuple[int, list[float], list[str]]:
    """Number of finished requests, latencies (a uniform subsample beyond sample_limit) and errors in [start, end)."""
    finished = sum(last - first for first, last in (worker.span(start, end) for worker in workers))
    stride = max(1, -(-finished // sample_limit))  # ceiling division
    latencies: list[float] = []
    errors: list[str] = []
    for worker in workers:
        worker_latencies, worker_errors = worker.records(start, end, stride)
        latencies.extend(worker_latencies)
        errors.extend(worker_errors)
    return finished, latencies, errors


def run_closed_loop(
    send: Sender | None,
    concurrency: int,
    settings: LoadSettings = LoadSettings(),
    label: str = "",
    sender_factory: Callable[[], Sender] | None = None,
) -> LoadResult:
    """Drive `concurrency` clients until two consecutive windows agree; report the last two windows together.

    Give `send` (shared by all threads; it must be thread-safe) or `sender_factory` (called once per thread).
    """
    if concurrency <= 0:
        raise ValueError(f"concurrency must be positive, got {concurrency}.")
    if (send is None) == (sender_factory is None):
        raise ValueError("give exactly one of send and sender_factory.")
    stop = threading.Event()
    workers = [_Worker(sender_factory() if sender_factory else send, stop) for _ in range(concurrency)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(settings.warmup_seconds)  # warm-up: everything finished before the first window is discarded
        boundaries = [(time.perf_counter(), time.process_time())]
        windows: list[stats.WindowMeasurement] = []
        stable = False
        while len(windows) < settings.max_windows:
            time.sleep(settings.window_seconds)
            boundaries.append((time.perf_counter(), time.process_time()))
            (start, _), (end, _) = boundaries[-2], boundaries[-1]
            finished, successes, errors = _window_records(workers, start, end, WINDOW_SAMPLE_LIMIT)
            windows.append(
                stats.WindowMeasurement(
                    throughput_per_second=max(0, finished - len(errors)) / (end - start),
                    latency_ms=stats.median(successes) * 1000.0 if successes else 0.0,
                )
            )
            if len(windows) >= 2 and successes and stats.windows_agree(windows[-2], windows[-1], settings.tolerance):
                stable = True
                break
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=30.0)
    (start, cpu_start), (end, cpu_end) = boundaries[-3], boundaries[-1]
    finished, latencies, errors = _window_records(workers, start, end, REPORT_SAMPLE_LIMIT)
    return LoadResult(
        label=label,
        concurrency=concurrency,
        latencies_seconds=latencies,
        errors=len(errors),
        throughput_per_second=(finished - len(errors)) / (end - start),
        windows=windows,
        stable=stable,
        wall_seconds=end - start,
        generator_cpu_seconds=cpu_end - cpu_start,
        first_error=errors[0] if errors else None,
    )


def sweep_concurrency(
    send: Sender | None,
    concurrencies: Sequence[int] = (1, 4, 16),
    settings: LoadSettings = LoadSettings(),
    label: str = "",
    sender_factory: Callable[[], Sender] | None = None,
) -> dict[str, LoadResult]:
    """run_closed_loop at each concurrency, keyed 'concurrency_<n>'."""
    return {
        f"concurrency_{concurrency}": run_closed_loop(send, concurrency, settings, label, sender_factory)
        for concurrency in concurrencies
    }


@contextlib.contextmanager
def client_per_thread(make_client: Callable[[], Any], send: Callable[[Any], Any]) -> Iterator[Callable[[], Sender]]:
    """A sender factory that gives each load thread its own client (its own connection); all closed on exit."""
    clients: list[Any] = []

    def sender_factory() -> Sender:
        client = make_client()
        clients.append(client)
        return lambda: send(client)

    try:
        yield sender_factory
    finally:
        for client in clients:
            close = getattr(client, "close", None)
            if callable(close):
                close()


def merge(label: str, runs: Sequence[LoadResult]) -> LoadResult:
    """One LoadResult from several runs of the same setting: latencies pooled, throughput over their total wall time."""
    if not runs:
        raise ValueError("merge needs at least one run.")
    wall_seconds = sum(run.wall_seconds for run in runs)
    successes = sum(run.throughput_per_second * run.wall_seconds for run in runs)
    first_errors = [run.first_error for run in runs if run.first_error]
    return LoadResult(
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


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
