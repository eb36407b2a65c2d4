"""The article's questions answered by running code: its tensor snippets, graphs, debugging, TensorBoard, parallelism."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pdb
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import stats
from experiment import library_logs

# The article's two snippets, verbatim values.
TF_A = [[3.0, 4.0, 8.0]]
TF_B = [[2.0], [3.0], [9.0]]
TORCH_A = [[3.0, 6.0, 8.0]]
TORCH_B = [[1.0], [3.0], [6.0]]
GRAPH_RUN_NAME = "article-graph"
TF_SNIPPET = "tf.multiply([[3., 4., 8.]], [[2.], [3.], [9.]]).numpy()"
TORCH_SNIPPET = (
    "torch.mul(torch.from_numpy(np.array([[3., 6., 8.]])), torch.from_numpy(np.array([[1.], [3.], [6.]]))).numpy()"
)


@dataclasses.dataclass(frozen=True)
class TensorSnippets:
    """The article's two snippets run today: results and dtypes."""

    tf_eager: list[list[float]]
    tf_dtype: str
    same_in_eager_and_session: bool  # TF2 eager against the article's TF1 session through tf.compat.v1
    torch: list[list[float]]
    torch_dtype: str


@dataclasses.dataclass(frozen=True)
class GraphTimings:
    """tf.function tracing against eager torch, and whether both graphs reached TensorBoard."""

    tf_first_call_seconds: float
    tf_later_call_seconds: float
    tf_traces_after_repeated_same_shape: int
    tf_traces_after_two_new_batch_sizes: int
    tf_traces_after_numpy_input: int
    tf_concrete_functions_with_input_signature: list[int]
    torch_first_call_seconds: float
    torch_later_call_seconds: float
    torch_new_batch_size_call_seconds: float
    tf_graph_written: bool
    torch_graph_written: bool


@dataclasses.dataclass(frozen=True)
class Debugging:
    """What a scripted pdb printed inside a Keras layer (eager and traced) and a torch module; TF2's NaN check."""

    keras_eager: list[str]
    keras_traced: list[str]
    torch_forward: list[str]
    check_numerics: str
    debugger_v2_available: bool

    @property
    def eager_tensor_seen(self) -> bool:
        """pdb read a concrete EagerTensor inside the Keras layer during fit."""
        return any("EagerTensor" in line for line in self.keras_eager)


@dataclasses.dataclass(frozen=True)
class DataParallelism:
    """What each framework offers for data parallelism on this machine, asked of the frameworks themselves."""

    usable_cores: int
    tf_logical_devices: list[str]
    tf_mirrored_strategy_replicas: int
    tf_multi_worker_mirrored_strategy: bool
    torch_cuda_devices: int
    torch_gloo_available: bool
    torch_nccl_available: bool
    torch_data_parallel_available: bool


def _tensorflow() -> Any:
    library_logs.quiet()
    import tensorflow as tf

    return tf


def tensor_snippets() -> TensorSnippets:
    """Both snippets in TF2 (eager, and the article's session style through tf.compat.v1) and in PyTorch."""
    tf = _tensorflow()
    import torch

    eager = tf.multiply(TF_A, TF_B).numpy()  # (1, 3) * (3, 1) broadcasts to (3, 3)
    graph = tf.Graph()
    with graph.as_default():
        output = tf.multiply(TF_A, TF_B)
    with tf.compat.v1.Session(graph=graph) as session:  # the article's TF1 session, still reachable in TF2
        session_result = session.run(output)
    torch_result = torch.mul(torch.from_numpy(np.array(TORCH_A)), torch.from_numpy(np.array(TORCH_B))).numpy()
    return TensorSnippets(
        tf_eager=eager.tolist(),
        tf_dtype=str(eager.dtype),
        same_in_eager_and_session=bool(np.array_equal(eager, session_result)),
        torch=torch_result.tolist(),
        torch_dtype=str(torch_result.dtype),
    )


