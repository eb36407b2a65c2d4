"""PNG plots for the comparison report, drawn with matplotlib's non-interactive backend.

One colour per framework on every plot (the Okabe–Ito orange and blue, which stay distinct under the common
colour-vision deficiencies); every plot has a title, axis units, a legend, and the spread behind its numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from benchmarks import inference as inference_module
from benchmarks.labels import FRAMEWORK_NAMES

if TYPE_CHECKING:
    from benchmarks.inference import InferenceResult
    from benchmarks.measure import Comparison
    from benchmarks.sweep import SweepResult
    from benchmarks.training import TrainingResult

FRAMEWORK_COLORS = {"tf": "#E69F00", "torch": "#0072B2"}
# Endpoints of one framework share its colour and differ in marker and line style.
ENDPOINT_STYLES = {
    "tf-grpc": ("o", "-"),
    "tf-rest": ("s", "--"),
    "flask-rest": ("^", "-"),
    "torchserve-rest": ("D", "--"),
    "torchserve-grpc": ("v", ":"),
}
DPI = 100


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _finish(figure: Any, title: str, path: Path, bottom: float = 0.0) -> Path:
    """Title, tight layout (leaving `bottom` of the height for a figure legend), save, close."""
    figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, bottom, 1, 1))
    figure.savefig(path, dpi=DPI)
    _pyplot().close(figure)
    return path


def _log_scale(axes: Any) -> None:
    """A logarithmic y axis labelled with plain numbers (0.1, 1, 10), not powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axes.set_yscale("log")
    axes.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(NullFormatter())


def _framework_legend(axes: Any, **options: Any) -> None:
    """A legend of the framework colours."""
    from matplotlib.patches import Patch

    handles = [Patch(color=FRAMEWORK_COLORS[name], label=FRAMEWORK_NAMES[name]) for name in FRAMEWORK_COLORS]
    axes.legend(handles=handles, **options)


