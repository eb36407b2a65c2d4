"""Deployment formats side by side: the TF SavedModel, eager torch, TorchScript, the AOTInductor package, ONNX Runtime.

    python -m benchmarks.deployment_formats --tf-export models/tf/digits/1 --torch-export models/torch/digits/1

For each format, in one process: export time (the torch formats are exported afresh from the trained weights), file
size, load to first answer, and call latency p50/p99 at batch 1 and 64 with one intra-op thread (as a Flask
worker runs it); then the Flask app's REST p50 at batch 1 with each format it can serve, one request at a time over a
kept-alive connection, all in the same run. `measure()` returns the numbers for `make compare`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import stats
from benchmarks.inference import directory_bytes
from experiment import artifacts
from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m benchmarks.deployment_formats"
BATCH_SIZES = (1, 64)
FLASK_FORMATS = ("onnx", "pt2", "torchscript")
START_TIMEOUT_SECONDS = 180.0

# Per path: the label, who maintains the format, and what loads it outside this project.
PATHS: dict[str, dict[str, str]] = {
    "savedmodel": {
        "label": "TF SavedModel, session call (`signatures['serving_default']`)",
        "status": "maintained",
        "loaders": "TensorFlow (Python, C, C++, Java via TF), TF Serving, TF Lite converter, KServe",
    },
    "eager": {
        "label": "PyTorch eager `nn.Module`",
        "status": "maintained",
        "loaders": "Python with the model's class (no artifact)",
    },
    "torchscript": {
        "label": "TorchScript `model.pt` (legacy)",
        "status": "deprecated",
        "loaders": "Python, libtorch C++ (`torch::jit::load`), TorchServe",
    },
    "pt2": {
        "label": "AOTInductor `model.pt2`, called from Python",
        "status": "maintained",
        "loaders": "Python (`aoti_load_package`), C++ (`AOTIModelPackageLoader`, no Python)",
    },
    "onnx": {
        "label": "ONNX `model.onnx` in ONNX Runtime",
        "status": "maintained",
        "loaders": "ONNX Runtime (Python, C, C++, C#, Java, JS), TorchServe handler, Triton, KServe",
    },
}


@dataclasses.dataclass(frozen=True)
class FormatMeasurement:
    """One deployment path's numbers (None where a number does not apply, e.g. eager has no file)."""

    path: str  # a key of PATHS
    file_bytes: int | None
    export_seconds: float | None
    load_seconds: float  # load + the first batch-1 answer
    latency: dict[int, stats.LatencySummary]  # batch size → call latency
    flask_rest: stats.LatencySummary | None = None  # Flask REST batch 1 with this format, where Flask serves it

    @property
    def label(self) -> str:
        return PATHS[self.path]["label"]


@dataclasses.dataclass(frozen=True)
class DeploymentFormats:
    """Every path measured in one run, plus how the run was made."""

    formats: list[FormatMeasurement]
    calls: int
    requests: int
    compiler: str | None  # the C++ compiler AOTInductor used, or None (then no .pt2 row)

    def get(self, path: str) -> FormatMeasurement | None:
        return next((measured for measured in self.formats if measured.path == path), None)


def _time_calls(call: Callable[[], Any], count: int, warmup: int) -> stats.LatencySummary:
    return stats.summarize_seconds(stats.time_calls(call, count, warmup))


