"""The report's serving sections: every endpoint under load, each server against its floor, batching on and off."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import labels, load
from benchmarks.report.markdown import cell, figures_block, number, paragraph, ratio, section, table
from benchmarks.report.summary import generator_bound_note

if TYPE_CHECKING:
    from benchmarks.batching_sizes import BatchingBySize
    from benchmarks.floors import FloorsResult
    from benchmarks.http_load import ExternalSweep
    from benchmarks.measure import Comparison
    from benchmarks.serving_tf import TFServingResult
    from benchmarks.serving_torch import TorchServingResult
    from benchmarks.sweep import SweepResult
    from benchmarks.torchserve_batching import TorchServeBatching

LOAD_HEADERS = (
    "clients",
    "p50",
    "p90",
    "p99",
    "throughput (window range)",
    "errors",
    "stable",
    "generator cores",
    "generator-bound",
)


def load_cells(point: load.LoadResult) -> tuple:
    """One load point's columns under LOAD_HEADERS."""
    low, high = point.throughput_range
    summary = point.latency if point.latencies_seconds else None
    return (
        number(point.concurrency),
        number(summary.p50_ms if summary else None, "ms"),
        number(summary.p90_ms if summary else None, "ms"),
        number(summary.p99_ms if summary else None, "ms"),
        f"{number(point.throughput_per_second, '/s')} ({number(low)}–{number(high)})",
        str(point.errors),
        cell(point.stable),
        number(point.generator_cores),
        cell(point.generator_bound),
    )


def sweep_section(sweep: SweepResult, figures: dict[str, str]) -> list[str]:
    """Every endpoint at 1, 4 and 16 closed-loop clients."""
    lines = paragraph(
        "Closed-loop load (`benchmarks.load`): each client thread sends one batch-1 request at a time with its own "
        "client object; warm-up is discarded; windows repeat until two consecutive ones agree within 10 % in "
        "throughput and p50 (Triton perf_analyzer's rule), and the last two windows are reported, with their lowest "
        "and highest throughput in brackets.",
        generator_bound_note(),
        "The servers share this machine's cores with the generator." if not sweep.given_by_environment else "",
    )
    rows = [
        (sweep_item.endpoint.title, labels.FRAMEWORK_NAMES[sweep_item.endpoint.framework], *load_cells(point))
        for sweep_item in sweep.endpoints
        for point in sweep_item.points
    ]
    lines += [table(("endpoint (server, protocol)", "serves", *LOAD_HEADERS), rows), ""]
    failed = [f"- {item.endpoint.title}: not measured: {item.error}" for item in sweep.endpoints if item.error]
    lines += failed + ([""] if failed else [])
    single = {
        item.endpoint.title: item.at(1) for item in sweep.endpoints if item.at(1) and item.at(1).latencies_seconds
    }
    if single:
        fastest = min(single, key=lambda name: single[name].latency.p50_ms)
        lines += [
            *paragraph(
                f"With one client, {fastest} answers fastest (p50 {number(single[fastest].latency.p50_ms, 'ms')})."
            )
        ]
    return (
        lines
        + figures_block(figures, "latency_distribution", "throughput_vs_concurrency")
        + external_section(sweep.external)
    )


def external_section(external: ExternalSweep | None) -> list[str]:
    """The REST endpoints again, under hey or wrk."""
    if external is None:
        return paragraph(
            "No external load generator was installed, so the REST endpoints were measured by the Python generator "
            "alone; `apt-get install hey` (or `wrk`) adds a second measurement that costs the servers less CPU."
        )
    lines = paragraph(
        f"The same REST endpoints under `{external.generator}`, a compiled load generator that is not part of this "
        f"project (`benchmarks.http_load`): after a discarded warm-up, each point is {number(external.seconds_per_point, 's')} "
        "of that many kept-alive connections sending the same batch-1 body back to back."
        + (" hey reports latencies to 0.1 ms." if external.generator == "hey" else "")
    )
    rows = [
        (
            item.endpoint.title,
            labels.FRAMEWORK_NAMES[item.endpoint.framework],
            number(point.concurrency),
            number(point.p50_ms, "ms"),
            number(point.p90_ms, "ms"),
            number(point.p99_ms, "ms"),
            number(point.throughput_per_second, "/s"),
            str(point.errors),
            number(point.generator_cores),
        )
        for item in external.endpoints
        for point in item.points
    ]
    lines += [
        table(
            (
                "endpoint (server, protocol)",
                "serves",
                "connections",
                "p50",
                "p90",
                "p99",
                "throughput",
                "errors",
                "generator cores",
            ),
            rows,
        ),
        "",
    ]
    failed = [
        f"- {item.endpoint.title}: not measured by {external.generator}: {item.error}"
        for item in external.endpoints
        if item.error
    ]
    return lines + failed + ([""] if failed else [])


