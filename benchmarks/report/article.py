"""The report's answers to the article's questions, and its claims set against this run's measurements."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import article, event_files, labels
from benchmarks.report.markdown import cell, code_block, number, paragraph, section, table

if TYPE_CHECKING:
    from benchmarks.measure import Comparison


def _snippets(found: article.TensorSnippets) -> list[str]:
    lines = paragraph(
        "The article's two snippets, run today. Its TF1 snippet needed a session; in TF2 the same call runs eagerly. "
        "Both operands broadcast ((1, 3) × (3, 1) → (3, 3)), so both sides give a 3 × 3 matrix, not an element-wise "
        "product of equal shapes."
    )
    lines += [
        code_block(
            f">>> {article.TF_SNIPPET}\n{found.tf_eager}  # {found.tf_dtype}\n"
            f">>> # the article's session.run() through tf.compat.v1 gives the same: {found.same_in_eager_and_session}\n"
            f">>> {article.TORCH_SNIPPET}\n{found.torch}  # {found.torch_dtype} (NumPy's default)",
            "python",
        ),
        "",
    ]
    return lines + paragraph(
        "The code differs in spelling, not in what it can express; the dtypes differ because "
        "TensorFlow converts Python floats to float32 and torch keeps NumPy's float64."
    )


def _graphs(graphs: article.GraphTimings) -> list[str]:
    lines = paragraph(
        "The same untrained network as a `tf.function` (traced into a graph) and as an eager torch module, batch 1: "
        "first and later calls timed, and TensorFlow's traces counted as the input shape changes."
    )
    lines += [
        table(
            ("measurement", "value"),
            [
                ("tf.function first call (trace + run)", number(graphs.tf_first_call_seconds * 1000, "ms")),
                ("tf.function later calls, median", number(graphs.tf_later_call_seconds * 1000, "ms")),
                ("traces after 51 calls with the same shape", number(graphs.tf_traces_after_repeated_same_shape)),
                ("traces after two new batch sizes", number(graphs.tf_traces_after_two_new_batch_sizes)),
                ("traces after a NumPy input of a known shape", number(graphs.tf_traces_after_numpy_input)),
                (
                    "concrete functions with an input_signature, after batch 1, 64, 7",
                    cell(graphs.tf_concrete_functions_with_input_signature),
                ),
                ("eager torch first call", number(graphs.torch_first_call_seconds * 1000, "ms")),
                ("eager torch later calls, median", number(graphs.torch_later_call_seconds * 1000, "ms")),
                (
                    "eager torch first call at a new batch size",
                    number(graphs.torch_new_batch_size_call_seconds * 1000, "ms"),
                ),
            ],
        ),
        "",
    ]
    return lines + paragraph(
        f"Tracing makes TensorFlow's first call {number(graphs.tf_first_call_seconds / graphs.tf_later_call_seconds)}× "
        "its later ones and repeats for every new input shape unless an input signature fixes it; torch has no such "
        f"step. Both graphs are in TensorBoard's Graphs dashboard (written: TensorFlow {cell(graphs.tf_graph_written)}, "
        f"PyTorch {cell(graphs.torch_graph_written)}); `make tensorboard` shows them."
    )


def _debugging(found: article.Debugging) -> list[str]:
    lines = paragraph(
        "A `breakpoint()` inside a Keras layer's `call` (during `fit`, eagerly and traced) and inside a torch module's "
        "`forward`, answered by a real `pdb` whose commands (`p type(inputs).__name__`, `p inputs.shape`, the sum of "
        "the values) come from a script. What pdb printed:"
    )
    transcripts = {
        "Keras layer, run_functions_eagerly(True)": found.keras_eager,
        "Keras layer, traced graph (fit's default)": found.keras_traced,
        "torch module": found.torch_forward,
    }
    lines += [code_block("\n".join(f"# {name}\n" + "\n".join(text) for name, text in transcripts.items()), "text"), ""]
    return lines + paragraph(
        "Eagerly, pdb reads an `EagerTensor`'s values inside the Keras layer"
        + ("" if found.eager_tensor_seen else " (not seen in this run)")
        + "; traced, the breakpoint is hit once while tracing and the tensor is symbolic. "
        "tfdbg and sessions are TF1; TF2 has `tf.debugging.enable_check_numerics` (here it reported: "
        f'"{found.check_numerics}") and TensorBoard\'s Debugger V2 (available: {cell(found.debugger_v2_available)}).'
    )


def _tensorboard(inventories: dict[str, event_files.RunInventory]) -> list[str]:
    lines = paragraph(
        "The first training run of each pipeline, read back with TensorBoard's own data layer (`EventAccumulator` "
        "keeping every plugin's data): what each dashboard shows for each framework. HParams lists the "
        "hyperparameters and metrics the runs declare."
    )
    rows = []
    for dashboard in event_files.DASHBOARDS:
        rows.append(
            (
                dashboard,
                *(
                    f"{len(inventory.names(dashboard))}: {', '.join(inventory.entries[dashboard]) or '—'}"
                    for inventory in inventories.values()
                ),
            )
        )
    lines += [table(("dashboard", *(f"{labels.FRAMEWORK_NAMES[name]} entries" for name in inventories)), rows), ""]
    differences = event_files.differences(inventories)
    if not differences:
        return lines + paragraph("Every dashboard shows the same entries for both frameworks.")
    only = "; ".join(
        f"{dashboard}: {labels.FRAMEWORK_NAMES[name]} alone has {', '.join(names)}"
        for dashboard, by_framework in differences.items()
        for name, names in by_framework.items()
    )
    return lines + paragraph(f"Both frameworks fill every dashboard they write to; entries only one side has: {only}.")


def _deployment(comparison: Comparison) -> list[str]:
    lines = ["### Deployment", ""]
    grpc = comparison.sweep.at("tf-grpc", 1) if comparison.sweep else None
    rest = comparison.sweep.at("tf-rest", 1) if comparison.sweep else None
    if not (grpc and rest and grpc.latencies_seconds and rest.latencies_seconds):
        return lines + paragraph(f"gRPC against REST: not measured ({comparison.reason('sweep')}).")
    return lines + paragraph(
        f"The same {labels.TF_SERVER.split(' (')[0]}, one client, batch 1: gRPC p50 {number(grpc.latency.p50_ms, 'ms')}, "
        f"REST p50 {number(rest.latency.p50_ms, 'ms')}; REST costs {number(rest.latency.p50_ms / grpc.latency.p50_ms)}× "
        "gRPC for the same request, mostly JSON. Every endpoint's numbers are in the Serving section."
    )


def _data_parallelism(comparison: Comparison) -> list[str]:
    lines = ["### Data parallelism", ""]
    found = comparison.data_parallelism
    if found is not None:
        rows = [
            (
                labels.FRAMEWORK_NAMES["tf"],
                f"{len(found.tf_logical_devices)} ({', '.join(found.tf_logical_devices)})",
                f"MirroredStrategy: {found.tf_mirrored_strategy_replicas} replica(s); MultiWorkerMirroredStrategy: "
                f"{cell(found.tf_multi_worker_mirrored_strategy)}",
            ),
            (
                labels.FRAMEWORK_NAMES["torch"],
                f"{found.torch_cuda_devices} CUDA device(s)",
                f"DistributedDataParallel (gloo: {cell(found.torch_gloo_available)}, NCCL: {cell(found.torch_nccl_available)}); "
                f"nn.DataParallel: {cell(found.torch_data_parallel_available)}",
            ),
        ]
        lines += paragraph(f"What each framework reports on this machine ({found.usable_cores} usable cores):")
        lines += [table(("framework", "devices", "data parallelism offered"), rows), ""]
    distributed = comparison.distributed
    if distributed is None:
        return lines + paragraph(f"1 against 2 training processes: not measured ({comparison.reason('distributed')}).")
    rows = [
        (
            labels.FRAMEWORK_NAMES[run.framework],
            run.processes,
            number(run.samples_per_second, "/s"),
            number(distributed.speedup(run)),
            number(run.test_accuracy),
        )
        for run in distributed.runs
    ]
    lines += paragraph(
        "The same training command with one process and with the framework's launcher for two "
        "(steady-state samples/s over epochs 2..E, same global batch):"
    )
    beyond = [run for run in distributed.runs if (distributed.speedup(run) or 0) > run.processes]
    oddity = (
        f"A speed-up above the process count ({labels.FRAMEWORK_NAMES[beyond[0].framework]}) means the "
        "one-process run was slowed by something else, most likely its default thread pool competing for "
        "cores that other work was using; `--threads 1` compares them fairly."
        if beyond
        else ""
    )
    return (
        lines
        + [table(("framework", "processes", "samples/s", "speed-up", "test accuracy"), rows), ""]
        + paragraph(distributed.note, oddity)
    )


def questions(comparison: Comparison) -> list[str]:
    """The article's questions, each answered by code that ran in this comparison."""
    lines = ["## The article's questions", ""]
    for heading, measured, name, body in (
        ("### Code style: the two tensor snippets", comparison.snippets, "snippets", _snippets),
        ("### Static vs dynamic graphs", comparison.graphs, "graphs", _graphs),
        ("### Debugging", comparison.debugging, "debugging", _debugging),
        ("### TensorBoard for both", comparison.tensorboard, "tensorboard", _tensorboard),
    ):
        lines += section(heading, measured, comparison.reason(name), body)
    return lines + _deployment(comparison) + _data_parallelism(comparison)


