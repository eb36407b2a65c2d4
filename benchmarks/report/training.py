"""The report's training, artifact and in-process inference sections."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import inference, labels
from benchmarks.report.markdown import figures_block, number, paragraph, ratio, section, table

if TYPE_CHECKING:
    from benchmarks.inference import ArtifactSize, InferenceResult
    from benchmarks.measure import Comparison
    from benchmarks.training import TrainingResult

MEDIAN_ROWS = {
    "train_call_seconds": ("train() call (training + evaluation + logging + export)", "s"),
    "training_seconds": ("epoch loop (the pipeline's own timer)", "s"),
    "process_seconds": ("whole process (imports included)", "s"),
    "first_epoch_seconds": ("first epoch (tracing, warm-up)", "s"),
    "steady_samples_per_second": ("steady-state samples/s", "/s"),
    "peak_rss_mib": ("peak RSS", "MiB"),
    "test_accuracy": ("test accuracy", ""),
}
INFERENCE_METHOD = (
    "Each path called in this process with NumPy input as a client sends it, timed for a fixed budget after warm-up; "
    "torch paths run under `torch.inference_mode()`. The Keras model is rebuilt from the exported spec (latency does "
    "not depend on weight values); the other paths are the trained exports. Latency is per call: a batch-64 call "
    "answers 64 images, so its per-image cost is the call's divided by 64."
)
PATH_NAMES = {
    "keras_direct_call": "Keras model(x), direct call",
    "keras_model_predict": "Keras model.predict(x)",
    "savedmodel_signature": "SavedModel serving_default signature",
    "torch_eager_module": "eager torch module",
    "torchscript_module": "TorchScript module",
}


def training(comparison: Comparison, figures: dict[str, str]) -> list[str]:
    """Both pipelines' training: medians, every repeat, the bare-loop overhead check and the plots."""
    return section(
        "## Training", comparison.training, comparison.reason("training"), lambda trained: _training(trained, figures)
    )


def _training(trained: TrainingResult, figures: dict[str, str]) -> list[str]:
    pipelines = trained.pipelines
    first = next(iter(pipelines.values()))
    lines = paragraph(
        f"Both pipelines' own `train(config, dataset)`, each repeat in a fresh process, same data split, seed "
        f"{trained.settings.seed}, batch size {first.batch_size}, {first.epochs} epochs, {first.train_examples} "
        f"training examples; medians of {first.repeats} repeat(s).",
        "Steady-state samples/s count epochs 2..E from the wall times of the `train/epoch_loss` events each pipeline "
        "writes at the end of an epoch, so an epoch there includes validation and TensorBoard logging on both sides.",
    )
    rows = []
    for field, (label, unit) in MEDIAN_ROWS.items():
        values = [getattr(summary, field) for summary in pipelines.values()]
        if all(value is not None for value in values):
            rows.append((f"{label}, {unit}" if unit and unit != "/s" else label, *(number(value) for value in values)))
    lines += [table(("median", *(labels.FRAMEWORK_NAMES[name] for name in pipelines)), rows), ""]
    tf_rate, torch_rate = pipelines["tf"].steady_samples_per_second, pipelines["torch"].steady_samples_per_second
    if tf_rate and torch_rate:
        faster, slower = ("tf", "torch") if tf_rate > torch_rate else ("torch", "tf")
        lines += paragraph(
            f"{labels.FRAMEWORK_NAMES[faster]}'s pipeline trained {ratio(max(tf_rate, torch_rate), min(tf_rate, torch_rate))} "
            f"as many samples per second as {labels.FRAMEWORK_NAMES[slower]}'s, to test accuracies of "
            f"{number(pipelines['tf'].test_accuracy)} (TensorFlow) and {number(pipelines['torch'].test_accuracy)} (PyTorch)."
        )
    repeat_rows = [
        (
            labels.FRAMEWORK_NAMES[framework],
            index + 1,
            number(run.train_call_seconds, "s"),
            number(run.steady_samples_per_second, "/s"),
            number(run.peak_rss_mib, "MiB"),
            number(run.test_accuracy),
        )
        for framework, runs in trained.repeats.items()
        for index, run in enumerate(runs)
    ]
    lines += [
        "Every repeat:",
        "",
        table(("framework", "repeat", "train() call", "samples/s", "peak RSS", "test accuracy"), repeat_rows),
        "",
    ]
    lines += _bare_loops(trained)
    return lines + figures_block(figures, "learning_curves", "training_throughput")


