"""`python -m benchmarks.compare --quick` end to end: sections, plots, the HTML page and that every number is sane."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import compare
from benchmarks import report as report_module
from tests.benchmarks.conftest import check_page

ROOT = Path(__file__).resolve().parents[2]
# A table cell that is only a number, maybe with a unit: "3.2 ms", "1,024 /s", "0.95".
NUMBER_CELL = re.compile(r"^[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?(?: ?(?:ms|s|KiB|MiB|GiB|/s|%))?$")
ZERO_ALLOWED_COLUMNS = ("errors",)


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    """One quick comparison into a temporary folder."""
    output = tmp_path_factory.mktemp("compare")
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.compare",
            "--quick",
            "--output-dir",
            str(output),
            "--runs-dir",
            str(output / "runs"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output, completed.stdout


def _tables(markdown: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, lines = [], markdown.splitlines()
    index = 0
    while index < len(lines):
        if lines[index].startswith("| ") and index + 1 < len(lines) and lines[index + 1].startswith("| ---"):
            headers = [cell.strip() for cell in lines[index].strip("|").split(" | ")]
            rows = []
            index += 2
            while index < len(lines) and lines[index].startswith("| "):
                rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", lines[index].strip().strip("|"))])
                index += 1
            tables.append((headers, rows))
        else:
            index += 1
    return tables


@pytest.mark.slow
def test_quick_report_has_every_section_and_plot(quick_report):
    output, stdout = quick_report
    report = (output / compare.REPORT_FILE).read_text()
    for section in report_module.REQUIRED_SECTIONS:
        assert section in report, f"missing {section}"
    for plot in ("learning_curves.png", "inference_latency.png", "training_throughput.png"):
        assert (output / plot).stat().st_size > 1000
        assert f"]({plot})" in report
    assert "| Keras / torch training samples per second" in stdout  # the ratio table is printed
    for needle in ("CPU", "memory", "tensorflow", "torch", "torch.get_num_threads()", "Generated"):
        assert needle in report
    assert "[[6.0, 8.0, 16.0], [9.0, 12.0, 24.0], [27.0, 36.0, 72.0]]" in report  # tf.multiply broadcast to 3x3
    assert "[[3.0, 6.0, 8.0], [9.0, 18.0, 24.0], [18.0, 36.0, 48.0]]" in report  # torch.mul likewise
    assert "EagerTensor" in report and "SymbolicTensor" in report  # pdb inside the Keras layer, both modes
    assert str(output) not in report and str(ROOT) not in report  # no machine paths, pdb's frames included
    assert "| HParams | " in report and "_hparams_/" not in report


@pytest.mark.slow
def test_quick_report_page_renders_in_chromium(quick_report, browser):
    output, _ = quick_report
    found = check_page(browser, output / compare.HTML_FILE)
    assert found["problems"] == []
    assert found["images"] == 3 and found["tables"] > 10


@pytest.mark.slow
def test_every_number_in_the_report_is_finite_and_positive(quick_report):
    output, _ = quick_report
    report = (output / compare.REPORT_FILE).read_text()
    assert not re.search(r"\b(nan|inf)\b", report)  # how report.number() shows a non-finite value
    checked = 0
    for headers, rows in _tables(report):
        for row in rows:
            for header, cell in zip(headers, row, strict=True):
                if not NUMBER_CELL.match(cell):
                    continue
                value = float(re.match(r"[-+]?[\d,]*\.?\d+(?:e[-+]?\d+)?", cell).group().replace(",", ""))
                assert math.isfinite(value)
                if header not in ZERO_ALLOWED_COLUMNS:
                    assert value > 0, f"{header} = {cell!r} in {row}"
                checked += 1
    assert checked > 40


@pytest.mark.slow
def test_json_results_match_the_report(quick_report):
    output, _ = quick_report
    results = json.loads((output / compare.DATA_FILE).read_text())
    assert results["failures"] == {} and results["quick"] is True
    ratios = {item["name"]: item for item in results["ratios"]}
    keras_vs_torch = ratios["Keras / torch training samples per second (pipelines, steady state)"]
    assert keras_vs_torch["measured"] > 0 and keras_vs_torch["status"] in ("met", "missed")
    for item in results["ratios"]:
        if item["measured"] is None:
            assert item["note"].startswith("not measured")
    for framework in ("tf", "torch"):
        summary = results["training"]["pipelines"][framework]
        assert 0 < summary["test_accuracy"] <= 1
        assert summary["peak_rss_mib"] > 50
        assert len(results["training"]["curves"][framework][0]["validation/epoch_loss"]) == summary["epochs"]
    assert set(results["skipped"]) == {"sweep", "floors", "tf serving", "tf batching", "torch serving", "distributed"}
