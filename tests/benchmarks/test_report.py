"""The report's wording, plots and HTML page, from a Comparison of known numbers (no measurement runs here)."""

from __future__ import annotations

import dataclasses
import re

from benchmarks import compare, floors, labels, plots, ratios, report
from benchmarks.http_load import ExternalEndpoint, ExternalPoint, ExternalSweep
from benchmarks.labels import ENDPOINTS
from benchmarks.report import html as report_html
from benchmarks.report import summary
from benchmarks.sweep import SweepResult
from tests.benchmarks.conftest import check_page


def _render(comparison, folder):
    figures = plots.draw_all(comparison, folder)
    text = report.render(comparison, ratios.compute_ratios(comparison), figures)
    return text, figures


def _section(text: str, heading: str) -> str:
    """From a heading to the next heading of the same or a higher level."""
    start = text.index(heading)
    level = len(heading) - len(heading.lstrip("#"))
    following = re.compile(rf"^#{{1,{level}}} ", re.MULTILINE).search(text, start + len(heading))
    return text[start : following.start() if following else len(text)]


def test_every_section_and_plot_is_there_and_nothing_failed(comparison, tmp_path):
    text, figures = _render(comparison, tmp_path)
    for heading in report.REQUIRED_SECTIONS:
        assert heading in text
    assert set(figures) == {
        "learning_curves",
        "training_throughput",
        "inference_latency",
        "latency_distribution",
        "throughput_vs_concurrency",
    }
    for name in figures:
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
        assert f"]({name}.png)" in text
    assert comparison.failures == {}
    # Pipelines at 3,000 and 9,000 /s against bare loops at 5,000 and 20,000 /s.
    assert "The pipelines run at 60% (TensorFlow) and 45% (PyTorch) of their framework's fastest bare loop" in text


def test_summary_answers_with_five_numbers_on_both_sides(comparison, tmp_path):
    summary = _section(_render(comparison, tmp_path)[0], "## Summary")
    rows = [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]
    assert len(rows) == 5
    assert "PyTorch, by 3×" in rows[0]  # 9000/s against 3000/s
    assert f"via {labels.TF_SERVER} over gRPC" in rows[3]  # the fastest TF endpoint names its server
    assert "generator-bound" in rows[4]  # every 16-client point of the fixture used 0.9 cores
    assert "not measured" not in summary


def test_no_dump_no_machine_path_and_every_serving_row_names_its_server(comparison, tmp_path):
    text, _ = _render(comparison, tmp_path)
    assert "/machine/" not in text and "returned:" not in text
    assert not re.search(r"(?<![\w.`])/(?:home|tmp|work|root|usr)/", text)
    serving = _section(text, "## Serving")
    lines = serving.splitlines()
    rows = [  # every table row but the headers (the line above a "| ---" rule) and the rules
        line
        for line, following in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("| ") and not following.startswith("| ---") and "---" not in line
    ]
    assert rows and all(
        any(name in row for name in (labels.TF_SERVER, labels.FLASK_SERVER, labels.TORCHSERVE)) for row in rows
    )
    servers = _section(text, "## The servers measured")
    assert "stands in for TensorFlow Serving's C++ `tensorflow_model_server`" in servers


def test_a_stack_given_by_environment_is_labelled_as_given(comparison, tmp_path):
    given = [
        dataclasses.replace(item, endpoint=item.endpoint.given_by_environment("127.0.0.1:8500"))
        for item in comparison.sweep.endpoints
    ]
    comparison.sweep = SweepResult(True, {}, given)
    text, _ = _render(comparison, tmp_path)
    servers = _section(text, "## The servers measured")
    assert "given by environment" in servers and "server at 127.0.0.1:8500 (given by TFSERVING_GRPC)" in servers
    assert labels.TF_SERVER not in _section(text, "### Every endpoint under load")


def test_tensorboard_table_counts_every_dashboard_and_names_what_differs(comparison, tmp_path):
    text, _ = _render(comparison, tmp_path)
    board = _section(text, "### TensorBoard for both")
    for dashboard in ("Scalars", "Images", "Graphs", "Histograms", "HParams"):
        assert f"| {dashboard} | 1: {dashboard.lower()}_entry |" in board
    assert "Every dashboard shows the same entries for both frameworks." in board


