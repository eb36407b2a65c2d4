"""PNG plots for the comparison report, drawn with matplotlib's non-interactive backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FRAMEWORK_COLORS = {"tf": "tab:orange", "torch": "tab:red"}
FRAMEWORK_NAMES = {"tf": "TensorFlow/Keras", "torch": "PyTorch"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def learning_curves(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> Path:
    """Loss and accuracy per epoch, train (solid) and validation (dashed), both frameworks on the same axes."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(1, 2, figsize=(11, 4))
    for framework, framework_curves in curves.items():
        for panel, metric in zip(axes, ("epoch_loss", "epoch_accuracy")):
            for subdir, style in (("train", "-"), ("validation", "--")):
                points = framework_curves.get(f"{subdir}/{metric}", [])
                if points:
                    epochs, values = zip(*points)
                    panel.plot(
                        [epoch + 1 for epoch in epochs], values, style,
                        color=FRAMEWORK_COLORS.get(framework), label=f"{FRAMEWORK_NAMES.get(framework, framework)} {subdir}",
                    )  # fmt: skip
            panel.set_xlabel("epoch")
            panel.set_title(metric + " (read back from TensorBoard event files)", fontsize=9)
    axes[0].set_ylabel("loss")
    axes[1].set_ylabel("accuracy")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def inference_latency(inference: dict[str, Any], path: Path) -> Path:
    """p50 latency (bars) with p99 (whisker) of each in-process path at batch 1 and batch 64, log scale."""
    pyplot = _pyplot()
    names = [name for name, value in inference.items() if isinstance(value, dict) and "batch_1" in value]
    figure, axes = pyplot.subplots(figsize=(9, 4))
    width = 0.38
    for offset, batch in ((-width / 2, "batch_1"), (width / 2, "batch_64")):
        p50 = [inference[name][batch]["p50_ms"] for name in names]
        p99 = [inference[name][batch]["p99_ms"] for name in names]
        positions = [index + offset for index in range(len(names))]
        axes.bar(positions, p50, width, label=f"{batch.replace('_', ' ')} p50")
        axes.errorbar(positions, p50, yerr=[[0] * len(p50), [high - low for high, low in zip(p99, p50)]], fmt="none", ecolor="black", capsize=3)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels([name.replace("_", "\n") for name in names], fontsize=8)
    axes.set_yscale("log")
    axes.set_ylabel("latency, ms (whisker: p99)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def latency_distributions(points: dict[str, list[float]], path: Path) -> Path:
    """Latency distribution per endpoint at concurrency 1 (box plot over the measured requests)."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(max(6, 1.4 * len(points)), 4))
    labels = list(points)
    axes.boxplot([points[label] for label in labels], whis=(1, 99), showfliers=False)
    axes.set_xticks(range(1, len(labels) + 1))
    axes.set_xticklabels([label.replace("/", "\n") for label in labels], fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("latency, ms (box: p25–p75, whiskers: p1–p99)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def throughput_curves(series: dict[str, list[tuple[int, float, float]]], path: Path) -> Path:
    """Throughput and p99 against concurrency for each endpoint: (concurrency, requests/s, p99 ms)."""
    pyplot = _pyplot()
    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4))
    for label, points in series.items():
        points = sorted(points)
        concurrency = [point[0] for point in points]
        left.plot(concurrency, [point[1] for point in points], "o-", label=label)
        right.plot(concurrency, [point[2] for point in points], "o-", label=label)
    for axes, ylabel in ((left, "requests per second"), (right, "p99 latency, ms")):
        axes.set_xscale("log", base=2)
        axes.set_xlabel("concurrent clients")
        axes.set_ylabel(ylabel)
    right.set_yscale("log")
    left.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path


def training_throughput(training: dict[str, Any], path: Path) -> Path:
    """Steady-state samples/s of each pipeline and of each bare loop, one bar each."""
    pyplot = _pyplot()
    labels, values, colors = [], [], []
    for framework, summary in training.get("pipelines", {}).items():
        if "steady_samples_per_second" in summary:
            labels.append(f"{framework} pipeline")
            values.append(summary["steady_samples_per_second"])
            colors.append(FRAMEWORK_COLORS.get(framework, "gray"))
    for key, run in training.get("bare", {}).items():
        for variant, rate in run.items():
            if isinstance(rate, dict) and "steady_samples_per_second" in rate:
                labels.append(f"{key}\n{variant}")
                values.append(rate["steady_samples_per_second"])
                colors.append(FRAMEWORK_COLORS.get(key.split("_")[0], "gray"))
    figure, axes = pyplot.subplots(figsize=(max(6, 1.2 * len(labels)), 4))
    axes.bar(range(len(values)), values, color=colors)
    axes.set_xticks(range(len(labels)))
    axes.set_xticklabels([label.replace("_", " ") for label in labels], fontsize=6, rotation=30, ha="right")
    axes.set_ylabel("training samples per second (epochs 2..E)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    pyplot.close(figure)
    return path
