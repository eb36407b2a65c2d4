"""`python -m benchmarks.compare [--quick]`: measure both stacks and write reports/comparison.md with PNG plots.

Every number in the report is measured by this run; nothing is carried over from an earlier one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks import article, endpoints, inference, load, plots, ratios, system, training
from benchmarks.report import cell, code_block, key_value_table, number, table

PROG = "python -m benchmarks.compare"
REPORT_FILE = "comparison.md"
DATA_FILE = "comparison.json"
REQUIRED_SECTIONS = (
    "## Machine",
    "## Ratios",
    "## Training",
    "## Artifacts",
    "## In-process inference",
    "## Serving",
    "## The article's questions",
    "## The article's claims against the measurements",
)


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """Everything one comparison run needs to know."""

    quick: bool
    output_dir: Path
    runs_dir: Path
    serving: bool
    distributed: bool
    training: training.TrainingSettings
    inference: inference.InferenceSettings
    load: load.LoadSettings

    @property
    def work_dir(self) -> Path:
        """Models, TensorBoard runs and server state this comparison makes; replaced by every run."""
        return self.output_dir / "work"


def build_settings(arguments: argparse.Namespace) -> CompareSettings:
    """Quick or full settings, with the command line's overrides."""
    training_settings = training.QUICK_TRAINING if arguments.quick else training.TrainingSettings()
    overrides = {
        name: value
        for name, value in (("repeats", arguments.repeats), ("epochs", arguments.epochs), ("threads", arguments.threads))
        if value is not None
    }
    return CompareSettings(
        quick=arguments.quick,
        output_dir=arguments.output_dir,
        runs_dir=arguments.runs_dir,
        serving=not arguments.quick if arguments.serving is None else arguments.serving,
        distributed=not arguments.quick if arguments.distributed is None else arguments.distributed,
        training=dataclasses.replace(training_settings, **overrides),
        inference=inference.QUICK_INFERENCE if arguments.quick else inference.InferenceSettings(),
        load=load.QUICK_SETTINGS if arguments.quick else load.LoadSettings(),
    )


def _section(results: dict[str, Any], name: str, measure: Callable[[], Any]) -> Any:
    """Run one measurement; a failure is recorded (and fails the run) instead of hiding the other sections."""
    started = time.perf_counter()
    print(f"[compare] {name} ...", flush=True)
    try:
        value = measure()
    except Exception as error:
        results["failures"][name] = f"{type(error).__name__}: {error}"
        traceback.print_exc()
        value = None
    results["section_seconds"][name] = time.perf_counter() - started
    return value


