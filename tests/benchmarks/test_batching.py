"""Batching on/off: pooling TorchServe's alternating runs, the TF ratio's p99 condition, and the report's table."""

from __future__ import annotations

import time

from benchmarks import compare, load, ratios, serving_torch

FAST = load.LoadSettings(warmup_seconds=0.05, window_seconds=0.15, max_windows=4)


def test_merged_runs_pool_latencies_and_weight_throughput_by_wall_time():
    runs = [load.run_closed_loop(lambda: time.sleep(0.002), concurrency=2, settings=FAST) for _ in range(2)]
    merged = serving_torch.merge_load_results("pooled", runs)
    assert merged.label == "pooled" and merged.concurrency == 2
    assert len(merged.latencies_seconds) == sum(len(run.latencies_seconds) for run in runs)
    assert merged.wall_seconds == sum(run.wall_seconds for run in runs)
    expected = sum(run.throughput_per_second * run.wall_seconds for run in runs) / merged.wall_seconds
    assert abs(merged.throughput_per_second - expected) < 1e-9
    assert merged.errors == 0 and merged.stable == all(run.stable for run in runs)


def _tf_results(**values: float) -> dict:
    return {"external": {"serving_tf": {"measured": True, "data": {"clients": 16, **values}}}}


def test_tf_batching_needs_both_throughput_and_p99_growth():
    base = {"throughput_batching_on_rps": 1400.0, "throughput_batching_off_rps": 1000.0, "batch_timeout_ms": 2.0}
    within = ratios.tf_batching(_tf_results(**base, p99_batching_on_ms=12.5, p99_batching_off_ms=10.0))
    assert within.status == "met" and "+2.500 ms" in within.inputs and "3 ms (met)" in within.inputs
    grown = ratios.tf_batching(_tf_results(**base, p99_batching_on_ms=14.0, p99_batching_off_ms=10.0))
    assert grown.status == "missed" and abs(grown.measured - 1.4) < 1e-9 and "(missed)" in grown.inputs
    assert "tail grew" in grown.note
    unknown = ratios.tf_batching(_tf_results(throughput_batching_on_rps=1400.0, throughput_batching_off_rps=1000.0))
    assert unknown.status == "missed" and "p99 growth: not measured" in unknown.inputs


def _point(throughput: float, p99: float) -> dict:
    return {"kind": load.LOAD_RESULT_KIND, "concurrency": 16, "throughput_per_second": throughput, "p50_ms": p99 / 2,
            "p90_ms": p99 * 0.8, "p99_ms": p99, "errors": 0, "stable": True, "generator_cores": 0.4,
            "generator_bound": False}  # fmt: skip


def test_report_shows_torchserve_batching_table_or_why_not():
    batching = {
        "clients": 16, "rounds": 2, "throughput_ratio": 0.5, "p99_growth_ms": 30.0,
        "batching_off": {"batch_size": 1, "max_batch_delay_ms": 2, "workers": 2, "load": _point(300.0, 20.0)},
        "batching_on": {"batch_size": 8, "max_batch_delay_ms": 2, "workers": 2, "load": _point(150.0, 50.0)},
    }  # fmt: skip
    results = {"external": {"serving_torch": {"measured": True, "data": {"torchserve_batching": batching}}}}
    text = "\n".join(compare._torchserve_batching_lines(results))
    assert "| batching off | 1 | 2 ms | 2 | 16 | 300 /s |" in text
    assert "| batching on | 8 | 2 ms | 2 | 16 | 150 /s |" in text
    assert "p99 grew by 30.0 ms" in text and "Batching lost here" in text
    skipped = {"external": {"serving_torch": {"measured": False, "reason": "skipped in this mode"}}}
    assert "not measured: skipped in this mode" in "\n".join(compare._torchserve_batching_lines(skipped))