def _measure_path(
    path: str,
    load: Callable[[], Callable[[np.ndarray], Any]],
    images: np.ndarray,
    calls: int,
    file_bytes: int | None,
    export_seconds: float | None,
) -> FormatMeasurement:
    """Load (timed up to the first batch-1 answer), then time calls at each batch size."""
    started = time.perf_counter()
    run = load()
    run(images[:1])
    load_seconds = time.perf_counter() - started
    latency = {}
    for batch_size in BATCH_SIZES:
        batch = np.ascontiguousarray(images[:batch_size], dtype=np.float32)  # (B, H, W)
        latency[batch_size] = _time_calls(lambda batch=batch: run(batch), calls, max(calls // 10, 10))
    return FormatMeasurement(path, file_bytes, export_seconds, load_seconds, latency)


def _flask_rest(
    base_path: Path, export_format: str, image: np.ndarray, requests_count: int, log_dir: Path
) -> stats.LatencySummary:
    """Batch-1 REST latency of one Flask worker serving base_path in export_format."""
    import requests

    from serving import runtime
    from serving.runtime import flask_app

    environment = {"FLASK_MODEL_POLL_SECONDS": "0", "FLASK_MODEL_FORMAT": export_format, "WEB_CONCURRENCY": "1"}
    spec = flask_app.spec(runtime.free_port(), base_path=base_path.resolve(), environment=environment)
    body = json.dumps({"instances": image.tolist()})
    with runtime.start(spec, log_dir / f"flask-{export_format}.log", timeout=START_TIMEOUT_SECONDS) as server:
        url = server.spec.endpoint("flask-rest").address + "/v1/models/digits:predict"
        with requests.Session() as session:

            def call() -> None:
                response = session.post(url, data=body, headers={"Content-Type": "application/json"})
                if response.status_code != 200:
                    raise RuntimeError(
                        f"Flask ({export_format}) answered {response.status_code}: {response.text[:200]}"
                    )

            return _time_calls(call, requests_count, max(requests_count // 10, 10))


def measure(
    tf_export: Path,
    torch_export: Path,
    images: np.ndarray,
    work_dir: Path,
    calls: int = 2000,
    requests: int = 500,
    include_flask: bool = True,
) -> DeploymentFormats:
    """Export the torch formats from torch_export's weights into work_dir, then measure every path (see the module)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import onnxruntime
    import tensorflow as tf
    import torch

    from experiment.spec import SIGNATURE_NAME, NetworkSpec
    from torch_pipeline import export
    from torch_pipeline.model import ServingModel, build_model

    work_dir = Path(work_dir)
    version_dir = work_dir / "digits" / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    metadata = artifacts.read_metadata(torch_export)
    spec = NetworkSpec.from_dict(metadata["network"])
    network = build_model(spec)
    weights = _onnx_weights(Path(torch_export) / artifacts.ONNX_FILE)
    network.load_state_dict(
        {name: torch.from_numpy(weights[f"network.{name}"].copy()) for name in network.state_dict()}
    )
    network.eval()
    compiler = export.find_cpp_compiler()
    wanted = ("onnx", "pt2", "torchscript") if compiler else ("onnx", "torchscript")
    records = {
        record["format"]: record
        for record in export.export_formats(network, version_dir, wanted, work_dir / export.INDUCTOR_CACHE_FOLDER)
    }
    artifacts.write_metadata(version_dir, {**metadata, "artifacts": list(records.values())})

    def file_facts(export_format: str) -> tuple[int, float]:
        return records[export_format]["bytes"], records[export_format]["export_seconds"]

    def torch_runner(module: Callable[[torch.Tensor], Any]) -> Callable[[np.ndarray], Any]:
        def run(batch: np.ndarray) -> Any:
            with torch.inference_mode():
                return module(torch.from_numpy(batch))

        return run

    def load_savedmodel() -> Callable[[np.ndarray], Any]:
        signature = tf.saved_model.load(str(tf_export)).signatures[SIGNATURE_NAME]
        return lambda batch: signature(images=tf.constant(batch))

    def load_eager() -> Callable[[np.ndarray], Any]:
        return torch_runner(ServingModel(network).eval())

    def load_onnx() -> Callable[[np.ndarray], Any]:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(version_dir / artifacts.ONNX_FILE), options, providers=["CPUExecutionProvider"]
        )
        return lambda batch: session.run(None, {"images": batch})

    loaders: list[tuple[str, Callable[[], Callable[[np.ndarray], Any]], int | None, float | None]] = [
        ("savedmodel", load_savedmodel, directory_bytes(tf_export), None),
        ("eager", load_eager, None, None),
        (
            "torchscript",
            lambda: torch_runner(torch.jit.load(str(version_dir / artifacts.TORCHSCRIPT_FILE)).eval()),
            *file_facts("torchscript"),
        ),
        ("onnx", load_onnx, *file_facts("onnx")),
    ]
    if "pt2" in records:
        loaders.insert(
            3,
            (
                "pt2",
                lambda: torch_runner(torch._inductor.aoti_load_package(str(version_dir / artifacts.AOTI_FILE))),
                *file_facts("pt2"),
            ),
        )

    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one intra-op thread, as each Flask worker and TorchServe worker runs
    try:
        measured = [_measure_path(name, load, images, calls, size, seconds) for name, load, size, seconds in loaders]
    finally:
        torch.set_num_threads(previous_threads)

    if include_flask:
        rest = {
            fmt: _flask_rest(version_dir.parent, fmt, images[:1], requests, work_dir)
            for fmt in FLASK_FORMATS
            if fmt in records
        }
        measured = [dataclasses.replace(row, flask_rest=rest.get(row.path)) for row in measured]
    return DeploymentFormats(measured, calls, requests, compiler)


def _onnx_weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {tensor.name: numpy_helper.to_array(tensor) for tensor in onnx.load(str(path)).graph.initializer}


def format_report(result: DeploymentFormats) -> str:
    """The numbers as a plain-text table."""
    lines = [
        f"{'path':<48} {'file':>10} {'export':>8} {'load':>9} {'b1 p50':>9} {'b1 p99':>9} {'b64 p50':>9} "
        f"{'b64 p99':>9} {'REST p50':>9}"
    ]
    for row in result.formats:
        size = f"{row.file_bytes / 1000:.0f} KB" if row.file_bytes else "-"
        exported = f"{row.export_seconds:.1f} s" if row.export_seconds is not None else "-"
        rest = f"{row.flask_rest.p50_ms:.2f} ms" if row.flask_rest else "-"
        lines.append(
            f"{PATHS[row.path]['label'][:48]:<48} {size:>10} {exported:>8} {row.load_seconds * 1000:>6.0f} ms "
            f"{row.latency[1].p50_ms * 1000:>6.1f} µs {row.latency[1].p99_ms * 1000:>6.1f} µs "
            f"{row.latency[64].p50_ms * 1000:>6.1f} µs {row.latency[64].p99_ms * 1000:>6.1f} µs {rest:>9}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
        parser.add_argument("--tf-export", type=Path, required=True, help="a SavedModel version folder")
        parser.add_argument("--torch-export", type=Path, required=True, help="a torch version folder with model.onnx")
        parser.add_argument("--calls", type=int, default=2000, help="timed calls per path and batch size")
        parser.add_argument("--requests", type=int, default=500, help="timed REST requests per Flask format")
        parser.add_argument("--no-flask", dest="flask", action="store_false", help="in-process paths only")
        arguments = parser.parse_args(argv)
        for folder, name in ((arguments.tf_export, "saved_model.pb"), (arguments.torch_export, artifacts.ONNX_FILE)):
            if not (folder / name).is_file():
                raise UsageError(f"{folder} has no {name}; train with `make train-tf train-torch` first.")
        from experiment.data import load_dataset

        images = load_dataset(seed=0).test.images
        work_dir = Path(tempfile.mkdtemp(prefix="deployment-formats-"))
        try:
            result = measure(
                arguments.tf_export,
                arguments.torch_export,
                images,
                work_dir,
                arguments.calls,
                arguments.requests,
                arguments.flask,
            )
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        print(format_report(result))
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