def measure_everything(settings: CompareSettings) -> dict[str, Any]:
    """Run every section in order and collect the results in one JSON-ready dict."""
    from experiment.data import load_dataset

    results: dict[str, Any] = {"failures": {}, "section_seconds": {}, "quick": settings.quick}
    results["date"] = system.now()
    results["machine"] = system.machine()
    results["versions"] = system.library_versions()
    results["command"] = " ".join([PROG, *sys.argv[1:]]) if sys.argv[0].endswith("compare.py") else PROG
    results["training"] = _section(results, "training", lambda: training.measure_training(settings.training, settings.work_dir))
    if settings.training.threads:
        for framework in training.FRAMEWORKS:
            training.set_threads(framework, settings.training.threads)
    results["threads"] = system.thread_settings()

    dataset = load_dataset(seed=settings.training.seed)
    pipelines = (results["training"] or {}).get("pipelines", {})
    tf_export = Path(pipelines["tf"]["export_path"]) if "tf" in pipelines else None
    torch_export = Path(pipelines["torch"]["export_path"]) if "torch" in pipelines else None
    archive = settings.work_dir / "models" / "torch" / "model-store" / "digits.mar"
    if tf_export and torch_export:
        results["artifacts"] = _section(
            results, "artifacts", lambda: inference.measure_artifacts(tf_export, torch_export, archive, settings.inference)
        )
        results["inference"] = _section(
            results,
            "inference",
            lambda: inference.measure_inference(tf_export, torch_export, dataset.test.images, settings.inference),
        )
        if results["inference"] is not None:
            results["inference"]["serving_fast_path"] = inference.serving_uses_fast_path(Path(__file__).resolve().parent.parent / "serving")

    results["article"] = {
        "snippets": _section(results, "article: tensor snippets", article.tensor_snippets),
        "graphs": _section(results, "article: graphs", lambda: article.graphs(settings.runs_dir)),
        "debugging": _section(results, "article: debugging", article.debugging),
        "tensorboard": _section(
            results,
            "article: TensorBoard",
            lambda: article.tensorboard_runs({framework: Path(summary["run_dir"]) for framework, summary in pipelines.items()}),
        ),
        "data_parallelism": _section(results, "article: data parallelism", article.data_parallelism),
    }
    results["generator_ceiling"] = _section(
        results, "load generator ceiling", lambda: {key: value.to_dict() for key, value in load.generator_ceiling().items()}
    )

    offered = {
        "quick": settings.quick,
        "model_base_path": settings.work_dir / "models" / "tf" / "digits",
        "model_name": "digits",
        "count": 300 if settings.quick else 2000,
        "throughput_seconds": 1.5 if settings.quick else 6.0,
        "requests_per_endpoint": 300 if settings.quick else 2000,
        "warmup": 50 if settings.quick else 200,
        "model_store": settings.work_dir / "models" / "torch" / "model-store",
        "epochs": 2 if settings.quick else 8,
        "work_dir": settings.work_dir / "distributed",
    }
    external: dict[str, Any] = {}
    for key in endpoints.EXTERNAL_MODULES:
        wanted = settings.distributed if key == "distributed" else settings.serving
        if not wanted:
            outcome = endpoints.not_measured(endpoints.EXTERNAL_MODULES[key], "skipped in this mode (--quick without --serving/--distributed)")
        elif tf_export is None or torch_export is None:
            outcome = endpoints.not_measured(endpoints.EXTERNAL_MODULES[key], "training failed, so there is no model to serve")
        else:
            module_offered = dict(offered)
            if key == "serving_torch":
                module_offered["model_base_path"] = settings.work_dir / "models" / "torch" / "digits"
            started = time.perf_counter()
            print(f"[compare] {endpoints.EXTERNAL_MODULES[key]} ...", flush=True)
            outcome = endpoints.run_external(key, module_offered)
            results["section_seconds"][key] = time.perf_counter() - started
        external[key] = dataclasses.asdict(outcome)
    results["external"] = external

    if settings.serving and tf_export and torch_export:
        from benchmarks import sweep

        results["sweep"] = endpoints.normalise(
            _section(
                results,
                "serving sweep",
                lambda: sweep.measure_endpoints(
                    settings.work_dir / "models", settings.work_dir / "stack", dataset.test.images[0], (1, 4, 16), settings.load
                ),
            )
        )
    else:
        results["sweep"] = None
    results["ratios"] = [dataclasses.asdict(ratio) | {"status": ratio.status} for ratio in ratios.compute_ratios(results)]
    return results


# ------------------------------------------------------------------------------------------------- rendering


def _ratio_section(results: dict[str, Any]) -> list[str]:
    rows = [
        (item["name"], item["target"], number(item["measured"]) if item["measured"] is not None else "not measured",
         item["status"], item["inputs"] or "—", item["note"])
        for item in results["ratios"]
    ]  # fmt: skip
    return ["## Ratios", "", "Each ratio is computed from numbers measured in this run.", "",
            table(("ratio", "target", "measured", "status", "computed from", "note"), rows), ""]  # fmt: skip


def _training_section(results: dict[str, Any], plot_files: dict[str, str]) -> list[str]:
    lines = ["## Training", ""]
    trained = results.get("training")
    if not trained:
        return lines + [f"not measured: {results['failures'].get('training', 'unknown reason')}", ""]
    pipelines = trained["pipelines"]
    first = next(iter(pipelines.values()))
    lines += [
        f"Both pipelines' own `train(config, dataset)`, each repeat in a fresh process, same data split, seed "
        f"{trained['settings']['seed']}, batch size {first['batch_size']}, {first['epochs']} epochs, "
        f"{first['train_examples']} training examples; medians of {first['repeats']} repeats. Steady-state samples/s "
        "count epochs 2..E from the wall times of the `train/epoch_loss` events each pipeline writes at the end of "
        "an epoch, so one epoch there includes validation and TensorBoard logging on both sides.",
        "",
    ]
    rows = []
    labels = {
        "train_call_seconds": "train() call, s (training + evaluation + logging + export)",
        "training_seconds": "epoch loop, s (the pipeline's own timer)",
        "process_seconds": "whole process, s (imports included)",
        "first_epoch_seconds": "first epoch, s (tracing, warm-up)",
        "steady_samples_per_second": "steady-state samples/s",
        "peak_rss_mib": "peak RSS, MiB",
        "test_accuracy": "test accuracy",
    }
    for key, label in labels.items():
        if all(key in summary for summary in pipelines.values()):
            rows.append((label, *(number(summary[key]) for summary in pipelines.values())))
    lines += [table(("median", *(plots.FRAMEWORK_NAMES[name] for name in pipelines)), rows), ""]
    repeat_rows = [
        (framework, index + 1, number(run["train_call_seconds"]), number(run.get("steady_samples_per_second", float("nan"))),
         number(run["peak_rss_mib"]), number(run["test_accuracy"]))
        for framework, runs in trained["repeats"].items() for index, run in enumerate(runs)
    ]  # fmt: skip
    lines += ["Every repeat:", "", table(("framework", "repeat", "train() s", "samples/s", "peak RSS MiB", "test accuracy"), repeat_rows), ""]
    if trained["bare"]:
        bare_rows = []
        for key, run in trained["bare"].items():
            for variant, rate in run.items():
                if isinstance(rate, dict) and "steady_samples_per_second" in rate:
                    bare_rows.append((key, variant, number(rate["steady_samples_per_second"]), number(rate["first_epoch_seconds"])))
        lines += [
            "Overhead check: the same network and batch size with no validation, TensorBoard or export, in one fresh "
            "process per framework and thread setting (`threads_1`: intra- and inter-op pools fixed to one thread). "
            "`keras_fit_steps_per_execution_N` runs N steps per call into the compiled graph; "
            "`tf_function_step_over_tf_data` is a hand-written `tf.function` step over a `tf.data` pipeline.",
            "",
            table(("process", "loop", "steady samples/s", "first epoch s"), bare_rows),
            "",
        ]
    else:
        lines += ["Overhead check: not measured in quick mode (bare loops run in the full mode).", ""]
    for name in ("learning_curves", "training_throughput"):
        if name in plot_files:
            lines += [f"![{name}]({plot_files[name]})", ""]
    return lines


