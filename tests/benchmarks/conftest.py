"""Fixtures for the benchmark tests: a Comparison built from known numbers, and a headless Chromium."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from benchmarks import article, event_files, inference, load, stats, system, training
from benchmarks.batching_sizes import BatchingBySize, SizePoint
from benchmarks.deployment_formats import DeploymentFormats, FormatMeasurement
from benchmarks.labels import ENDPOINTS
from benchmarks.measure import Comparison
from benchmarks.sweep import EndpointSweep, SweepResult


def latency(p50_ms: float, count: int = 100) -> stats.LatencySummary:
    """A summary whose percentiles spread around p50."""
    return stats.summarize_seconds(
        [p50_ms / 1000 * factor for factor in [0.8] * 20 + [1.0] * 60 + [1.5] * 19 + [3.0]][:count]
    )


def load_point(concurrency: int, throughput: float, p50_ms: float, generator_cores: float = 0.3) -> load.LoadResult:
    """A closed-loop point with two reported windows around the given throughput."""
    windows = [stats.WindowMeasurement(throughput * 0.95, p50_ms), stats.WindowMeasurement(throughput * 1.05, p50_ms)]
    latencies = [p50_ms / 1000 * factor for factor in (0.9, 1.0, 1.0, 1.1, 2.0)] * 40
    return load.LoadResult(
        f"point-{concurrency}", concurrency, latencies, 0, throughput, windows, True, 2.0, generator_cores * 2.0
    )


def batching_by_size() -> BatchingBySize:
    """Batching off and on at four widths: on loses at 64 and 256 and wins from 1024 up (the crossover)."""
    rates = {64: (3000.0, 2400.0), 256: (2000.0, 1900.0), 1024: (1700.0, 2720.0), 4096: (400.0, 1400.0)}
    points = [
        SizePoint(width, (off * 0.97, off, off * 1.03), (on * 0.97, on, on * 1.03), (4.0,), (5.0,), (20.0,), (15.0,))
        for width, (off, on) in rates.items()
    ]
    return BatchingBySize("wrk", 16, 3, 2.0, points, workers=2, load_average="1.00 1.00 1.00", date="2026-01-01")


def _training() -> training.TrainingResult:
    runs = {}
    for framework, rate in (("tf", 3000.0), ("torch", 9000.0)):
        runs[framework] = [
            training.PipelineRun(
                framework,
                5.0,
                3.0,
                8.0,
                1.0,
                rate * factor,
                700.0,
                0.95,
                0.2,
                1167,
                32,
                3,
                {"intra_op": 2},
                f"/machine/runs/{framework}/repeat-{index}",
                f"/machine/models/{framework}/1",
            )
            for index, factor in enumerate((0.9, 1.0, 1.1))
        ]
    curve = {
        f"{subdir}/{metric}": [(0, 1.0), (1, 0.6), (2, 0.4)]
        for subdir in ("train", "validation")
        for metric in ("epoch_loss", "epoch_accuracy")
    }
    bare = [
        training.BareRun(
            "tf",
            0,
            {"keras_fit_steps_per_execution_1": {"first_epoch_seconds": 1.0, "steady_samples_per_second": 5000.0}},
            600.0,
        ),
        training.BareRun(
            "torch",
            1,
            {"torch_loop_over_tensor_slices": {"first_epoch_seconds": 0.2, "steady_samples_per_second": 20000.0}},
            500.0,
        ),
    ]
    return training.TrainingResult(
        training.TrainingSettings(repeats=3, epochs=3),
        runs,
        {framework: training.summarise(framework, framework_runs) for framework, framework_runs in runs.items()},
        bare,
        {framework: [curve] * 3 for framework in runs},
    )


def _sweep() -> SweepResult:
    sweeps = []
    for key, (rate, p50) in {
        "tf-grpc": (900.0, 1.0),
        "tf-rest": (500.0, 2.0),
        "flask-rest": (400.0, 2.5),
        "torchserve-rest": (200.0, 5.0),
    }.items():
        points = [
            load_point(clients, rate * clients**0.5, p50 * clients**0.5, 0.9 if clients == 16 else 0.3)
            for clients in (1, 4, 16)
        ]
        sweeps.append(EndpointSweep(ENDPOINTS[key], points))
    return SweepResult(False, {"tfserving": 12.0, "flask": 9.0, "torchserve": 25.0}, sweeps)


def _deployment_formats() -> DeploymentFormats:
    """Five paths with known numbers: ONNX Runtime fastest in-process, Flask REST about the same for every format."""
    rows = [
        FormatMeasurement("savedmodel", 100_000, None, 0.5, {1: latency(0.12), 64: latency(0.2)}),
        FormatMeasurement("eager", None, None, 0.001, {1: latency(0.019), 64: latency(0.05)}),
        FormatMeasurement("torchscript", 40_000, 0.3, 0.02, {1: latency(0.011), 64: latency(0.04)}, latency(1.1)),
        FormatMeasurement("pt2", 1_600_000, 20.0, 0.01, {1: latency(0.042), 64: latency(0.06)}, latency(1.2)),
        FormatMeasurement("onnx", 34_000, 2.4, 0.005, {1: latency(0.0055), 64: latency(0.02)}, latency(1.0)),
    ]
    return DeploymentFormats(rows, 100, 100, "/usr/bin/g++")


@pytest.fixture
def comparison() -> Comparison:
    """A full Comparison from known numbers, with no serving benchmarks beyond the sweep."""
    machine = system.Machine("Test CPU", 2, 2, 1, 8.0, "Linux", "3.11", 0.5)
    latencies = {
        name: {1: latency(0.1 if "torch" in name else 0.5), 64: latency(2.0)} for name in inference.PATH_FRAMEWORKS
    }
    board = event_files.RunInventory(
        {dashboard: [f"{dashboard.lower()}_entry"] for dashboard in event_files.DASHBOARDS}
    )
    return Comparison(
        quick=False,
        command="python -m benchmarks.compare",
        date="2026-01-01T00:00:00+00:00",
        machine=machine,
        versions={"tensorflow": "2.21.0", "torch": "2.13.0"},
        threads={"torch.get_num_threads()": 2},
        training=_training(),
        artifacts=[
            inference.ArtifactSize("TF SavedModel", "digits/1", 100_000, 0.08, 0.03),
            inference.ArtifactSize("TorchScript", "1/model.pt", 40_000, 0.01, 0.004),
        ],
        inference=inference.InferenceResult(latencies, 1e-7, inference.FastPathCheck(11, True, False)),
        snippets=article.TensorSnippets([[6.0]], "float32", True, [[3.0]], "float64"),
        graphs=article.GraphTimings(0.1, 0.001, 1, 3, 3, [1, 1, 1], 0.001, 0.0005, 0.002, True, True),
        debugging=article.Debugging(["'EagerTensor'"], ["'SymbolicTensor'"], ["'Tensor'"], "NaN found", True),
        tensorboard={"tf": board, "torch": board},
        data_parallelism=article.DataParallelism(2, ["/device:CPU:0"], 1, True, 0, True, False, True),
        sweep=_sweep(),
        deployment_formats=_deployment_formats(),
        tf_batching=batching_by_size(),
        skipped={
            "tf serving": "left out for this test",
            "torch serving": "left out for this test",
            "distributed": "left out for this test",
        },
    )


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by selenium; skipped where Debian's chromium and chromium-driver are absent."""
    binary, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (requirements.lock pins it)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


PAGE_PROBLEMS = """
const problems = [];
for (const image of document.images) {
  if (!image.complete || image.naturalWidth === 0) problems.push('image not shown: ' + image.alt);
  if (!image.src.startsWith('data:')) problems.push('image not embedded: ' + image.getAttribute('src'));
}
for (const link of document.querySelectorAll('a[href]')) {
  const target = link.getAttribute('href');
  if (target.startsWith('#') && !document.getElementById(decodeURIComponent(target.slice(1))))
    problems.push('broken anchor: ' + target);
  else if (!target.startsWith('#') && !target.startsWith('data:')) problems.push('link leaves the page: ' + target);
}
return {problems: problems, images: document.images.length, title: document.title,
        tables: document.querySelectorAll('table').length};
"""


def check_page(driver, page: Path) -> dict:
    """Open a page from disk; returns its title, image and table counts and every problem found."""
    driver.get(page.resolve().as_uri())
    return driver.execute_script(PAGE_PROBLEMS)
