"""`python -m benchmarks.serving_tf`: the TensorFlow Serving–compatible server's speed against its own floor.

Prints, in one run: batch-1 Predict p50/p99 over gRPC on loopback; the p50 of calling the same SavedModel
signature in-process; the p50 of Predict on a trivial SavedModel whose signature returns its input (the cost of
gRPC and the server's plumbing alone); and the ratio against the target digits p50 ≤ 1.3 × (trivial + in-process).
Dynamic batching, off against on across model sizes, is `benchmarks.batching_sizes`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stats import LatencySummary, summarize_seconds
from experiment import library_logs
from experiment.artifacts import latest_version
from experiment.errors import UsageError
from experiment.spec import INPUT_NAME, SIGNATURE_NAME

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 180.0
IDENTITY_MODEL = "identity"
LATENCY_TARGET = 1.3


@dataclasses.dataclass(frozen=True)
class TFServingResult:
    """The compatible server's batch-1 latency against its floor."""

    version: int
    cpu_count: int
    grpc: LatencySummary  # digits model, batch 1, one client
    trivial_grpc: LatencySummary  # identity model: gRPC and the server's plumbing alone
    in_process: LatencySummary  # the same SavedModel signature called in-process

    @property
    def latency_ratio(self) -> float:
        """Digits p50 over the floor (identity-model p50 + in-process p50)."""
        return self.grpc.p50_ms / (self.trivial_grpc.p50_ms + self.in_process.p50_ms)


def write_identity_model(base_path: Path) -> Path:
    """Write version 1 of a SavedModel whose serving_default returns `images` unchanged; returns its folder."""
    import tensorflow as tf

    class Identity(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8], tf.float32, name=INPUT_NAME)])
        def serve(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
            return {INPUT_NAME: tf.identity(images)}

    module = Identity()
    directory = Path(base_path) / "1"
    tf.saved_model.save(module, str(directory), signatures={SIGNATURE_NAME: module.serve})
    return directory


def _start_server(model_name: str, model_base_path: Path | None, flags: list[str], log_path: Path) -> Any:
    """`python -m serving.tfserving` on free ports through serving.runtime, ready; returns the managed process."""
    from serving import runtime
    from serving.runtime import tfserving

    spec = tfserving.spec(tfserving.TFServingPorts.free(rest=False), model_name, model_base_path, flags)
    return runtime.start(spec, log_path, timeout=START_TIMEOUT_SECONDS)


def _grpc_address(server: Any) -> str:
    return server.spec.endpoint("tf-grpc").address


def _predict_request(model_name: str, images: np.ndarray):
    from tensorflow.core.framework import types_pb2
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = SIGNATURE_NAME
    tensor = request.inputs[INPUT_NAME]
    tensor.dtype = types_pb2.DT_FLOAT
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=size) for size in images.shape])
    tensor.tensor_content = np.ascontiguousarray(images, dtype=np.float32).tobytes()
    return request


def measure_grpc_latency(
    address: str, model_name: str, image: np.ndarray, count: int = 2000, warmup: int = 200
) -> LatencySummary:
    """Sequential batch-1 Predict calls on one channel (the request built once): p50/p99 in ms."""
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = _predict_request(model_name, image[np.newaxis])
    with grpc.insecure_channel(address) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for _ in range(warmup):
            stub.Predict(request, timeout=10)
        latencies = []
        for _ in range(count):
            started = time.perf_counter()
            stub.Predict(request, timeout=10)
            latencies.append(time.perf_counter() - started)
    return summarize_seconds(latencies)


def measure_in_process(export_path: Path, image: np.ndarray, count: int = 2000, warmup: int = 200) -> LatencySummary:
    """The loaded SavedModel's signature called directly on a batch of one: p50/p99 in ms."""
    import tensorflow as tf

    signature = tf.saved_model.load(str(export_path)).signatures[SIGNATURE_NAME]
    batch = np.ascontiguousarray(image[np.newaxis], dtype=np.float32)
    for _ in range(warmup):
        signature(**{INPUT_NAME: tf.constant(batch)})
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        outputs = signature(**{INPUT_NAME: tf.constant(batch)})
        {name: tensor.numpy() for name, tensor in outputs.items()}
        latencies.append(time.perf_counter() - started)
    return summarize_seconds(latencies)