def _artifacts_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Artifacts", ""]
    measured = results.get("artifacts")
    if not measured:
        return lines + [f"not measured: {results['failures'].get('artifacts', 'training failed')}", ""]
    rows = []
    for name, values in measured.items():
        if values:
            rows.append((name, "/".join(Path(values["path"]).parts[-2:]), number(values["size_bytes"] / 1024, "KiB"),
                         number(values["first_load_seconds"] * 1000, "ms") if "first_load_seconds" in values else "—",
                         number(values["later_load_seconds"] * 1000, "ms") if "later_load_seconds" in values else "—"))  # fmt: skip
    lines += [
        "Loads run in this process after the framework is imported (`tf.saved_model.load`, `torch.jit.load`); "
        "the `.mar` is loaded by TorchServe, whose start-up is the cold start below.",
        "",
        table(("export", "file", "size", "first load", "later loads (median)"), rows),
        "",
    ]
    cold = (results.get("sweep") or {}).get("cold_start_seconds")
    if cold:
        lines += ["Cold start of each server until its model is ready (process start to ready check passing, "
                  "`serving.stack`):", "", table(("server", "seconds until ready"), [(name, number(value, "s")) for name, value in cold.items()]), ""]  # fmt: skip
    else:
        lines += ["Server cold start: not measured (the servers were not started in this mode).", ""]
    return lines


def _inference_section(results: dict[str, Any], plot_files: dict[str, str]) -> list[str]:
    lines = ["## In-process inference", ""]
    measured = results.get("inference")
    if not measured:
        return lines + [f"not measured: {results['failures'].get('inference', 'training failed')}", ""]
    rows = []
    for name, batches in measured.items():
        if isinstance(batches, dict) and "batch_1" in batches:
            for batch, summary in batches.items():
                rows.append((name, batch.split("_")[1], number(summary["p50_ms"], "ms"), number(summary["p90_ms"], "ms"),
                             number(summary["p99_ms"], "ms"), number(summary["mean_ms"], "ms"), number(summary["count"])))  # fmt: skip
    fast = measured.get("serving_fast_path", {})
    lines += [
        "NumPy input as a client sends it; the Keras model is rebuilt from the exported spec (latency does not depend "
        "on weight values), the other paths are the trained exports; torch paths run under `torch.inference_mode()`.",
        "",
        table(("path", "batch", "p50", "p90", "p99", "mean", "calls"), rows),
        "",
        f"Eager torch module and TorchScript agree to {measured['torch_eager_vs_torchscript_max_difference']:.1e} "
        f"(max absolute difference of probabilities). The TF server loads the SavedModel and calls its signature: "
        f"{'yes' if fast.get('fast_path') else 'no'} ({fast.get('files_checked', 0)} files of serving/tfserving checked; "
        f"imports Keras: {'yes' if fast.get('imports_keras') else 'no'}).",
        "",
    ]
    if "inference_latency" in plot_files:
        lines += [f"![inference latency]({plot_files['inference_latency']})", ""]
    return lines


