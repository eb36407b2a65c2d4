"""Batching on/off: the TF ratio's p99 condition, and the TorchServe on/off table in the report."""

from __future__ import annotations

import dataclasses

import pytest

from benchmarks import batching_sizes, labels, ratios
from benchmarks.batching_sizes import SizePoint, crossover
from benchmarks.report import serving
from benchmarks.torchserve_batching import BatchingSetting, TorchServeBatching
from tests.benchmarks.conftest import batching_by_size, load_point


def _point(width: int, off: float, on: float, p99_off: float = 10.0, p99_on: float = 10.0) -> SizePoint:
    return SizePoint(width, (off * 0.98, off, off * 1.02), (on * 0.98, on, on * 1.02), (), (), (p99_off,), (p99_on,))


@pytest.mark.parametrize(
    ("ratios_by_width", "expected"),
    [
        ({64: 0.8, 256: 0.95, 1024: 1.6, 4096: 3.5}, 1024),
        ({64: 1.2, 256: 1.3, 1024: 1.6, 4096: 3.5}, 64),  # wins everywhere: the smallest width measured
        ({64: 0.8, 256: 1.2, 1024: 0.9, 4096: 2.0}, 4096),  # a win below a loss does not count
        ({64: 0.8, 256: 0.9, 1024: 1.0, 4096: 1.04}, None),  # within the noise margin at every width
        ({4096: 2.0, 64: 0.5, 1024: 1.5, 256: 0.7}, 1024),  # the order measured does not matter
    ],
)
def test_crossover_is_the_smallest_width_from_which_batching_wins_at_every_larger_one(ratios_by_width, expected):
    points = [_point(width, 1000.0, 1000.0 * ratio) for width, ratio in ratios_by_width.items()]
    assert crossover(points) == expected


def test_a_width_wins_only_by_more_than_the_margin():
    assert crossover([_point(64, 1000.0, 1000.0 * batching_sizes.BEATS)]) == 64
    assert crossover([_point(64, 1000.0, 1000.0 * batching_sizes.BEATS * 0.999)]) is None
    assert crossover([_point(64, 1000.0, 1010.0)], beats=1.0) == 64


def test_model_sizes_keep_the_digits_shape():
    assert batching_sizes.hidden_sizes(64) == (64, 32)  # the digits model's own layers
    assert batching_sizes.parameter_count(64) == 64 * 64 + 64 + 64 * 32 + 32 + 32 * 10 + 10
    assert batching_sizes.hidden_sizes(4096) == (4096, 2048)


def test_tf_batching_ratio_reads_the_largest_width_and_names_the_crossover():
    met = ratios.tf_batching(batching_by_size())
    assert met.status == "met" and abs(met.measured - 3.5) < 1e-9
    assert "64: 0.80, 256: 0.95, 1024: 1.60, 4096: 3.50" in met.inputs and "crossover: 1024" in met.inputs
    assert "wrk, 16 connections" in met.inputs and "from a first hidden layer of 1024 units up" in met.note


def test_tf_batching_ratio_is_missed_without_a_crossover_a_large_enough_gain_or_with_a_grown_tail():
    measured = batching_by_size()
    no_gain = dataclasses.replace(measured, points=[_point(64, 1000.0, 800.0), _point(4096, 400.0, 480.0)])
    assert ratios.tf_batching(no_gain).status == "missed"  # 1.2 at the largest width: crossover, but below 1.3
    lost = dataclasses.replace(measured, points=[_point(64, 1000.0, 800.0), _point(4096, 400.0, 410.0)])
    missed = ratios.tf_batching(lost)
    assert missed.status == "missed" and "crossover: none" in missed.inputs and "did not pay" in missed.note
    # The tail may grow by one batch timeout (1 ms) + 1 ms where batching pays, not more.
    within = [_point(64, 1000.0, 800.0), _point(4096, 400.0, 1400.0, p99_off=10.0, p99_on=11.9)]
    assert ratios.tf_batching(dataclasses.replace(measured, points=within)).status == "met"
    grown = [_point(64, 1000.0, 800.0, p99_on=50.0), _point(4096, 400.0, 1400.0, p99_off=10.0, p99_on=12.5)]
    tail = ratios.tf_batching(dataclasses.replace(measured, points=grown))
    assert tail.status == "missed" and "At width 4096 the p99 grew" in tail.note  # 64 is below the crossover


def test_tf_batching_not_measured_says_why(comparison):
    comparison.tf_batching = None
    comparison.skipped["tf batching"] = "left out for this test"
    unknown = {ratio.name: ratio for ratio in ratios.compute_ratios(comparison)}[ratios.TF_BATCHING[0]]
    assert unknown.status == "not measured" and "left out for this test" in unknown.note


def test_report_shows_every_width_and_names_the_crossover():
    text = "\n".join(serving.tf_batching_section(batching_by_size()))
    assert f"| {labels.TF_SERVER} | 64, 32 | 6,570 | 3,000 | 2,400 | 0.80 |" in text
    assert f"| {labels.TF_SERVER} | 4096, 2048 | 8,677,386 | 400 | 1,400 | 3.50 |" in text
    assert "Crossover: hidden layers of 1024 and 512 units" in text
    assert "`wrk` sends the one-digit predict body over REST on 16 connections" in text


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
    assert "did not reach TorchServe" not in text
    off_as_on = dataclasses.replace(batching, batching_off=dataclasses.replace(batching.batching_off, batch_size=8))
    shown = "\n".join(serving.torchserve_batching_section(off_as_on))
    assert "**The batching-off instance registered batch size 8, not 1**" in shown


def test_a_section_left_out_says_why(comparison):
    comparison.skipped["torch serving"] = "skipped in this mode"
    text = "\n".join(serving.serving(comparison, {}))
    assert f"### Batching on vs off for {labels.TORCHSERVE}\n\nNot measured: skipped in this mode." in text


def test_torchserve_batching_command_refuses_a_store_without_the_archive_in_one_sentence(tmp_path, capsys):
    from benchmarks import torchserve_batching

    assert torchserve_batching.main(["--model-store", str(tmp_path), "--work-dir", str(tmp_path / "work")]) == 2
    error = capsys.readouterr().err
    assert error == (
        f"python -m benchmarks.torchserve_batching: error: No digits.mar in {tmp_path}; run `make train-torch` first.\n"
    )
    assert not (tmp_path / "work").exists()  # nothing was started