def run_benchmark(
    model_base_path: Path = ROOT / "models" / "tf" / "digits",
    model_name: str = "digits",
    count: int = 2000,
) -> TFServingResult:
    """Start the server over the model and the identity model, measure everything, stop it."""
    model_base_path = Path(model_base_path).resolve()
    version = latest_version(model_base_path)
    if version is None:
        raise UsageError(f"No SavedModel version under {model_base_path}; run `make train-tf` first.")
    from experiment.data import load_dataset

    image = load_dataset().test.images[0]  # (8, 8)
    with tempfile.TemporaryDirectory(prefix="serving_tf_benchmark-") as scratch:
        scratch_path = Path(scratch)
        identity_base = scratch_path / IDENTITY_MODEL
        write_identity_model(identity_base)
        config_path = scratch_path / "models.config"
        config_path.write_text(
            "model_config_list {\n"
            f'  config {{ name: "{model_name}" base_path: "{model_base_path}" model_platform: "tensorflow" }}\n'
            f'  config {{ name: "{IDENTITY_MODEL}" base_path: "{identity_base}" model_platform: "tensorflow" }}\n'
            "}\n"
        )
        server = _start_server(model_name, None, [f"--model_config_file={config_path}"], scratch_path / "plain.log")
        try:
            address = _grpc_address(server)
            grpc_latency = measure_grpc_latency(address, model_name, image, count)
            trivial = measure_grpc_latency(address, IDENTITY_MODEL, image, count)
        finally:
            server.stop()
        in_process = measure_in_process(model_base_path / str(version), image, count)
    return TFServingResult(
        version=version,
        cpu_count=os.cpu_count() or 1,
        grpc=grpc_latency,
        trivial_grpc=trivial,
        in_process=in_process,
    )


def format_report(result: TFServingResult) -> str:
    """The printed summary of run_benchmark's numbers."""
    floor = result.trivial_grpc.p50_ms + result.in_process.p50_ms
    verdict = {True: "meets", False: "misses"}
    lines = [f"TensorFlow Serving–compatible server, model version {result.version}, {result.cpu_count} CPUs"]
    for label, summary in (
        ("digits Predict over gRPC, batch 1:  ", result.grpc),
        ("in-process signature call, batch 1: ", result.in_process),
        ("trivial identity model over gRPC:   ", result.trivial_grpc),
    ):
        lines.append(f"  {label} p50 {summary.p50_ms:.3f} ms   p99 {summary.p99_ms:.3f} ms")
    lines.append(
        f"  ratio digits p50 / (trivial p50 + in-process p50) = {result.grpc.p50_ms:.3f} / {floor:.3f} = "
        f"{result.latency_ratio:.2f}  (target ≤ {LATENCY_TARGET}: {verdict[result.latency_ratio <= LATENCY_TARGET]})"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.serving_tf", description=__doc__.splitlines()[0])
    parser.add_argument("--model-base-path", type=Path, default=ROOT / "models" / "tf" / "digits")
    parser.add_argument("--model-name", default="digits")
    parser.add_argument("--count", type=int, default=2000, help="latency calls per measurement")
    arguments = parser.parse_args(argv)
    library_logs.quiet()

    def body() -> int:
        if arguments.count < 10:
            raise UsageError("--count must be at least 10.")
        print(
            format_report(
                run_benchmark(
                    arguments.model_base_path,
                    arguments.model_name,
                    arguments.count,
                )
            )
        )
        return 0

    from experiment.cli import run_main

    return run_main("python -m benchmarks.serving_tf", body)


if __name__ == "__main__":
    raise SystemExit(main())
