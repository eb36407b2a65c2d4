"""REST endpoints under a load generator that is not ours: `hey` (preferred) or `wrk`, when one is installed.

The Python generator (`benchmarks.load`) holds the GIL while it builds and parses requests, so at 16 clients it
may measure itself as much as the server. `hey` and `wrk` are compiled (Go, C) and cost the server little
CPU. Both are Debian packages (`apt-get install hey wrk`). Each point: a short warm-up run that is discarded,
then `concurrency` connections sending the same body back to back for a fixed time; latencies from hey's
per-request CSV (0.1 ms resolution) or wrk's latency distribution (microseconds); errors are non-2xx answers
and failed requests. The generator's own CPU time comes from the operating system's accounting of its process.
"""

from __future__ import annotations

import dataclasses
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks import stats
from benchmarks.labels import EndpointLabel

GENERATORS = ("hey", "wrk")
WARMUP_REQUESTS = 200
RUN_TIMEOUT_EXTRA_SECONDS = 60.0
WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}
# wrk reads its request from a Lua script; the body and headers come from files this module writes.
WRK_SCRIPT = """wrk.method = "POST"
local file = io.open("{body}", "rb")
wrk.body = file:read("*a")
file:close()
{headers}
"""


@dataclasses.dataclass(frozen=True)
class Target:
    """One REST endpoint to drive: where to POST the body, and any extra headers (TorchServe's key)."""

    endpoint: EndpointLabel
    url: str
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ExternalPoint:
    """One measured run: answered requests, errors, time, latency percentiles and the generator's CPU."""

    concurrency: int
    requests: int  # answered with a 2xx status
    errors: int
    seconds: float
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    generator_cpu_seconds: float

    @property
    def throughput_per_second(self) -> float:
        """Successful requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def generator_cores(self) -> float:
        """CPU seconds the generator used per second of the run."""
        return self.generator_cpu_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclasses.dataclass(frozen=True)
class ExternalEndpoint:
    """One endpoint at every concurrency, or why it could not be measured."""

    endpoint: EndpointLabel
    url: str
    points: list[ExternalPoint]
    error: str | None = None

    def at(self, concurrency: int) -> ExternalPoint | None:
        """The point measured with this many connections."""
        return next((point for point in self.points if point.concurrency == concurrency), None)


@dataclasses.dataclass(frozen=True)
class ExternalSweep:
    """Every REST endpoint under one external generator."""

    generator: str  # "hey" or "wrk"
    seconds_per_point: float
    endpoints: list[ExternalEndpoint]

    def at(self, key: str, concurrency: int) -> ExternalPoint | None:
        """An endpoint's point at a concurrency, or None when it was not measured."""
        found = next((item for item in self.endpoints if item.endpoint.key == key), None)
        return found.at(concurrency) if found else None


def find_generator(preferred: Sequence[str] = GENERATORS) -> str | None:
    """The first of hey and wrk on PATH, or None."""
    return next((name for name in preferred if shutil.which(name)), None)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(command: list[str], timeout_s: float) -> tuple[str, float, float]:
    """Run a generator; its output, wall seconds and CPU seconds. RuntimeError when it fails."""
    cpu_before, started = _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    wall, cpu = time.perf_counter() - started, _children_cpu_seconds() - cpu_before
    if done.returncode != 0:
        raise RuntimeError(
            f"{command[0]} exited with status {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}"
        )
    return done.stdout, wall, cpu


def _hey_command(target: Target, body_path: Path, concurrency: int, extra: list[str]) -> list[str]:
    headers = [flag for name, value in target.headers.items() for flag in ("-H", f"{name}: {value}")]
    return [
        "hey",
        *extra,
        "-c",
        str(concurrency),
        "-m",
        "POST",
        "-T",
        "application/json",
        "-D",
        str(body_path),
        *headers,
        target.url,
    ]


def parse_hey_csv(text: str) -> tuple[list[float], int, float]:
    """hey's `-o csv`: latencies (seconds) of 2xx answers, the number of other answers, and the run's span."""
    latencies, errors, span = [], 0, 0.0
    for line in text.splitlines()[1:]:
        fields = line.split(",")
        if len(fields) < 8:
            continue
        seconds, status, offset = float(fields[0]), int(fields[6]), float(fields[7])
        span = max(span, offset + seconds)
        if 200 <= status < 300:
            latencies.append(seconds)
        else:
            errors += 1
    return latencies, errors, span