def test_html_page_embeds_every_plot(comparison, tmp_path):
    text, figures = _render(comparison, tmp_path)
    page = report_html.render(text, tmp_path)
    assert page.count('src="data:image/png;base64,') == len(figures)
    assert '.png"' not in page and "<table>" in page


def test_html_page_renders_in_chromium(comparison, tmp_path, browser):
    text, figures = _render(comparison, tmp_path)
    page = tmp_path / compare.HTML_FILE
    page.write_text(report_html.render(text, tmp_path))
    for name in figures:  # the page must not need the PNG files beside it
        (tmp_path / f"{name}.png").unlink()
    found = check_page(browser, page)
    assert found["problems"] == []
    assert found["images"] == len(figures) and found["tables"] > 10
    assert found["title"].startswith("TensorFlow vs PyTorch")


def test_deployment_formats_section_lists_every_path_and_restates_the_claims(comparison, tmp_path):
    text, _ = _render(comparison, tmp_path)
    section = _section(text, "## Deployment formats")
    for label in (
        "TF SavedModel, session call",
        "PyTorch eager",
        "TorchScript `model.pt` (legacy)",
        "AOTInductor `model.pt2`, called from Python",
        "ONNX `model.onnx` in ONNX Runtime",
    ):
        assert label in section
    torchscript_row = next(line for line in section.splitlines() if "TorchScript `model.pt`" in line)
    assert "| deprecated |" in torchscript_row and "1.1 ms" in torchscript_row
    assert "5.5 µs" in section  # ONNX Runtime's batch-1 p50
    assert "### The article's deployment claims, restated" in section
    assert "archived in August 2025" in section
    assert "fastest here: ONNX" in section
    assert "1 ms with ONNX Runtime and 1.2 ms with AOTInductor" in section


def test_a_missing_deployment_formats_section_says_why(comparison, tmp_path):
    comparison = dataclasses.replace(
        comparison, deployment_formats=None, failures={"deployment formats": "RuntimeError: no compiler"}
    )
    text, _ = _render(comparison, tmp_path)
    assert "RuntimeError: no compiler" in _section(text, "## Deployment formats")


def _wrk_sweep(rates: dict[str, float | None]) -> ExternalSweep:
    """wrk's figures for the three REST endpoints (None: wrk failed on that endpoint): p50 at 1, rate at 16."""
    endpoints = []
    for key, rate in rates.items():
        if rate is None:
            endpoints.append(ExternalEndpoint(ENDPOINTS[key], f"http://{key}", [], "RuntimeError: wrk failed"))
            continue
        points = [
            ExternalPoint(1, int(rate), 0, 1.0, 1000.0 / rate * 2, 3.0, 4.0, 0.1),
            ExternalPoint(16, int(rate * 2), 0, 2.0, 5.0, 8.0, 9.0, 0.4),
        ]
        endpoints.append(ExternalEndpoint(ENDPOINTS[key], f"http://{key}", points))
    return ExternalSweep("wrk", 2.0, endpoints)


def _summary_rows(comparison, folder) -> list[str]:
    summary = _section(_render(comparison, folder)[0], "## Summary")
    return [line for line in summary.splitlines() if line.startswith("| ") and not line.startswith("| ---")][1:]


def test_summary_compares_the_compiled_generators_figures_alone_when_it_measured_every_rest_endpoint(
    comparison, tmp_path
):
    # The Python generator's best at 16 clients is TF gRPC at 3,600/s; wrk puts Flask REST ahead of TF REST.
    comparison.sweep = dataclasses.replace(
        comparison.sweep, external=_wrk_sweep({"tf-rest": 3000.0, "flask-rest": 3260.0, "torchserve-rest": 2500.0})
    )
    rows = _summary_rows(comparison, tmp_path)
    served = rows[4]
    assert f"3,000 /s, via {labels.TF_SERVER} over REST (wrk)" in served
    assert f"3,260 /s, via {labels.FLASK_SERVER} over REST (wrk)" in served
    assert "PyTorch, by 1.1×" in served and "Python generator" not in served and "gRPC" not in served
    assert rows[3].count("(wrk)") == 2 and "Python generator" not in rows[3]
    summary = _section(_render(comparison, tmp_path)[0], "## Summary")
    assert "Both served rows compare `wrk`'s figures alone, over the REST endpoints" in summary


