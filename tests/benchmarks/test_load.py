"""The closed-loop load generator against in-process callables: windows, stability, errors, generator CPU."""

from __future__ import annotations

import threading
import time

import pytest

from benchmarks import endpoints, load

FAST = load.LoadSettings(warmup_seconds=0.05, window_seconds=0.15, max_windows=4)


def test_a_steady_sleep_is_measured_and_found_stable():
    result = load.run_closed_loop(lambda: time.sleep(0.002), concurrency=2, settings=FAST, label="sleep")
    summary = result.to_dict()
    assert summary["kind"] == load.LOAD_RESULT_KIND
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


def test_load_points_are_found_in_a_plugged_in_result():
    point = load.run_closed_loop(lambda: time.sleep(0.001), 1, FAST, label="fake")
    data = endpoints.normalise({"endpoints": {"fake_grpc": {"concurrency_1": point}}, "clients": 16})
    found = endpoints.load_points(data)
    assert [path for path, _ in found] == [("endpoints", "fake_grpc", "concurrency_1")]
    assert endpoints.flatten_numbers(data)["clients"] == 16


def test_a_missing_module_is_reported_not_raised():
    outcome = endpoints.run_external("serving_tf", {}, module_name="benchmarks.no_such_module")
    assert not outcome.measured
    assert "not available" in outcome.reason


def test_only_accepted_arguments_are_passed():
    def measure(count: int, quick: bool = False) -> dict:
        return {"count": count, "quick": quick}

    assert endpoints.call_with_accepted(measure, {"count": 3, "quick": True, "unrelated": 1}) == {"count": 3, "quick": True}
    with pytest.raises(TypeError):
        endpoints.call_with_accepted(measure, {"quick": True})
