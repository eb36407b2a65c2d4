"""Batching on/off: the TF ratio's p99 condition, and the TorchServe on/off table in the report."""

from __future__ import annotations

from benchmarks import labels, ratios
from benchmarks.report import serving
from benchmarks.serving_tf import TFServingResult
from benchmarks.torchserve_batching import BatchingSetting, TorchServeBatching
from tests.benchmarks.conftest import latency, load_point


def _tf_result(p99_on: float, p99_off: float) -> TFServingResult:
    return TFServingResult(
        version=1,
        cpu_count=2,
        clients=16,
        grpc=latency(1.0),
        trivial_grpc=latency(0.5),
        in_process=latency(0.3),
        throughput_batching_off_rps=1000.0,
        throughput_batching_on_rps=1400.0,
        throughput_batching_off_range=(950.0, 1050.0),
        throughput_batching_on_range=(1300.0, 1500.0),
        p50_batching_off_ms=5.0,
        p50_batching_on_ms=6.0,
        p99_batching_off_ms=p99_off,
        p99_batching_on_ms=p99_on,
        batch_timeout_ms=2.0,
    )


def test_tf_batching_needs_both_throughput_and_p99_growth(comparison):
    within = ratios.tf_batching(_tf_result(p99_on=12.5, p99_off=10.0))
    assert within.status == "met" and "+2.500 ms" in within.inputs and "3 ms (met)" in within.inputs
    grown = ratios.tf_batching(_tf_result(p99_on=14.0, p99_off=10.0))
    assert grown.status == "missed" and abs(grown.measured - 1.4) < 1e-9 and "(missed)" in grown.inputs
    assert "tail grew" in grown.note
    unknown = {ratio.name: ratio for ratio in ratios.compute_ratios(comparison)}[ratios.TF_BATCHING[0]]
    assert unknown.status == "not measured" and "left out for this test" in unknown.note


def test_report_shows_torchserve_batching_table_or_why_not():
    batching = TorchServeBatching(
        clients=16,
        rounds=2,
        seconds=30.0,
        batching_off=BatchingSetting(load_point(16, 300.0, 10.0), 1, 2, 2),
        batching_on=BatchingSetting(load_point(16, 150.0, 25.0), 8, 2, 2),
    )
    text = "\n".join(serving.torchserve_batching_section(batching))
    assert f"Two {labels.TORCHSERVE} instances" in text
    assert "| batching off | 1 | 2 ms | 2 | 16 | 10.0 ms |" in text
    assert "| batching on | 8 | 2 ms | 2 | 16 | 25.0 ms |" in text
    assert "300 /s (285–315)" in text and "Throughput on / off: 0.5;" in text and "Batching lost here" in text


def test_a_section_left_out_says_why(comparison):
    comparison.skipped["torch serving"] = "skipped in this mode"
    text = "\n".join(serving.serving(comparison, {}))
    assert f"### Batching on vs off for {labels.TORCHSERVE}\n\nNot measured: skipped in this mode." in text