def tf_server_section(measured: TFServingResult) -> list[str]:
    """The TF server against its floor."""
    lines = paragraph(
        f"`benchmarks.serving_tf` starts {labels.TF_SERVER} and times batch-1 `Predict` calls over "
        "gRPC from one client: the digits model, an identity model whose signature returns its input (gRPC and the "
        "server's plumbing alone), and the same SavedModel signature called in-process."
    )
    rows = [
        (name, number(summary.p50_ms, "ms"), number(summary.p99_ms, "ms"), number(summary.count))
        for name, summary in (
            ("digits model over gRPC", measured.grpc),
            ("identity model over gRPC", measured.trivial_grpc),
            ("signature in-process", measured.in_process),
        )
    ]
    lines += [table(("call, batch 1", "p50", "p99", "calls"), rows), ""]
    lines += paragraph(
        f"The digits call costs {number(measured.latency_ratio)}× the floor (identity call + in-process call): what the "
        "server adds beyond plumbing and the model itself."
    )
    return lines


FLOORS_NAMES = {
    "nginx": "nginx answering a fixed body (the floor)",
    "front-end": f"{labels.FLASK_SERVER}: the front end's fixed answer, before any framework (floor)",
    "flask-noop": f"{labels.FLASK_SERVER}: a Flask route that does no work (floor)",
    "flask": f"{labels.FLASK_SERVER}, REST",
    "tfserving": f"{labels.TF_SERVER}, REST",
    "torchserve": f"{labels.TORCHSERVE}, REST",
    "torchserve-noop": f"{labels.TORCHSERVE}, REST, no-op handler",
}


def floors_section(measured: FloorsResult, command: str) -> list[str]:
    """The machine, the floor (nginx) and the servers measured against it in one run; the targets are in Ratios."""
    from benchmarks.floors import MEMORY_NOTE, machine_lines, servers_table

    lines = paragraph(
        "`benchmarks.floors` starts nginx answering a fixed body of the size of a real answer (what HTTP alone costs "
        "on this machine), the Python REST servers and TorchServe with a no-op handler beside the real one, each on "
        "free ports as `make serve` starts it, and drives each at 1 and at 16 connections in rounds that take turns. "
        "On the Flask server it also drives two paths that do no work: one answered by the front end before Flask "
        "runs, and a Flask route; a missed target is shown beside the same figure for them."
    )
    lines += paragraph(*machine_lines(measured, command))
    lines += [*servers_table(measured, FLOORS_NAMES), ""]
    if "nginx" not in measured.servers:
        lines += paragraph(
            "nginx is not installed here, so the servers' figures are reported against the front end's fixed answer, "
            "with no target."
        )
    return lines + paragraph(MEMORY_NOTE, "The targets computed from these figures are in the Ratios section.")


def tf_batching_section(measured: BatchingBySize) -> list[str]:
    """The TF server's dynamic batching off against on, at every model size, and the crossover."""
    from benchmarks.batching_sizes import crossover_sentence, format_table

    lines = paragraph(
        f"`benchmarks.batching_sizes` builds the digits network (dense, dense of half the width, logits) at each "
        f"first hidden width, exports it with the TF pipeline's export code, and starts two instances of "
        f"{labels.TF_SERVER} serving all of them, one with `--enable_batching` (max batch size "
        f"{measured.max_batch_size}, batch timeout {number(measured.batch_timeout_ms, 'ms')}, "
        f"{measured.num_batch_threads} batch thread per worker; {measured.workers} workers). `{measured.generator}` "
        f"sends the one-digit predict body over REST on {measured.clients} connections, "
        f"{number(measured.seconds, 's')} per run, batching off and on in turn in {measured.rounds} round(s); figures "
        f"are medians over the rounds (load average after the last: {measured.load_average or 'not read'})."
    )
    lines += [*format_table(measured, labels.TF_SERVER), ""]
    return lines + paragraph(crossover_sentence(measured))


