"""The closed-loop load generator against in-process callables: windows, stability, errors, generator CPU."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from benchmarks import load

FAST = load.LoadSettings(warmup_seconds=0.05, window_seconds=0.15, max_windows=4)


def test_a_steady_sleep_is_measured_and_found_stable():
    result = load.run_closed_loop(lambda: time.sleep(0.002), concurrency=2, settings=FAST, label="sleep")
    summary = result.to_dict()
    assert "latencies_ms" not in summary  # the JSON summary leaves the raw latencies out
    assert result.errors == 0
    assert 2.0 <= summary["p50_ms"] < 20.0
    assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"]
    # Two clients each finishing a request every ~2 ms: between 100 and 1000 requests/s.
    assert 100 < result.throughput_per_second < 1000
    assert len(result.windows) >= 2
    assert not result.generator_bound  # sleeping clients use almost no CPU


def test_failed_requests_are_counted_not_raised():
    calls = iter(range(10**9))
    lock = threading.Lock()

    def flaky() -> None:
        with lock:
            number = next(calls)
        time.sleep(0.001)
        if number % 2:
            raise ConnectionError("refused")

    result = load.run_closed_loop(flaky, concurrency=2, settings=FAST)
    assert result.errors > 0
    assert result.first_error == "ConnectionError: refused"
    assert result.latencies_seconds  # the successful half is still measured


def test_a_busy_client_is_flagged_as_the_bottleneck():
    def spin() -> None:
        deadline = time.perf_counter() + 0.001
        while time.perf_counter() < deadline:
            pass

    busy = load.run_closed_loop(spin, concurrency=1, settings=FAST)
    idle = load.run_closed_loop(lambda: time.sleep(0.001), concurrency=1, settings=FAST)
    # The machine may be shared, so no absolute figure: a spinning client costs far more CPU than a sleeping one.
    assert busy.generator_cores > 3 * idle.generator_cores
    assert busy.generator_bound == (busy.generator_cores >= load.GENERATOR_BOUND_CORES)
    assert not idle.generator_bound


def test_sender_factory_gives_each_thread_its_own_client():
    made = []

    def factory():
        made.append(object())
        return lambda: time.sleep(0.001)

    points = load.sweep_concurrency(None, (1, 3), FAST, sender_factory=factory)
    assert list(points) == ["concurrency_1", "concurrency_3"]
    assert len(made) == 4


@pytest.mark.parametrize("kwargs", [{"concurrency": 0}, {"concurrency": 1, "send": None}])
def test_bad_arguments_are_refused(kwargs):
    arguments = {"send": lambda: None, **kwargs}
    with pytest.raises(ValueError):
        load.run_closed_loop(arguments.pop("send"), settings=FAST, **arguments)


def test_merged_runs_pool_latencies_and_weight_throughput_by_wall_time():
    runs = [load.run_closed_loop(lambda: time.sleep(0.002), concurrency=2, settings=FAST) for _ in range(2)]
    merged = load.merge("pooled", runs)
    assert merged.label == "pooled" and merged.concurrency == 2
    assert len(merged.latencies_seconds) == sum(len(run.latencies_seconds) for run in runs)
    assert merged.wall_seconds == sum(run.wall_seconds for run in runs)
    expected = sum(run.throughput_per_second * run.wall_seconds for run in runs) / merged.wall_seconds
    assert abs(merged.throughput_per_second - expected) < 1e-9
    assert merged.errors == 0 and merged.stable == all(run.stable for run in runs)
    with pytest.raises(ValueError):
        load.merge("nothing", [])


def test_throughput_range_spans_the_reported_windows():
    result = load.run_closed_loop(lambda: time.sleep(0.002), concurrency=2, settings=FAST)
    low, high = result.throughput_range
    reported = [window.throughput_per_second for window in result.windows[-2:]]
    assert (low, high) == (min(reported), max(reported)) and low <= high


def test_a_stack_given_by_environment_is_swept_and_labelled_not_started(tmp_path):
    from benchmarks import sweep
    from experiment.processes import free_port

    address = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request fails, none is lost
    result = sweep.measure_endpoints(
        tmp_path, tmp_path, np.zeros((8, 8), np.float32), (1,), FAST, {"FLASK_URL": address}
    )
    assert result.given_by_environment and result.cold_start_seconds == {}
    [endpoint] = result.endpoints
    assert endpoint.endpoint.server == f"server at {address} (given by FLASK_URL)"
    assert endpoint.at(1).errors > 0 and not endpoint.at(1).latencies_seconds
