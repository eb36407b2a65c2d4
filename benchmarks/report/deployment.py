"""The report's deployment-formats section: every format measured in one run, and the article's deployment claims."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.deployment_formats import BATCH_SIZES, PATHS, DeploymentFormats
from benchmarks.report.markdown import number, paragraph, section, table

if TYPE_CHECKING:
    from benchmarks.measure import Comparison

HEADING = "## Deployment formats"
METHOD = (
    "One process, one intra-op thread (as each Flask or TorchServe worker runs), NumPy input as a client sends it. "
    "The torch formats are exported afresh from the trained weights in this run, so their export time is measured "
    "here; `load` is from opening the file to the first batch-1 answer. Flask REST is one Flask worker serving that "
    "format (`FLASK_MODEL_FORMAT`), batch 1, one request at a time over a kept-alive connection, in the same run."
)


def deployment_formats(comparison: Comparison) -> list[str]:
    """The section (or why it is missing)."""
    return section(HEADING, comparison.deployment_formats, comparison.reason("deployment formats"), _body)


def _micro(summary) -> str:
    return number(summary.p50_ms * 1000, "µs")


def _body(result: DeploymentFormats) -> list[str]:
    lines = paragraph(
        METHOD, f"{result.calls} timed calls per path and batch size; {result.requests} REST requests per Flask format."
    )
    rows = []
    for row in result.formats:
        facts = PATHS[row.path]
        rows.append(
            (
                facts["label"],
                number(row.file_bytes / 1024, "KiB") if row.file_bytes else "—",
                number(row.export_seconds, "s") if row.export_seconds is not None else "—",
                number(row.load_seconds * 1000, "ms"),
                *[
                    f"{_micro(row.latency[size])} / {number(row.latency[size].p99_ms * 1000, 'µs')}"
                    for size in BATCH_SIZES
                ],
                number(row.flask_rest.p50_ms, "ms") if row.flask_rest else "—",
                facts["status"],
                facts["loaders"],
            )
        )
    headers = (
        "path",
        "file",
        "export",
        "load to first answer",
        "batch 1 p50 / p99",
        "batch 64 p50 / p99",
        "Flask REST p50",
        "format",
        "loaded by",
    )
    lines += [table(headers, rows), ""]
    if result.compiler is None:
        lines += paragraph("No C++ compiler was found, so the AOTInductor package was not built in this run.")
    return lines + _claims(result)


def _claims(result: DeploymentFormats) -> list[str]:
    """The article's deployment claims restated against the paths measured above."""
    onnx, pt2, script, eager = (result.get(name) for name in ("onnx", "pt2", "torchscript", "eager"))
    saved = result.get("savedmodel")
    lines = ["### The article's deployment claims, restated", ""]
    rows = [
        (
            "PyTorch models are deployed by converting them to TorchScript (or serving them with TorchServe).",
            "TorchScript is deprecated (torch 2.13 warns on every `torch.jit.script`/`load`); PyTorch's path is "
            "`torch.export`, then AOTInductor (`.pt2`) or ONNX. TorchServe's repository was archived in August 2025.",
            "no longer",
        ),
        (
            "TensorFlow has the better deployment story: SavedModel + TF Serving, usable from other languages.",
            "SavedModel + TF Serving remain maintained; PyTorch now has two maintained artifacts that load without "
            "Python: the `.pt2` (C++ via libtorch) and `.onnx` (ONNX Runtime in C, C++, C#, Java, JavaScript).",
            "partly: the gap has closed",
        ),
    ]
    if onnx and saved:
        fastest = min(result.formats, key=lambda row: row.latency[1].p50_ms)
        serialized = fastest.path not in ("eager", "savedmodel")
        rows.append(
            (
                "A compiled/serialized model is faster to call than the framework's Python model.",
                f"Batch 1 p50: ONNX Runtime {_micro(onnx.latency[1])}, "
                + (f"AOTInductor {_micro(pt2.latency[1])}, " if pt2 else "")
                + (f"TorchScript {_micro(script.latency[1])}, " if script else "")
                + (f"eager {_micro(eager.latency[1])}, " if eager else "")
                + f"SavedModel session call {_micro(saved.latency[1])}.",
                f"{'holds' if serialized else 'not here'} (fastest here: {PATHS[fastest.path]['label'].split(' in ')[0]})",
            )
        )
    if onnx and onnx.flask_rest and any(row.flask_rest for row in result.formats if row is not onnx):
        slowest = max((row for row in result.formats if row.flask_rest), key=lambda row: row.flask_rest.p50_ms)
        rows.append(
            (
                "The model format decides serving latency.",
                f"Behind Flask, REST p50 is {number(onnx.flask_rest.p50_ms, 'ms')} with ONNX Runtime and "
                f"{number(slowest.flask_rest.p50_ms, 'ms')} with {PATHS[slowest.path]['label'].split(' ')[0]} "
                "(the slowest here): HTTP, JSON and the WSGI stack cost more than the model call.",
                "not behind a REST server, for a model this small",
            )
        )
    return lines + [table(("claim", "measured here", "holds?"), rows), ""]
