"""Unit tests of the statistics helpers: percentiles, summaries and perf_analyzer's stability rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from benchmarks import stats


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.99, 1.0])
def test_percentile_matches_numpy_linear_interpolation(fraction):
    values = np.random.default_rng(0).exponential(size=101).tolist()
    assert stats.percentile(values, fraction) == pytest.approx(float(np.percentile(values, fraction * 100)))


def test_percentile_of_one_value_and_unsorted_input():
    assert stats.percentile([4.0], 0.99) == 4.0
    assert stats.median([3.0, 1.0, 2.0]) == 2.0
    assert stats.median([1.0, 2.0, 3.0, 4.0]) == 2.5


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_percentile_rejects_fractions_outside_zero_one(bad):
    with pytest.raises(ValueError):
        stats.percentile([1.0], bad)


def test_percentile_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        stats.percentile([], 0.5)


def test_summary_converts_seconds_to_milliseconds():
    summary = stats.summarize_seconds([0.001] * 98 + [0.010, 0.020])
    assert summary.count == 100
    assert summary.p50_ms == pytest.approx(1.0)
    assert summary.p99_ms > summary.p90_ms >= summary.p50_ms
    assert summary.maximum_ms == pytest.approx(20.0)
    assert summary.mean_ms == pytest.approx((0.098 + 0.03) * 10)


@pytest.mark.parametrize(
    ("first", "second", "agree"),
    [(100.0, 100.0, True), (100.0, 91.0, True), (100.0, 89.0, False), (0.0, 0.0, True), (1.0, 0.0, False)],
)
def test_within_tolerance_is_relative_to_the_larger_value(first, second, agree):
    assert stats.within_tolerance(first, second, 0.10) is agree
    assert stats.within_tolerance(second, first, 0.10) is agree


def test_windows_agree_needs_both_throughput_and_latency():
    base = stats.WindowMeasurement(throughput_per_second=1000.0, latency_ms=2.0)
    assert stats.windows_agree(base, stats.WindowMeasurement(950.0, 2.1))
    assert not stats.windows_agree(base, stats.WindowMeasurement(800.0, 2.0))  # throughput moved 20 %
    assert not stats.windows_agree(base, stats.WindowMeasurement(1000.0, 2.5))  # latency moved 20 %


def test_first_stable_pair_finds_the_first_agreeing_consecutive_windows():
    windows = [
        stats.WindowMeasurement(500.0, 4.0),  # warming up
        stats.WindowMeasurement(900.0, 2.2),
        stats.WindowMeasurement(1000.0, 2.0),  # agrees with the one before: index 2
        stats.WindowMeasurement(1010.0, 2.0),
    ]
    assert stats.first_stable_pair(windows) == 2
    assert stats.first_stable_pair(windows[:2]) is None
    assert stats.first_stable_pair([]) is None


def test_all_finite_positive():
    assert stats.all_finite_positive([1.0, 2e-9])
    assert not stats.all_finite_positive([1.0, 0.0])
    assert not stats.all_finite_positive([math.nan])
    assert not stats.all_finite_positive([math.inf])