def _bare_loops(trained: TrainingResult) -> list[str]:
    if not trained.bare:
        return paragraph("Overhead check: not measured in quick mode (the bare loops run in the full mode).")
    rows = [
        (
            labels.FRAMEWORK_NAMES[run.framework],
            "default" if run.threads == 0 else str(run.threads),
            loop.replace("_", " "),
            number(rate.get("steady_samples_per_second"), "/s"),
            number(rate["first_epoch_seconds"], "s"),
        )
        for run in trained.bare
        for loop, rate in run.loops.items()
    ]
    best = {name: trained.best_bare_rate(name) for name in ("tf", "torch")}
    lines = paragraph(
        "Overhead check: the same network and batch size with no validation, TensorBoard or export, in one fresh "
        "process per framework and thread setting (1 thread: intra- and inter-op pools fixed to one).",
        "`keras fit steps per execution N` runs N steps per call into the compiled graph; `tf function step over tf "
        "data` is a hand-written `tf.function` step over a `tf.data` pipeline.",
    )
    lines += [table(("framework", "threads", "loop", "steady samples/s", "first epoch"), rows), ""]
    shares = {
        name: (trained.pipelines[name].steady_samples_per_second or 0) / best[name]
        for name in ("tf", "torch")
        if best[name] and name in trained.pipelines
    }
    if len(shares) == 2:
        lines += paragraph(
            f"The pipelines run at {shares['tf']:.0%} (TensorFlow) and {shares['torch']:.0%} (PyTorch) of their "
            "framework's fastest bare loop: below 100 % is the pipeline's own validation, logging and callbacks; "
            "above it, or far below, is the machine's other load moving single runs."
        )
    return lines


def artifacts(comparison: Comparison) -> list[str]:
    """Export sizes, load times and each server's cold start."""
    return section(
        "## Artifacts",
        comparison.artifacts,
        comparison.reason("artifacts"),
        lambda sizes: _artifacts(sizes, comparison),
    )


def _artifacts(sizes_measured: list[ArtifactSize], comparison: Comparison) -> list[str]:
    rows = [
        (
            item.name,
            f"`{item.file}`",
            number(item.size_bytes / 1024, "KiB"),
            number(item.first_load_seconds * 1000, "ms")
            if item.first_load_seconds is not None
            else "— (loaded by TorchServe)",
            number(item.later_load_seconds * 1000, "ms") if item.later_load_seconds is not None else "—",
        )
        for item in sizes_measured
    ]
    lines = paragraph(
        "Size on disk of each export, and how long loading it takes in this process after the framework is imported "
        "(`tf.saved_model.load`, `torch.jit.load`)."
    )
    lines += [table(("export", "file", "size", "first load", "later loads (median)"), rows), ""]
    sizes = {item.name: item.size_bytes for item in sizes_measured}
    if "TF SavedModel" in sizes and "TorchScript" in sizes:
        lines += paragraph(
            f"The SavedModel is {ratio(sizes['TF SavedModel'], sizes['TorchScript'])} the TorchScript file's size: it "
            "carries its traced graphs and signatures besides the weights."
        )
    sweep = comparison.sweep
    if sweep and sweep.cold_start_seconds:
        lines += paragraph(
            "Cold start of each server started by this run, from process start until its model answers the ready check:"
        )
        cold = {labels.SERVER_NAMES.get(name, name): seconds for name, seconds in sweep.cold_start_seconds.items()}
        lines += [
            table(("server", "seconds until ready"), [(name, number(value, "s")) for name, value in cold.items()]),
            "",
        ]
        lines += paragraph(
            f"{max(cold, key=cold.get)} takes longest to become ready; all three start at the same "
            "time and share the machine's cores while they load."
        )
    else:
        lines += paragraph(f"Server cold start: not measured ({comparison.reason('sweep')}).")
    return lines


def inference_section(comparison: Comparison, figures: dict[str, str]) -> list[str]:
    """Latency of every in-process path at batch 1 and 64."""
    return section(
        "## In-process inference",
        comparison.inference,
        comparison.reason("inference"),
        lambda measured: _inference(measured, figures),
    )


def _inference(measured: InferenceResult, figures: dict[str, str]) -> list[str]:
    lines = paragraph(INFERENCE_METHOD)
    rows = []
    for path, batches in measured.latencies.items():
        for batch_size, summary in batches.items():
            rows.append(
                (
                    PATH_NAMES[path],
                    labels.FRAMEWORK_NAMES[inference.PATH_FRAMEWORKS[path]],
                    batch_size,
                    number(summary.p50_ms, "ms"),
                    number(summary.p99_ms, "ms"),
                    number(summary.p50_ms * 1000 / batch_size, "µs"),
                    number(summary.count),
                )
            )
    lines += [table(("path", "framework", "batch", "p50 per call", "p99 per call", "p50 per image", "calls"), rows), ""]
    fast = measured.fast_path
    signature, script = measured.p50_ms("savedmodel_signature"), measured.p50_ms("torchscript_module")
    lines += paragraph(
        f"For one image the served artifacts take {number(signature, 'ms')} (SavedModel signature) and "
        f"{number(script, 'ms')} (TorchScript) per call; `model.predict` is the slow way to call Keras for one image.",
        f"Eager torch and TorchScript agree to {measured.torch_eager_vs_torchscript_max_difference:.1e} (largest "
        "difference of a probability).",
        f"The TF server calls the signature, not `model.predict`: {'yes' if fast.fast_path else 'no'} "
        f"({fast.files_checked} files of its package checked; imports Keras: {'yes' if fast.imports_keras else 'no'}).",
    )
    return lines + figures_block(figures, "inference_latency")