def learning_curves(training: TrainingResult, path: Path) -> Path:
    """Loss and accuracy per epoch, train (solid) and validation (dashed): median over repeats, min–max shaded."""
    import numpy as np

    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for framework, repeats in training.curves.items():
        for panel, metric in zip(axes, ("epoch_loss", "epoch_accuracy"), strict=True):
            for subdir, style in (("train", "-"), ("validation", "--")):
                series = [dict(curves.get(f"{subdir}/{metric}", [])) for curves in repeats]
                epochs = sorted(set.intersection(*(set(points) for points in series))) if series else []
                if not epochs:
                    continue
                values = np.array([[points[epoch] for epoch in epochs] for points in series])  # (repeats, epochs)
                x = [epoch + 1 for epoch in epochs]
                color = FRAMEWORK_COLORS[framework]
                panel.plot(
                    x, np.median(values, axis=0), style, color=color, label=f"{FRAMEWORK_NAMES[framework]}, {subdir}"
                )
                if len(values) > 1:
                    panel.fill_between(x, values.min(axis=0), values.max(axis=0), color=color, alpha=0.2, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    for panel, (metric, unit) in zip(
        axes, (("loss", "cross-entropy, nats"), ("accuracy", "fraction correct")), strict=True
    ):
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
        panel.set_xlabel("epoch")
        panel.set_ylabel(f"{metric} ({unit})")
        panel.set_title(f"{metric} per epoch", fontsize=9)
        panel.legend(fontsize=8)
    repeats = max((len(runs) for runs in training.curves.values()), default=1)
    return _finish(
        figure, f"Learning curves from the TensorBoard event files (median of {repeats} repeat(s), range shaded)", path
    )


def training_throughput(training: TrainingResult, path: Path) -> Path:
    """Steady-state samples/s of each pipeline (min–max of repeats) and of each bare loop."""
    pyplot = _pyplot()
    bars: list[tuple[str, float, str, tuple[float, float] | None]] = []
    for framework, summary in training.pipelines.items():
        if summary.steady_samples_per_second is not None:
            bars.append(
                (
                    f"{FRAMEWORK_NAMES[framework]}\npipeline",
                    summary.steady_samples_per_second,
                    framework,
                    summary.steady_samples_per_second_range,
                )
            )
    for run in training.bare:
        for loop, rate in run.loops.items():
            if "steady_samples_per_second" in rate:
                threads = "default threads" if run.threads == 0 else f"{run.threads} thread"
                bars.append(
                    (
                        f"bare: {loop.replace('_', ' ')}\n({threads})",
                        rate["steady_samples_per_second"],
                        run.framework,
                        None,
                    )
                )
    figure, axes = pyplot.subplots(figsize=(max(6.5, 1.25 * len(bars)), 4.6))
    for index, (_label, value, framework, spread) in enumerate(bars):
        axes.bar(index, value, color=FRAMEWORK_COLORS[framework], edgecolor="black", linewidth=0.5)
        if spread:
            axes.errorbar(
                index, value, yerr=[[value - spread[0]], [spread[1] - value]], fmt="none", ecolor="black", capsize=4
            )
    axes.set_xticks(range(len(bars)))
    axes.set_xticklabels(
        [bar[0] for bar in bars],
        fontsize=7,
        rotation=25 if len(bars) > 3 else 0,
        ha="right" if len(bars) > 3 else "center",
    )
    axes.set_ylabel("training samples per second (epochs 2..E)")
    axes.set_title("pipelines: median, bar from slowest to fastest repeat; bare loops: one run each", fontsize=8)
    _framework_legend(axes, fontsize=8)
    return _finish(figure, "Training throughput, steady state", path)


def inference_latency(inference: InferenceResult, path: Path) -> Path:
    """Median latency per call of each in-process path, batch 1 and batch 64, with min–p99 whiskers (log scale)."""
    pyplot = _pyplot()
    batch_sizes = sorted({size for batches in inference.latencies.values() for size in batches})
    figure, panels = pyplot.subplots(1, len(batch_sizes), figsize=(5.5 * len(batch_sizes), 4.4), squeeze=False)
    names = list(inference.latencies)
    for panel, batch_size in zip(panels[0], batch_sizes, strict=True):
        for index, name in enumerate(names):
            summary = inference.latencies[name].get(batch_size)
            if summary is None:
                continue
            color = FRAMEWORK_COLORS[inference_module.PATH_FRAMEWORKS[name]]
            panel.bar(index, summary.p50_ms, color=color, edgecolor="black", linewidth=0.5)
            panel.errorbar(
                index,
                summary.p50_ms,
                yerr=[[summary.p50_ms - summary.minimum_ms], [summary.p99_ms - summary.p50_ms]],
                fmt="none",
                ecolor="black",
                capsize=3,
            )
        panel.set_xticks(range(len(names)))
        panel.set_xticklabels([name.replace("_", "\n") for name in names], fontsize=7)
        _log_scale(panel)
        images = "one image" if batch_size == 1 else f"{batch_size} images"
        panel.set_ylabel(f"ms per call ({images} per call)")
        panel.set_title(
            f"batch {batch_size}: latency per call" + ("" if batch_size == 1 else f" (÷{batch_size} per image)"),
            fontsize=9,
        )
        _framework_legend(panel, fontsize=7)
    return _finish(figure, "In-process inference latency (bar: median; whisker: fastest call to p99)", path)


def latency_distribution(sweep: SweepResult, path: Path) -> Path:
    """Latency distribution of every endpoint at one client (box p25–p75, whiskers p1–p99)."""
    pyplot = _pyplot()
    measured = [(item.endpoint, item.at(1)) for item in sweep.endpoints if item.at(1) and item.at(1).latencies_seconds]
    figure, axes = pyplot.subplots(figsize=(max(6.5, 2.2 * len(measured)), 4.6))
    boxes = axes.boxplot(
        [[value * 1000 for value in point.latencies_seconds] for _, point in measured],
        whis=(1, 99),
        showfliers=False,
        patch_artist=True,
        medianprops={"color": "black"},
    )
    for box, (endpoint, _) in zip(boxes["boxes"], measured, strict=True):
        box.set_facecolor(FRAMEWORK_COLORS[endpoint.framework])
    axes.set_xticks(range(1, len(measured) + 1))
    axes.set_xticklabels(
        [endpoint.title.replace(" (", "\n(").replace(", ", "\n") for endpoint, _ in measured], fontsize=7
    )
    _log_scale(axes)
    axes.set_ylabel("latency per request, ms (batch 1)")
    _framework_legend(axes, fontsize=8, title="serves the model of", title_fontsize=8)
    return _finish(figure, "Served latency with one client (box: p25–p75, whiskers: p1–p99)", path)


def throughput_vs_concurrency(sweep: SweepResult, path: Path) -> Path:
    """Throughput (with the window range) and p99 against concurrent clients; generator-bound points hollow."""
    from matplotlib.lines import Line2D

    pyplot = _pyplot()
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(12, 5.4))
    concurrencies: set[int] = set()
    for item in sweep.endpoints:
        points = sorted(
            (point for point in item.points if point.latencies_seconds), key=lambda point: point.concurrency
        )
        if not points:
            continue
        marker, style = ENDPOINT_STYLES.get(item.endpoint.key, ("o", "-"))
        color = FRAMEWORK_COLORS[item.endpoint.framework]
        x = [point.concurrency for point in points]
        concurrencies.update(x)
        rates = [point.throughput_per_second for point in points]
        spread = [
            [rate - point.throughput_range[0] for rate, point in zip(rates, points, strict=True)],
            [point.throughput_range[1] - rate for rate, point in zip(rates, points, strict=True)],
        ]
        left.errorbar(x, rates, yerr=spread, linestyle=style, color=color, capsize=3, label=item.endpoint.title)
        right.plot(
            x, [point.latency.p99_ms for point in points], linestyle=style, color=color, label=item.endpoint.title
        )
        for panel, values in ((left, rates), (right, [point.latency.p99_ms for point in points])):
            for point, value in zip(points, values, strict=True):
                panel.plot(
                    point.concurrency,
                    value,
                    marker,
                    color=color,
                    markersize=7,
                    markerfacecolor="white" if point.generator_bound else color,
                )
    ticks = sorted(concurrencies)
    for panel, ylabel in ((left, "requests per second"), (right, "p99 latency per request, ms")):
        panel.set_xscale("log")
        panel.set_xticks(ticks, [str(tick) for tick in ticks])
        panel.minorticks_off()
        panel.set_xlabel("concurrent clients (closed loop, batch 1)")
        panel.set_ylabel(ylabel)
    _log_scale(right)
    left.set_title("throughput (bars: range of the reported windows)", fontsize=9)
    right.set_title("p99 latency", fontsize=9)
    handles, names = left.get_legend_handles_labels()
    handles.append(Line2D([], [], marker="o", linestyle="none", color="black", markerfacecolor="white"))
    names.append("hollow: generator-bound point")
    figure.legend(handles, names, loc="lower center", ncol=3, fontsize=8)
    return _finish(
        figure, "Served throughput and p99 against concurrency, every endpoint named by its server", path, 0.14
    )


def draw_all(comparison: Comparison, output_dir: Path) -> dict[str, str]:
    """Every plot the results allow; returns name → file name beside the report. A failed plot is recorded."""
    plots: dict[str, Callable[[Path], Path]] = {}
    if comparison.training:
        plots["learning_curves"] = lambda path: learning_curves(comparison.training, path)
        plots["training_throughput"] = lambda path: training_throughput(comparison.training, path)
    if comparison.inference:
        plots["inference_latency"] = lambda path: inference_latency(comparison.inference, path)
    if comparison.sweep and any(item.points for item in comparison.sweep.endpoints):
        plots["latency_distribution"] = lambda path: latency_distribution(comparison.sweep, path)
        plots["throughput_vs_concurrency"] = lambda path: throughput_vs_concurrency(comparison.sweep, path)
    files: dict[str, str] = {}
    for name, draw in plots.items():
        try:
            draw(output_dir / f"{name}.png")
            files[name] = f"{name}.png"
        except Exception as error:  # noqa: BLE001 (a plot must not cost the report)
            comparison.failures[f"plot {name}"] = f"{type(error).__name__}: {error}"
    return files