def _seconds(call: Callable[[], Any]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def graphs(runs_dir: Path, repeats: int = 50) -> GraphTimings:
    """tf.function tracing and retracing vs eager torch, timed; both graphs written to TensorBoard under runs_dir."""
    tf = _tensorflow()
    import torch
    from torch.utils.tensorboard import SummaryWriter

    from experiment.spec import NetworkSpec
    from tf_pipeline.model import build_model as build_keras_model
    from torch_pipeline.model import build_model as build_torch_model

    spec = NetworkSpec()
    keras_model = build_keras_model(spec)
    torch_model = build_torch_model(spec).eval()
    traces = {"count": 0}

    @tf.function  # no input signature: every new input shape or Python value traces a new graph
    def forward(images: Any) -> Any:
        traces["count"] += 1  # Python code runs only while tracing
        return keras_model(images, training=False)

    def batch(size: int) -> np.ndarray:
        return np.random.default_rng(0).uniform(0, 16, size=(size, *spec.input_shape)).astype(np.float32)

    first_call = _seconds(lambda: forward(tf.constant(batch(1))))
    later = [_seconds(lambda: forward(tf.constant(batch(1)))) for _ in range(repeats)]
    traces_after_same_shape = traces["count"]
    forward(tf.constant(batch(64)))  # a new batch size: retrace
    forward(tf.constant(batch(7)))  # and another
    traces_after_new_shapes = traces["count"]
    forward(batch(1))  # a NumPy array is converted to a tensor of the known signature: no retrace
    traces_after_numpy = traces["count"]

    fixed = tf.function(
        lambda images: keras_model(images, training=False),
        input_signature=[tf.TensorSpec([None, *spec.input_shape], tf.float32)],
    )
    fixed_counts = []
    for size in (1, 64, 7):
        fixed(tf.constant(batch(size)))
        fixed_counts.append(fixed.experimental_get_tracing_count())

    def torch_forward(size: int) -> Any:
        with torch.inference_mode():
            return torch_model(torch.from_numpy(batch(size)))

    torch_first = _seconds(lambda: torch_forward(1))
    torch_later = [_seconds(lambda: torch_forward(1)) for _ in range(repeats)]
    torch_new_shape = _seconds(lambda: torch_forward(64))

    # Both graphs in TensorBoard, in the layout of the training runs (runs/tf/<run>, runs/torch/<run>).
    tf_graph_dir = Path(runs_dir) / "tf" / GRAPH_RUN_NAME
    torch_graph_dir = Path(runs_dir) / "torch" / GRAPH_RUN_NAME
    for directory in (tf_graph_dir, torch_graph_dir):
        shutil.rmtree(directory, ignore_errors=True)
    writer = tf.summary.create_file_writer(str(tf_graph_dir))
    tf.summary.trace_on(graph=True)
    traced = tf.function(lambda images: keras_model(images, training=False))
    traced(tf.constant(batch(1)))
    with writer.as_default():
        tf.summary.trace_export(name="keras_forward", step=0)
    writer.close()
    torch_writer = SummaryWriter(str(torch_graph_dir))
    torch_writer.add_graph(torch_model, torch.from_numpy(batch(1)))
    torch_writer.close()

    return GraphTimings(
        tf_first_call_seconds=first_call,
        tf_later_call_seconds=stats.median(later),
        tf_traces_after_repeated_same_shape=traces_after_same_shape,
        tf_traces_after_two_new_batch_sizes=traces_after_new_shapes,
        tf_traces_after_numpy_input=traces_after_numpy,
        tf_concrete_functions_with_input_signature=fixed_counts,
        torch_first_call_seconds=torch_first,
        torch_later_call_seconds=stats.median(torch_later),
        torch_new_batch_size_call_seconds=torch_new_shape,
        tf_graph_written=_has_graph(tf_graph_dir),
        torch_graph_written=_has_graph(torch_graph_dir),
    )


def _has_graph(run_dir: Path) -> bool:
    """Whether a TensorBoard run folder holds a graph, read back with TensorBoard's own loader."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(run_dir))
    accumulator.Reload()
    tags = accumulator.Tags()
    if tags.get(event_accumulator.GRAPH):  # torch's add_graph writes a GraphDef event
        return True
    # tf.summary.trace_export writes the graph as a tensor summary owned by TensorBoard's graph plugin.
    return any(
        accumulator.SummaryMetadata(tag).plugin_data.plugin_name.startswith("graph")
        for tag in tags.get(event_accumulator.TENSORS, [])
    )


@contextlib.contextmanager
def scripted_breakpoints(commands: str, transcript: io.StringIO) -> Iterator[None]:
    """Make breakpoint() open a real pdb that reads `commands` instead of the keyboard and writes to transcript."""

    def hook(*_: Any, **__: Any) -> None:
        debugger = pdb.Pdb(stdin=io.StringIO(commands), stdout=transcript, nosigint=True)
        debugger.use_rawinput = False
        debugger.prompt = "(Pdb) "
        debugger.set_trace(sys._getframe(1))  # stop in the caller of breakpoint(): the layer's call

    previous = sys.breakpointhook
    sys.breakpointhook = hook
    try:
        yield
    finally:
        sys.breakpointhook = previous
        sys.settrace(None)


def _stop_lines(transcript: str) -> list[str]:
    """The lines pdb printed in answer to the scripted commands, without the prompts or this machine's folders."""
    root = str(Path(__file__).resolve().parent.parent) + os.sep
    lines = (line.replace("(Pdb) ", "").replace(root, "").strip() for line in transcript.splitlines())
    return [line for line in lines if line]


def debugging() -> Debugging:
    """pdb stops inside a Keras layer (eagerly: values readable; in a graph: symbolic) and inside a torch module."""
    tf = _tensorflow()
    import keras
    import torch

    commands = "p type(inputs).__name__\np inputs.shape\np float(inputs.numpy().sum()) if hasattr(inputs, 'numpy') else 'no value while tracing'\ncontinue\n"

    class InspectedDense(keras.layers.Layer):
        """A dense layer with a breakpoint in its call (armed only while the demonstration runs)."""

        armed = False

        def build(self, input_shape: Any) -> None:
            self.kernel = self.add_weight(shape=(input_shape[-1], 4), initializer="ones")

        def call(self, inputs: Any) -> Any:
            if self.armed:
                breakpoint()  # the point of the demonstration
            return keras.ops.matmul(inputs, self.kernel)

    inputs = keras.Input(shape=(3,))
    layer = InspectedDense()
    model = keras.Model(inputs, layer(inputs))
    model.compile(optimizer="sgd", loss="mse")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)  # sums to 15
    y = np.zeros((2, 4), dtype=np.float32)

    transcripts: dict[bool, list[str]] = {}
    for eager in (True, False):
        transcript = io.StringIO()
        tf.config.run_functions_eagerly(eager)
        layer.armed = True
        try:
            with scripted_breakpoints(commands, transcript), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # tf.data's note that eager mode does not apply to it
                model.fit(x, y, epochs=1, batch_size=2, verbose=0)
        finally:
            layer.armed = False
            tf.config.run_functions_eagerly(False)
        transcripts[eager] = _stop_lines(transcript.getvalue())[:5]

    class InspectedModule(torch.nn.Module):
        """A linear map with a breakpoint in forward."""

        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(3, 4)

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            breakpoint()  # the point of the demonstration
            return self.linear(inputs)

    transcript = io.StringIO()
    with scripted_breakpoints(commands, transcript):
        InspectedModule()(torch.from_numpy(x)).sum().backward()
    torch_lines = _stop_lines(transcript.getvalue())[:5]

    # TF2's replacement for tfdbg's "has inf or nan" filter: check_numerics names the op that produced the NaN.
    tf.debugging.enable_check_numerics()
    try:
        tf.math.log(tf.constant([-1.0]))
        check_numerics = "no error raised"
    except tf.errors.InvalidArgumentError as error:
        lines = [line.strip() for line in str(error.message).splitlines() if "NaN" in line or "Inf" in line]
        check_numerics = (lines[0] if lines else str(error.message).strip())[:200]
    finally:
        tf.debugging.disable_check_numerics()
    debugger_v2 = hasattr(tf.debugging, "experimental") and hasattr(tf.debugging.experimental, "enable_dump_debug_info")
    return Debugging(transcripts[True], transcripts[False], torch_lines, check_numerics, debugger_v2)


def data_parallelism() -> DataParallelism:
    """What each framework offers for data parallelism on this machine, asked of the frameworks themselves."""
    tf = _tensorflow()
    import torch
    import torch.distributed

    strategy = tf.distribute.MirroredStrategy()
    return DataParallelism(
        usable_cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
        tf_logical_devices=[device.name for device in tf.config.list_logical_devices()],
        tf_mirrored_strategy_replicas=strategy.num_replicas_in_sync,
        tf_multi_worker_mirrored_strategy=hasattr(tf.distribute, "MultiWorkerMirroredStrategy"),
        torch_cuda_devices=torch.cuda.device_count(),
        torch_gloo_available=torch.distributed.is_available() and torch.distributed.is_gloo_available(),
        torch_nccl_available=torch.distributed.is_available() and torch.distributed.is_nccl_available(),
        torch_data_parallel_available=hasattr(torch.nn, "DataParallel"),
    )