def _load_rows(prefix: str, points: list[tuple[tuple[str, ...], dict[str, Any]]]) -> list[tuple]:
    return [
        ("/".join((prefix, *path)), number(point.get("concurrency", 1)), number(point["p50_ms"], "ms"),
         number(point["p90_ms"], "ms") if "p90_ms" in point else "—", number(point["p99_ms"], "ms"),
         number(point["throughput_per_second"], "/s") if point.get("throughput_per_second") else "—",
         str(point.get("errors", 0)), cell(point.get("stable", "—")), number(point["generator_cores"]) if point.get("generator_cores") else "—",
         cell(point.get("generator_bound", "—")))
        for path, point in points
    ]  # fmt: skip


def _torchserve_batching_lines(results: dict[str, Any]) -> list[str]:
    """The TorchServe batching on/off table, from benchmarks.serving_torch's torchserve_batching numbers."""
    outcome = results["external"].get("serving_torch", {})
    batching = outcome.get("data", {}).get("torchserve_batching") if outcome.get("measured") else None
    lines = ["### Batching on vs off for TorchServe", ""]
    if not batching:
        reason = outcome.get("reason") or "benchmarks.serving_torch returned no torchserve_batching numbers"
        return lines + [f"not measured: {reason}", ""]
    rows = []
    for setting in ("batching_off", "batching_on"):
        values = batching[setting]
        point = values["load"]
        rows.append((
            setting.replace("_", " "), number(values["batch_size"]), number(values["max_batch_delay_ms"], "ms"),
            number(values["workers"]), number(point["concurrency"]), number(point["throughput_per_second"], "/s"),
            number(point["p50_ms"], "ms"), number(point["p90_ms"], "ms"), number(point["p99_ms"], "ms"),
            str(point["errors"]), cell(point["stable"]), number(point["generator_cores"]), cell(point["generator_bound"]),
        ))  # fmt: skip
    headers = ("setting", "batch size", "max batch delay", "workers", "clients", "throughput", "p50", "p90", "p99",
               "errors", "stable", "generator cores", "generator-bound")  # fmt: skip
    growth = batching["p99_growth_ms"]
    return lines + [
        (
            "Two TorchServe instances started by `serving.torchserve.launch`, identical but for the model's batch size "
            "(1, against config.properties' batch size and delay, as TorchServe registered them), each driven over "
            f"REST by {batching['clients']} closed-loop clients; off and on alternate in {batching['rounds']} rounds "
            "and each setting's rounds are pooled. The servers share this machine's cores with the load generator."
        ),
        "",
        table(headers, rows),
        "",
        f"Throughput on / off: {number(batching['throughput_ratio'])}; p99 {'grew' if growth >= 0 else 'shrank'} by "
        f"{number(abs(growth), 'ms')} with batching on."
        + ("" if batching["throughput_ratio"] > 1 else
           " Batching lost here: TorchServe's Python workers run the model with torch's default intra-op pool (one "
           "thread per core, per worker), and a batch is large enough for torch to use it, so the workers' pools "
           "oversubscribe the cores that the front end and the clients also need; batch 1 stays single-threaded. "
           "Giving each worker one thread (OMP_NUM_THREADS=1, as gunicorn_conf.py does for Flask) is what to try."),
        "",
    ]  # fmt: skip


def _serving_section(results: dict[str, Any], plot_files: dict[str, str]) -> list[str]:
    lines = ["## Serving", ""]
    sweep = results.get("sweep")
    headers = ("endpoint", "clients", "p50", "p90", "p99", "throughput", "errors", "stable", "generator cores", "generator-bound")
    if sweep:
        points = endpoints.load_points(sweep.get("endpoints", {}))
        lines += [
            "Closed-loop load (`benchmarks.load`): each client thread sends one batch-1 request at a time with its own "
            "client object; warm-up discarded; windows repeat until two consecutive ones agree within 10 % in "
            "throughput and p50 (Triton perf_analyzer's rule), and the last two windows are reported. `generator "
            f"cores` is the load generator's CPU seconds per wall second; a point is generator-bound at ≥ "
            f"{load.GENERATOR_BOUND_CORES} (a Python client saturates near one core), where the number says more "
            "about the client than the server. The servers share this machine's cores with the generator.",
            "",
            table(headers, _load_rows("sweep", points)),
            "",
        ]
        failed = {name: value["error"] for name, value in sweep.get("endpoints", {}).items() if isinstance(value, dict) and "error" in value}
        for name, error in failed.items():
            lines += [f"- {name}: not measured: {error}"]
        lines += [f"![{name}]({plot_files[name]})" for name in ("latency_distribution", "throughput_vs_concurrency") if name in plot_files] + [""]
    else:
        failure = results["failures"].get("serving sweep")
        lines += [f"Endpoint sweep: not measured: {failure or 'skipped in this mode (--quick without --serving)'}.", ""]
    for key, outcome in results["external"].items():
        lines += [f"### {outcome['module']}", ""]
        if not outcome["measured"]:
            lines += [f"not measured: {outcome['reason']}", ""]
            continue
        flat = endpoints.flatten_numbers(outcome["data"])
        rows = [(name, number(value)) for name, value in flat.items() if value > 0]
        zero = [name for name, value in flat.items() if value <= 0]
        lines += [f"`{outcome['module']}.{outcome['function']}()` returned:", "", table(("value", "number"), rows), ""]
        if zero:
            lines += [f"Zero or negative values returned: {', '.join(zero)}.", ""]
        notes = [value for value in outcome["data"].values() if isinstance(value, str) and len(value) > 40]
        lines += [f"> {note}" for note in notes] + ([""] if notes else [])
    lines += _torchserve_batching_lines(results)
    ceiling = results.get("generator_ceiling")
    if ceiling:
        rows = [(key.replace("concurrency_", ""), number(point["throughput_per_second"], "/s"), number(point["generator_cores"])) for key, point in ceiling.items()]
        lines += ["Load generator ceiling (requests that do nothing): the most requests per second it can issue here.", "",
                  table(("clients", "requests/s", "generator cores"), rows), ""]  # fmt: skip
    return lines