def torch_servers_section(measured: TorchServingResult) -> list[str]:
    """Flask and TorchServe against the model called in process."""
    lines = paragraph(
        "`benchmarks.serving_torch` times batch-1 requests from one client over a kept-alive connection: Flask's "
        "predict route and a no-op route on the same Flask server (uvicorn) (alternating request by request), TorchServe "
        "as configured and with batching off, and the model called in process (ONNX Runtime, one thread), as each "
        "Flask worker runs it."
    )
    settings = measured.torchserve_settings
    configured = (
        f" (batch size {settings.get('batch_size')}, max delay {settings.get('max_batch_delay_ms')} ms)"
        if settings
        else ""
    )
    rows = [
        (name, number(summary.p50_ms, "ms"), number(summary.p99_ms, "ms"), number(summary.count))
        for name, summary in (
            ("the model in process (ONNX Runtime, 1 thread)", measured.in_process),
            (f"{labels.FLASK_SERVER}, no-op route", measured.flask_noop),
            (f"{labels.FLASK_SERVER}, predict", measured.flask_predict),
            (f"{labels.TORCHSERVE}, as configured{configured}", measured.torchserve_predict),
            (f"{labels.TORCHSERVE}, batching off", measured.torchserve_unbatched_predict),
        )
        if summary is not None
    ]
    lines += [table(("call, batch 1", "p50", "p99", "requests"), rows), ""]
    sentence = f"Flask's predict costs {number(measured.flask_ratio)}× its floor (no-op route + in-process call)"
    if measured.torchserve_unbatched_predict:
        sentence += (
            f"; TorchServe with batching off takes "
            f"{ratio(measured.torchserve_unbatched_predict.p50_ms, measured.flask_predict.p50_ms)} Flask's p50, "
            "the price of its hop from the Java front end to a Python worker"
        )
    return lines + paragraph(sentence + ".")


def torchserve_batching_section(batching: TorchServeBatching) -> list[str]:
    """TorchServe's server-side batching off against on, at 16 clients."""
    lines = paragraph(
        f"Two {labels.TORCHSERVE} instances, identical but for the model's batch size (1, against the archive's own "
        f"batch size and delay, as TorchServe registered them), each driven over REST by {batching.clients} "
        f"closed-loop clients; off and on alternate in {batching.rounds} rounds and each setting's rounds are pooled.",
        "This is the digits model alone: across model sizes, as for the TF server above, TorchServe would need an "
        "ONNX export and an archive per width and its own Python workers for every model registered (about "
        "240 MB each), a dozen or more workers beside the JVM on this machine, so it is not measured by size.",
    )
    rows = [
        (
            name.replace("_", " "),
            number(setting.batch_size),
            number(setting.max_batch_delay_ms, "ms"),
            number(setting.workers),
            *load_cells(setting.load),
        )
        for name, setting in (("batching_off", batching.batching_off), ("batching_on", batching.batching_on))
    ]
    lines += [table(("setting", "batch size", "max batch delay", "workers", *LOAD_HEADERS), rows), ""]
    if batching.batching_off.batch_size != 1:
        lines += paragraph(
            f"**The batching-off instance registered batch size {batching.batching_off.batch_size}, not 1**: the "
            "override did not reach TorchServe (the archive's own model-config.yaml wins), so this table does not "
            "compare batching off with on."
        )
    growth = batching.p99_growth_ms
    lines += paragraph(
        f"Throughput on / off: {number(batching.throughput_ratio)}; the p99 {'grew' if growth >= 0 else 'shrank'} by "
        f"{number(abs(growth), 'ms')} with batching on.",
        ""
        if batching.throughput_ratio > 1
        else "Batching lost here: the clients, TorchServe's front end and its workers share the same few cores, so "
        "waiting to fill a batch costs more than the model calls it saves.",
    )
    return lines


def serving(comparison: Comparison, figures: dict[str, str]) -> list[str]:
    """The whole serving section."""
    lines = ["## Serving", ""]
    lines += paragraph(
        'Every figure here names the server that produced it; "The servers measured" above says '
        "which of them are stand-ins."
    )
    torch_serving = comparison.torch_serving
    for heading, measured, name, body in (
        ("### Every endpoint under load", comparison.sweep, "sweep", lambda sweep: sweep_section(sweep, figures)),
        (
            "### The REST servers against the floor of this machine",
            comparison.floors,
            "floors",
            lambda floors: floors_section(floors, comparison.command),
        ),
        (f"### {labels.TF_SERVER} against its floor", comparison.tf_serving, "tf serving", tf_server_section),
        (
            f"### Batching on vs off for {labels.TF_SERVER}, by model size",
            comparison.tf_batching,
            "tf batching",
            tf_batching_section,
        ),
        (
            f"### {labels.FLASK_SERVER} and {labels.TORCHSERVE} against their floor",
            torch_serving,
            "torch serving",
            torch_servers_section,
        ),
        (
            f"### Batching on vs off for {labels.TORCHSERVE}",
            torch_serving.batching if torch_serving else None,
            "torch serving",
            torchserve_batching_section,
        ),
    ):
        lines += section(heading, measured, comparison.reason(name), body)
    return lines
