"""Summary statistics for timings: percentiles, medians and the window-stability rule of Triton's perf_analyzer."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence

# Triton's perf_analyzer calls a measurement stable when consecutive windows agree within 10 %.
DEFAULT_STABILITY_TOLERANCE = 0.10


def percentile(values: Sequence[float], fraction: float) -> float:
    """The value below which `fraction` (0..1) of `values` lie, by linear interpolation between order statistics."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    ordered = sorted(float(value) for value in values)
    if not ordered:
        raise ValueError("percentile of an empty sequence is undefined.")
    position = fraction * (len(ordered) - 1)
    lower = math.floor(position)
    upper = math.ceil(position)
    weight = position - lower
    return ordered[lower] * (1.0 - weight) + ordered[upper] * weight


def median(values: Sequence[float]) -> float:
    """The 50th percentile."""
    return percentile(values, 0.5)


@dataclasses.dataclass(frozen=True)
class LatencySummary:
    """Percentiles of a set of latencies, in milliseconds."""

    count: int
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    minimum_ms: float
    maximum_ms: float

    def to_dict(self) -> dict[str, float]:
        """A JSON-ready dictionary."""
        return dataclasses.asdict(self)


def time_calls(call: Callable[[], object], count: int, warmup: int) -> list[float]:
    """Seconds each of `count` calls took, after `warmup` untimed calls."""
    for _ in range(warmup):
        call()
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def summarize_seconds(latencies_seconds: Sequence[float]) -> LatencySummary:
    """Summarise latencies measured in seconds as milliseconds."""
    milliseconds = [value * 1000.0 for value in latencies_seconds]
    if not milliseconds:
        raise ValueError("cannot summarise an empty set of latencies.")
    return LatencySummary(
        count=len(milliseconds),
        mean_ms=sum(milliseconds) / len(milliseconds),
        p50_ms=percentile(milliseconds, 0.50),
        p90_ms=percentile(milliseconds, 0.90),
        p99_ms=percentile(milliseconds, 0.99),
        minimum_ms=min(milliseconds),
        maximum_ms=max(milliseconds),
    )


def relative_difference(first: float, second: float) -> float:
    """|first - second| relative to the larger magnitude; 0 when both are 0."""
    scale = max(abs(first), abs(second))
    if scale == 0.0:
        return 0.0
    return abs(first - second) / scale


def within_tolerance(first: float, second: float, tolerance: float = DEFAULT_STABILITY_TOLERANCE) -> bool:
    """Whether two measurements agree within `tolerance` (a fraction of the larger one)."""
    return relative_difference(first, second) <= tolerance


@dataclasses.dataclass(frozen=True)
class WindowMeasurement:
    """What one measurement window saw: requests per second and a latency percentile (ms)."""

    throughput_per_second: float
    latency_ms: float


def windows_agree(
    previous: WindowMeasurement, current: WindowMeasurement, tolerance: float = DEFAULT_STABILITY_TOLERANCE
) -> bool:
    """perf_analyzer's rule: both throughput and latency of consecutive windows agree within tolerance."""
    return within_tolerance(
        previous.throughput_per_second, current.throughput_per_second, tolerance
    ) and within_tolerance(previous.latency_ms, current.latency_ms, tolerance)


def first_stable_pair(
    windows: Sequence[WindowMeasurement], tolerance: float = DEFAULT_STABILITY_TOLERANCE
) -> int | None:
    """Index of the first window that agrees with the one before it, or None when no consecutive pair agrees."""
    for index in range(1, len(windows)):
        if windows_agree(windows[index - 1], windows[index], tolerance):
            return index
    return None


def all_finite_positive(values: Iterable[float]) -> bool:
    """Whether every value is a finite number greater than zero."""
    return all(math.isfinite(value) and value > 0 for value in values)