def _article_section(results: dict[str, Any], settings: CompareSettings) -> list[str]:
    found = results["article"]
    lines = ["## The article's questions", ""]
    snippets = found.get("snippets")
    lines += ["### Code style: the two tensor snippets", ""]
    if snippets:
        lines += [
            "The article's TF1 snippet needed a session; in TF2 the same call runs eagerly. Both operands broadcast "
            "((1, 3) × (3, 1) → (3, 3)), so the result is a 3 × 3 matrix on both sides, not an element-wise product "
            "of equal shapes.",
            "",
            code_block(f">>> {snippets['tf_code']}\n{snippets['tf_eager']}  # {snippets['tf_dtype']}\n"
                       f">>> # the article's session.run() via tf.compat.v1 gives the same: {snippets['same_in_eager_and_session']}\n"
                       f">>> {snippets['torch_code']}\n{snippets['torch']}  # {snippets['torch_dtype']} (from NumPy's default)", "python"),
            "",
        ]  # fmt: skip
    graphs = found.get("graphs")
    lines += ["### Static vs dynamic graphs", ""]
    if graphs:
        lines += [
            table(("measurement", "value"), [
                ("tf.function first call (trace + run)", number(graphs["tf_first_call_seconds"] * 1000, "ms")),
                ("tf.function later calls, median", number(graphs["tf_later_call_seconds"] * 1000, "ms")),
                ("traces after 51 calls with the same shape", number(graphs["tf_traces_after_repeated_same_shape"])),
                ("traces after two new batch sizes", number(graphs["tf_traces_after_two_new_batch_sizes"])),
                ("traces after a NumPy input of a known shape", number(graphs["tf_traces_after_numpy_input"])),
                ("concrete functions with an input_signature, after batch 1, 64, 7", cell(graphs["tf_concrete_functions_with_input_signature"])),
                ("eager torch first call", number(graphs["torch_first_call_seconds"] * 1000, "ms")),
                ("eager torch later calls, median", number(graphs["torch_later_call_seconds"] * 1000, "ms")),
                ("eager torch first call at a new batch size", number(graphs["torch_new_batch_size_call_seconds"] * 1000, "ms")),
            ]),
            "",
            f"Both graphs are in TensorBoard: `{graphs['tf_graph_run']}` (tf.summary.trace_export; written: "
            f"{cell(graphs['tf_graph_written'])}) and `{graphs['torch_graph_run']}` (SummaryWriter.add_graph; written: "
            f"{cell(graphs['torch_graph_written'])}). Open them with `make tensorboard`.",
            "",
        ]  # fmt: skip
    debugging = found.get("debugging")
    lines += ["### Debugging", ""]
    if debugging:
        lines += [
            "A `breakpoint()` inside a Keras layer's `call` and inside a torch module's `forward`, answered by a real "
            "`pdb` whose commands (`p type(inputs).__name__`, `p inputs.shape`, `p inputs.numpy().sum()`) come from a "
            "script instead of the keyboard. What pdb printed:",
            "",
            code_block("\n".join(f"# {name}\n" + "\n".join(transcript) for name, transcript in debugging.items()
                                 if isinstance(transcript, list)), "text"),
            "",
            "With `tf.config.run_functions_eagerly(True)` the layer sees an `EagerTensor` whose values pdb reads; in the "
            "traced graph (the default inside `fit`) the breakpoint is hit once, while tracing, and the tensor is "
            "symbolic. `tfdbg` and sessions are TF1; TF2 offers `tf.config.run_functions_eagerly`, "
            f"`tf.debugging.enable_check_numerics` (here: \"{debugging.get('check_numerics')}\") and "
            "`tf.debugging.experimental.enable_dump_debug_info` for TensorBoard's Debugger V2 "
            f"(available: {cell(debugging.get('tfdbg_available'))}).",
            "",
        ]  # fmt: skip
    board = found.get("tensorboard")
    lines += ["### TensorBoard for both", ""]
    if board:
        rows = [(framework, f"`{values['run_dir']}`", "; ".join(f"{sub}: {', '.join(tags) or '—'}" for sub, tags in values["tags"].items()))
                for framework, values in board.items()]  # fmt: skip
        lines += [table(("framework", "run", "tags (read back with TensorBoard's EventAccumulator)"), rows), "",
                  f"`tensorboard --logdir {settings.work_dir / 'runs'}` overlays these runs; `make tensorboard` shows `runs/`.", ""]  # fmt: skip
    lines += ["### Deployment", ""]
    sweep = results.get("sweep") or {}
    grpc = sweep.get("endpoints", {}).get("tf_grpc", {}).get("concurrency_1", {})
    rest = sweep.get("endpoints", {}).get("tf_rest", {}).get("concurrency_1", {})
    if grpc.get("p50_ms") and rest.get("p50_ms"):
        lines += [f"The same TF server, one client, batch 1: gRPC p50 {number(grpc['p50_ms'], 'ms')}, REST p50 "
                  f"{number(rest['p50_ms'], 'ms')} (REST / gRPC = {number(rest['p50_ms'] / grpc['p50_ms'])}). "
                  "Every endpoint's numbers are in the Serving section.", ""]  # fmt: skip
    else:
        lines += ["gRPC vs REST: not measured (the servers were not started in this mode).", ""]
    parallel = found.get("data_parallelism")
    lines += ["### Data parallelism", ""]
    if parallel:
        lines += [key_value_table({key: "none" if value == 0 and not isinstance(value, bool) else value for key, value in parallel.items()}, ("asked of the framework", "answer")), ""]
    distributed = results["external"].get("distributed", {})
    if distributed.get("measured"):
        runs = distributed["data"].get("runs", {})
        rows = [(framework, processes, number(run.get("samples_per_second") or float("nan"), "/s"), number(run["test_accuracy"]))
                for framework, by_processes in runs.items() for processes, run in by_processes.items()]  # fmt: skip
        lines += [table(("framework", "processes", "samples/s", "test accuracy"), rows), "", f"> {distributed['data'].get('note', '')}", ""]
    else:
        lines += [f"1 vs 2 processes: not measured: {distributed.get('reason', 'unknown')}", ""]
    return lines