def test_summary_falls_back_to_the_python_generator_alone_and_says_so(comparison, tmp_path):
    # wrk failed on TorchServe: its REST figures cover too few endpoints, so neither framework's row uses them.
    comparison.sweep = dataclasses.replace(
        comparison.sweep, external=_wrk_sweep({"tf-rest": 3000.0, "flask-rest": 3260.0, "torchserve-rest": None})
    )
    rows = _summary_rows(comparison, tmp_path)
    for served in rows[3:]:
        assert served.count("(Python generator") == 2 and "(wrk)" not in served
    assert f"3,600 /s, via {labels.TF_SERVER} over gRPC (Python generator, generator-bound)" in rows[4]
    summary = _section(_render(comparison, tmp_path)[0], "## Summary")
    assert "Both served rows compare figures of the Python generator (`benchmarks.load`) only" in summary


def test_best_endpoint_never_mixes_generators(comparison):
    comparison.sweep = dataclasses.replace(
        comparison.sweep, external=_wrk_sweep({"tf-rest": 3000.0, "flask-rest": 500.0, "torchserve-rest": 2500.0})
    )
    # Under wrk alone TorchServe REST is PyTorch's best (2,500/s); the Python generator's gRPC figure is not a candidate.
    value, where = summary.best_served(comparison, "torch", 16, False, "wrk")
    assert value == 2500.0 and where == f"{labels.TORCHSERVE} over REST (wrk)"
    value, where = summary.best_served(comparison, "tf", 16, False, summary.PYTHON_GENERATOR)
    assert value == 3600.0 and "gRPC (Python generator" in where
    assert summary.served_generator(comparison, 16) == "wrk"


def test_the_floors_section_names_the_machine_and_every_server_against_nginx(comparison, tmp_path):
    comparison.floors = floors.FloorsResult(
        {"date": "2026-01-01 12:00 UTC", "machine": "x86_64, 2 cores", "load": "3.00 2.00 1.00", "answer_bytes": 168},
        {
            "nginx": floors.Measured("nginx", [0.05], [100_000.0]),
            "flask": floors.Measured(
                "flask", [0.3], [9_000.0], model_p50_ms=0.01, path_p50_ms=0.15, memory_at_rest_mb=180.0
            ),
            "tfserving": floors.Measured("tfserving", [0.4], [7_000.0], model_p50_ms=0.1),
        },
        3,
        4.0,
    )
    text = _render(comparison, tmp_path)[0]
    section = _section(text, "### The REST servers against the floor of this machine")
    assert (
        "Measured 2026-01-01 12:00 UTC on x86_64, 2 cores; load average after the last round: 3.00 2.00 1.00."
        in section
    )
    assert "Command: `python -m benchmarks.compare`. Generator: wrk (3 round(s) of 4 s per point" in section
    assert "| nginx answering a fixed body (the floor) | 0.050 | 100,000 |" in section
    assert f"| {labels.FLASK_SERVER}, REST | 0.300 | 9,000 | 0.010 | 0.150 | 180 |" in section
    ratios_section = _section(text, "## Ratios")
    # (0.4 − 0.1) / 0.05 = 6 > 3 for the TF server; Flask's (0.3 − 0.01) / 0.05 = 5.8 > 3 too.
    assert "| TF server REST: (p50, 1 connection − model p50) / nginx p50 (wrk) | ≤ 3 | 6 | MISSED |" in ratios_section
    assert "MISSED: Flask: (p50, 1 connection − model p50) / nginx p50 (wrk); TF server REST" in ratios_section


def test_compare_prints_a_missed_line_per_missed_target_and_fails_only_when_strict(
    comparison, monkeypatch, capsys, tmp_path
):
    monkeypatch.setattr(compare.measure, "measure_everything", lambda settings, command: comparison)
    monkeypatch.setattr(compare, "write_report", lambda comparison, checked, output_dir: 0)
    arguments = ["--quick", "--output-dir", str(tmp_path)]
    assert compare.main(arguments) == 0  # the fixture's Keras / torch training ratio, 0.333, misses ≥ 0.5
    error = capsys.readouterr().err
    assert "MISSED: Keras / torch training samples per second (pipelines, steady state): 0.333 against ≥ 0.5" in error
    assert "1 of 10 targets missed" in error
    assert compare.main([*arguments, "--strict"]) == 3