def run_hey(target: Target, body_path: Path, concurrency: int, seconds: float) -> ExternalPoint:
    """Warm up, then drive the target with hey for `seconds`."""
    timeout = seconds + RUN_TIMEOUT_EXTRA_SECONDS
    _run(_hey_command(target, body_path, concurrency, ["-n", str(max(WARMUP_REQUESTS, concurrency))]), timeout)
    output, wall, cpu = _run(
        _hey_command(target, body_path, concurrency, ["-z", f"{seconds:g}s", "-o", "csv"]), timeout
    )
    latencies, errors, span = parse_hey_csv(output)
    if not latencies:
        raise RuntimeError(f"hey got no successful answer from {target.url} ({errors} failed).")
    summary = stats.summarize_seconds(latencies)
    # hey leaves out requests that never got an answer; the span is from the first request to the last answer.
    return ExternalPoint(
        concurrency, len(latencies), errors, span or wall, summary.p50_ms, summary.p90_ms, summary.p99_ms, cpu
    )


def _wrk_milliseconds(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * WRK_UNITS_MS[match[2]]


def parse_wrk(text: str) -> dict[str, float]:
    """wrk --latency's summary: requests, seconds, errors and the 50/90/99th percentiles in ms."""
    found: dict[str, float] = {}
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", text)
    if total is None:
        raise ValueError("wrk printed no request count.")
    found["requests"], found["seconds"] = float(total[1]), _wrk_milliseconds(total[2] + total[3]) / 1000
    for percent in (50, 90, 99):
        line = re.search(rf"^\s*{percent}(?:\.0+)?%\s+(\S+)", text, re.M)
        if line is not None:
            found[f"p{percent}_ms"] = _wrk_milliseconds(line[1])
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    found["errors"] = float(non_2xx[1] if non_2xx else 0) + (
        sum(int(value) for value in socket.groups()) if socket else 0
    )
    return found


def run_wrk(target: Target, body_path: Path, concurrency: int, seconds: float) -> ExternalPoint:
    """Warm up, then drive the target with wrk for `seconds` (one thread per connection, at most two)."""
    headers = "\n".join(
        f'wrk.headers["{name}"] = "{value}"'
        for name, value in {"Content-Type": "application/json", **target.headers}.items()
    )
    script = body_path.with_suffix(".lua")
    script.write_text(WRK_SCRIPT.format(body=body_path, headers=headers))
    threads = str(min(concurrency, 2))
    base = ["wrk", "-t", threads, "-c", str(concurrency), "-s", str(script)]
    timeout = seconds + RUN_TIMEOUT_EXTRA_SECONDS
    _run([*base, "-d", "1s", target.url], timeout)
    # wrk takes whole seconds only.
    output, _, cpu = _run([*base, "-d", f"{max(1, round(seconds))}s", "--latency", target.url], timeout)
    found = parse_wrk(output)
    answered = int(found["requests"] - found["errors"])
    return ExternalPoint(
        concurrency,
        answered,
        int(found["errors"]),
        found["seconds"],
        found.get("p50_ms"),
        found.get("p90_ms"),
        found.get("p99_ms"),
        cpu,
    )


def measure(
    targets: Sequence[Target], body: bytes, concurrencies: Sequence[int], seconds: float, generator: str | None = None
) -> ExternalSweep | None:
    """Every target at every concurrency with hey or wrk; None when neither is installed."""
    generator = generator or find_generator()
    if generator is None:
        return None
    run = {"hey": run_hey, "wrk": run_wrk}[generator]
    results = []
    with tempfile.TemporaryDirectory(prefix="http-load-") as scratch:
        body_path = Path(scratch) / "body.json"
        body_path.write_bytes(body)
        for target in targets:
            try:
                points = [run(target, body_path, concurrency, seconds) for concurrency in concurrencies]
                results.append(ExternalEndpoint(target.endpoint, target.url, points))
            except (OSError, RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
                results.append(
                    ExternalEndpoint(target.endpoint, target.url, [], f"{type(error).__name__}: {error}"[:300])
                )
    return ExternalSweep(generator, seconds, results)