def _claims_section(results: dict[str, Any]) -> list[str]:
    """The article's claims, each with what this run measured and whether the claim holds."""
    found = results["article"]
    graphs = found.get("graphs") or {}
    debugging = found.get("debugging") or {}
    board = found.get("tensorboard") or {}
    parallel = found.get("data_parallelism") or {}
    sweep = (results.get("sweep") or {}).get("endpoints", {})
    pipelines = (results.get("training") or {}).get("pipelines", {})
    rows = []
    if graphs:
        rows.append((
            "TensorFlow uses a static graph defined before execution; you create a session and run it.",
            f"TF2 runs eagerly; `tf.function` traces a graph on first call ({number(graphs['tf_first_call_seconds'] * 1000, 'ms')} "
            f"vs {number(graphs['tf_later_call_seconds'] * 1000, 'ms')} later) and retraces per new input shape "
            f"({number(graphs['tf_traces_after_two_new_batch_sizes'])} traces for 3 shapes) unless given an input_signature.",
            "no longer: graphs are opt-in and traced from Python",
        ))  # fmt: skip
        rows.append((
            "PyTorch defines graphs dynamically.",
            f"Eager torch: first call {number(graphs['torch_first_call_seconds'] * 1000, 'ms')}, later "
            f"{number(graphs['torch_later_call_seconds'] * 1000, 'ms')}, no tracing step.",
            "holds (and TF2 eager is the same model)",
        ))  # fmt: skip
    if debugging:
        eager_lines = " ".join(debugging.get("keras_fit_run_functions_eagerly", []))
        rows.append((
            "TensorFlow cannot be debugged natively with Python; you must install tfdbg.",
            "pdb stopped inside a Keras layer during `fit` and read the tensor's values with "
            "`run_functions_eagerly(True)`" + (" (EagerTensor seen)" if "EagerTensor" in eager_lines else " (NOT seen)") + "; inside "
            "a torch module likewise.",
            "does not hold" if "EagerTensor" in eager_lines else "holds in this run",
        ))  # fmt: skip
    if board:
        wanted = {"epoch_loss", "epoch_accuracy"}
        same = all(wanted <= set(values["tags"].get(sub, [])) for values in board.values() for sub in ("train", "validation"))
        rows.append((
            "PyTorch has no TensorBoard; integrating the two is complex.",
            "torch.utils.tensorboard wrote the same train/validation tags as Keras " + ("(epoch_loss and epoch_accuracy under train/ and validation/ on both)" if same else "(tags missing on one side)")
            + "; the learning-curve plot above is read back from both runs' event files.",
            "does not hold" if same else "partly",
        ))  # fmt: skip
    grpc = sweep.get("tf_grpc", {}).get("concurrency_1", {})
    flask = sweep.get("flask_rest", {}).get("concurrency_1", {})
    torchserve = sweep.get("torchserve_rest", {}).get("concurrency_1", {})
    if grpc.get("p50_ms") and flask.get("p50_ms") and torchserve.get("p50_ms"):
        rows.append((
            "TensorFlow wins deployment (TF Serving, gRPC); PyTorch needs Flask or another REST API.",
            f"p50 at one client: TF gRPC {number(grpc['p50_ms'], 'ms')}, Flask {number(flask['p50_ms'], 'ms')}, "
            f"TorchServe {number(torchserve['p50_ms'], 'ms')}; PyTorch now has TorchServe (REST and gRPC).",
            "partly: both have a model server; gRPC is the fastest path measured" if grpc["p50_ms"] <= min(flask["p50_ms"], torchserve["p50_ms"])
            else "partly: both have a model server",
        ))  # fmt: skip
    else:
        rows.append(("TensorFlow wins deployment (TF Serving, gRPC); PyTorch needs Flask.", "not measured in this mode", "not measured"))
    if parallel:
        rows.append((
            "PyTorch has better data parallelism (nn.DataParallel); TensorFlow's needs manual work.",
            f"Here: {parallel['usable_cores']} cores, no GPU; tf.distribute.MirroredStrategy sees "
            f"{number(parallel['tf_mirrored_strategy_replicas'])} replica(s); torch gloo available: "
            f"{cell(parallel['torch_gloo_available'])}. Both offer multi-process data parallelism (DDP, "
            "MultiWorkerMirroredStrategy); nn.DataParallel is single-process multi-GPU and superseded by DDP.",
            "does not hold as stated: both have it; speed-up on this machine is bounded by its cores",
        ))  # fmt: skip
    if "tf" in pipelines and "torch" in pipelines and "steady_samples_per_second" in pipelines["tf"]:
        rows.append((
            "PyTorch is for prototyping; TensorFlow for production.",
            f"Same network, same data: test accuracy {number(pipelines['tf']['test_accuracy'])} (TF) vs "
            f"{number(pipelines['torch']['test_accuracy'])} (torch); training samples/s "
            f"{number(pipelines['tf']['steady_samples_per_second'])} vs {number(pipelines['torch']['steady_samples_per_second'])}; "
            "both export a served artifact.",
            "not a measurable claim; both produced production artifacts here",
        ))  # fmt: skip
    return ["## The article's claims against the measurements", "",
            table(("the article says", "this run measured", "still holds?"), rows), ""]  # fmt: skip