def claims(comparison: Comparison) -> list[str]:
    """The article's claims, each with what this run measured and whether the claim holds."""
    rows = []
    graphs, debugging, parallel = comparison.graphs, comparison.debugging, comparison.data_parallelism
    if graphs:
        rows.append(
            (
                "TensorFlow uses a static graph defined before execution; you create a session and run it.",
                f"TF2 runs eagerly; `tf.function` traces a graph on first call ({number(graphs.tf_first_call_seconds * 1000, 'ms')} "
                f"vs {number(graphs.tf_later_call_seconds * 1000, 'ms')} later) and retraces per new input shape "
                f"({number(graphs.tf_traces_after_two_new_batch_sizes)} traces for 3 shapes) unless given an input_signature.",
                "no longer: graphs are opt-in and traced from Python",
            )
        )
        rows.append(
            (
                "PyTorch defines graphs dynamically.",
                f"Eager torch: first call {number(graphs.torch_first_call_seconds * 1000, 'ms')}, later "
                f"{number(graphs.torch_later_call_seconds * 1000, 'ms')}, no tracing step.",
                "holds (and TF2 eager is the same model)",
            )
        )
    if debugging:
        seen = debugging.eager_tensor_seen
        rows.append(
            (
                "TensorFlow cannot be debugged natively with Python; you must install tfdbg.",
                "pdb stopped inside a Keras layer during `fit` and read the tensor's values with "
                f"`run_functions_eagerly(True)` ({'EagerTensor seen' if seen else 'NOT seen'}); inside a torch module likewise.",
                "does not hold" if seen else "holds in this run",
            )
        )
    if comparison.tensorboard:
        same = not event_files.differences(comparison.tensorboard).get("Scalars", {}).get("torch")
        rows.append(
            (
                "PyTorch has no TensorBoard; integrating the two is complex.",
                "torch.utils.tensorboard wrote scalars, histograms, images, a graph and hparams that TensorBoard "
                'reads like Keras\'s (see "TensorBoard for both")' + ("" if same else "; some scalars only torch has"),
                "does not hold",
            )
        )
    grpc = comparison.sweep.at("tf-grpc", 1) if comparison.sweep else None
    flask = comparison.sweep.at("flask-rest", 1) if comparison.sweep else None
    torchserve = comparison.sweep.at("torchserve-rest", 1) if comparison.sweep else None
    if all(point is not None and point.latencies_seconds for point in (grpc, flask, torchserve)):
        p50 = {
            name: point.latency.p50_ms for name, point in (("grpc", grpc), ("flask", flask), ("torchserve", torchserve))
        }
        rows.append(
            (
                "TensorFlow wins deployment (TF Serving, gRPC); PyTorch needs Flask or another REST API.",
                f"p50 at one client: {labels.TF_SERVER} over gRPC {number(p50['grpc'], 'ms')}, {labels.FLASK_SERVER} "
                f"{number(p50['flask'], 'ms')}, {labels.TORCHSERVE} {number(p50['torchserve'], 'ms')}; PyTorch now has "
                "TorchServe (REST and gRPC).",
                "partly: both have a model server"
                + (
                    "; gRPC is the fastest path measured" if p50["grpc"] <= min(p50["flask"], p50["torchserve"]) else ""
                ),
            )
        )
    else:
        rows.append(
            (
                "TensorFlow wins deployment (TF Serving, gRPC); PyTorch needs Flask.",
                "not measured in this mode",
                "not measured",
            )
        )
    if parallel:
        rows.append(
            (
                "PyTorch has better data parallelism (nn.DataParallel); TensorFlow's needs manual work.",
                f"Here: {parallel.usable_cores} cores, no GPU; MirroredStrategy sees "
                f"{number(parallel.tf_mirrored_strategy_replicas)} replica(s); torch gloo available: "
                f"{cell(parallel.torch_gloo_available)}. Both offer multi-process data parallelism (DDP, "
                "MultiWorkerMirroredStrategy); nn.DataParallel is single-process multi-GPU and superseded by DDP.",
                "does not hold as stated: both have it; speed-up on this machine is bounded by its cores",
            )
        )
    pipelines = comparison.training.pipelines if comparison.training else {}
    if (
        {"tf", "torch"} <= set(pipelines)
        and pipelines["tf"].steady_samples_per_second
        and pipelines["torch"].steady_samples_per_second
    ):
        rows.append(
            (
                "PyTorch is for prototyping; TensorFlow for production.",
                f"Same network, same data: test accuracy {number(pipelines['tf'].test_accuracy)} (TF) vs "
                f"{number(pipelines['torch'].test_accuracy)} (torch); training samples/s "
                f"{number(pipelines['tf'].steady_samples_per_second)} vs {number(pipelines['torch'].steady_samples_per_second)}; "
                "both export a served artifact.",
                "not a measurable claim; both produced production artifacts here",
            )
        )
    lines = ["## The article's claims against the measurements", ""]
    lines += paragraph(
        "The article's claims, each set against what this run measured; the verdicts are computed "
        "from the measurements, not written in advance."
    )
    outdated = sum(1 for row in rows if row[2].startswith(("does not hold", "no longer")))
    return (
        lines
        + [table(("the article says", "this run measured", "still holds?"), rows), ""]
        + paragraph(
            f"{outdated} of the {len(rows)} claims checked no longer hold as stated: most describe TensorFlow 1, which "
            "TensorFlow 2 has replaced."
        )
    )