def render(results: dict[str, Any], settings: CompareSettings, plot_files: dict[str, str]) -> str:
    """The whole report as markdown."""
    machine = results["machine"]
    lines = [
        "# TensorFlow vs PyTorch: measured comparison",
        "",
        f"Generated {results['date']} by `{results['command']}` ({'quick' if settings.quick else 'full'} mode). "
        "Every number below was measured by this run. Other processes running on the machine make timings noisy; "
        f"the 1-minute load average at the start was {machine['load_average_1min']:.2f}.",
        "",
    ]
    if results["failures"]:
        lines += ["**Sections that failed:** " + "; ".join(f"{name}: {error}" for name, error in results["failures"].items()), ""]
    lines += ["## Machine", "", key_value_table({
        "CPU": machine["cpu_model"],
        "logical cores (usable by this process)": f"{machine['logical_cores']} ({machine['usable_cores']})",
        "memory": number(machine["memory_gib"], "GiB"),
        "OS, Python": f"{machine['os']}, Python {machine['python']}",
        "date": results["date"],
    }), ""]  # fmt: skip
    lines += ["Library versions:", "", key_value_table(results["versions"], ("library", "version")), ""]
    thread_rows = {key: (f"{value} (framework default)" if value == 0 else str(value)) for key, value in results["threads"].items()}
    lines += ["Thread settings (in the comparing process; training workers report theirs in the training section):", "",
              key_value_table(thread_rows), ""]  # fmt: skip
    lines += _ratio_section(results)
    lines += _training_section(results, plot_files)
    lines += _artifacts_section(results)
    lines += _inference_section(results, plot_files)
    lines += _serving_section(results, plot_files)
    lines += _article_section(results, settings)
    lines += _claims_section(results)
    lines += ["## Time each section took", "",
              table(("section", "seconds"), [(name, number(value, "s")) for name, value in results["section_seconds"].items()]), ""]  # fmt: skip
    return "\n".join(lines)


def draw_plots(results: dict[str, Any], output_dir: Path) -> dict[str, str]:
    """Every plot the results allow; returns name → file name relative to the report."""
    files: dict[str, str] = {}

    def draw(name: str, function: Callable[[Path], Path]) -> None:
        try:
            function(output_dir / f"{name}.png")
            files[name] = f"{name}.png"
        except Exception as error:  # a plot must not cost the report
            results["failures"][f"plot {name}"] = f"{type(error).__name__}: {error}"

    if results.get("training"):
        draw("learning_curves", lambda path: plots.learning_curves(results["training"]["curves"], path))
        draw("training_throughput", lambda path: plots.training_throughput(results["training"], path))
    if results.get("inference"):
        draw("inference_latency", lambda path: plots.inference_latency(results["inference"], path))
    sweep = results.get("sweep")
    if sweep:
        points = endpoints.load_points(sweep.get("endpoints", {}))
        distributions = {"/".join(path[:-1]): point["latencies_ms"] for path, point in points if point.get("concurrency") == 1 and point.get("latencies_ms")}
        series: dict[str, list[tuple[int, float, float]]] = {}
        for path, point in points:
            series.setdefault(path[0], []).append((point["concurrency"], point["throughput_per_second"], point["p99_ms"]))
        if distributions:
            draw("latency_distribution", lambda path: plots.latency_distributions(distributions, path))
        if series:
            draw("throughput_vs_concurrency", lambda path: plots.throughput_curves(series, path))
    return files


def _strip_raw(results: dict[str, Any]) -> dict[str, Any]:
    """The results without raw latency lists, for the JSON file."""
    if isinstance(results, dict):
        return {key: _strip_raw(value) for key, value in results.items() if key != "latencies_ms"}
    if isinstance(results, list):
        return [_strip_raw(value) for value in results]
    return results


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (one repeat, two epochs, no servers)")
    parser.add_argument("--output-dir", type=Path, default=Path("reports"), help="where the report and plots go")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the article's graph runs go")
    parser.add_argument("--serving", action=argparse.BooleanOptionalAction, default=None, help="start the servers (default: full mode only)")
    parser.add_argument("--distributed", action=argparse.BooleanOptionalAction, default=None, help="1 vs 2 process training (default: full mode only)")
    parser.add_argument("--repeats", type=int, default=None, help="training repeats per framework")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per repeat")
    parser.add_argument("--threads", type=int, default=None, help="fix intra/inter-op threads for training and inference (default: framework defaults)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write reports/comparison.md, comparison.json and the plots; print the ratio table."""
    arguments = build_parser().parse_args(argv)
    for name in ("repeats", "epochs"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            print(f"{PROG}: error: --{name} must be a positive integer, got {value}.", file=sys.stderr)
            return 2
    if arguments.epochs is not None and arguments.epochs < 2:
        print(f"{PROG}: error: --epochs must be at least 2: the first epoch is excluded from the steady state.", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = build_settings(arguments)
    shutil.rmtree(settings.work_dir, ignore_errors=True)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    for stale in settings.output_dir.glob("*.png"):
        stale.unlink()
    started = time.perf_counter()
    results = measure_everything(settings)
    plot_files = draw_plots(results, settings.output_dir)
    results["section_seconds"]["total"] = time.perf_counter() - started
    (settings.output_dir / REPORT_FILE).write_text(render(results, settings, plot_files) + "\n")
    (settings.output_dir / DATA_FILE).write_text(json.dumps(_strip_raw(results), indent=1, default=str) + "\n")
    print("\n".join(_ratio_section(results)))
    print(f"Report: {settings.output_dir / REPORT_FILE} ({len(plot_files)} plots) in {results['section_seconds']['total']:.0f} s")
    if results["failures"]:
        print(f"{PROG}: {len(results['failures'])} section(s) failed: {', '.join(results['failures'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
