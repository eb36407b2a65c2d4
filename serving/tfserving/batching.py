"""Dynamic batching: concurrent Predict calls for the same signature are merged into one model call.

Follows TensorFlow Serving's BatchingParameters: max_batch_size, batch_timeout_micros, max_enqueued_batches,
num_batch_threads, allowed_batch_sizes (pad up to the next allowed size), enable_large_batch_splitting.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2

from experiment.errors import UsageError
from serving.protocol.errors import RequestError
from serving.tfserving.servable import Servable, Signature


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """The batching knobs, with TensorFlow Serving's defaults."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = dataclasses.field(default_factory=lambda: os.cpu_count() or 1)
    allowed_batch_sizes: tuple[int, ...] = ()
    enable_large_batch_splitting: bool = False

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.num_batch_threads < 1 or self.max_enqueued_batches < 1:
            raise UsageError("max_batch_size, num_batch_threads and max_enqueued_batches must be at least 1.")
        if self.batch_timeout_micros < 0:
            raise UsageError("batch_timeout_micros must not be negative.")
        if self.allowed_batch_sizes:
            if list(self.allowed_batch_sizes) != sorted(set(self.allowed_batch_sizes)):
                raise UsageError("allowed_batch_sizes must be strictly increasing.")
            if self.allowed_batch_sizes[-1] != self.max_batch_size:
                raise UsageError("The last of allowed_batch_sizes must equal max_batch_size.")


def _batching_parameters_class() -> type:
    """tensorflow.serving.BatchingParameters, built at run time: the pip package does not ship its proto."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/batching_parameters_runtime.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    wrapped = [
        (1, "max_batch_size", ".google.protobuf.Int64Value"),
        (2, "batch_timeout_micros", ".google.protobuf.Int64Value"),
        (3, "max_enqueued_batches", ".google.protobuf.Int64Value"),
        (4, "num_batch_threads", ".google.protobuf.Int64Value"),
        (5, "thread_pool_name", ".google.protobuf.StringValue"),
        (9, "max_execution_batch_size", ".google.protobuf.Int64Value"),
        (10, "batch_padding_policy", ".google.protobuf.StringValue"),
    ]
    for number, name, type_name in wrapped:
        message.field.add(
            name=name, number=number, label=field.LABEL_OPTIONAL, type=field.TYPE_MESSAGE, type_name=type_name
        )
    message.field.add(name="allowed_batch_sizes", number=6, label=field.LABEL_REPEATED, type=field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=field.LABEL_OPTIONAL, type=field.TYPE_BOOL)
    message.field.add(name="enable_large_batch_splitting", number=8, label=field.LABEL_OPTIONAL, type=field.TYPE_BOOL)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


def parse_batching_parameters(text: str, source: str = "the batching parameters") -> BatchingOptions:
    """Parse text-format BatchingParameters (tensorflow_model_server's --batching_parameters_file)."""
    parameters = _batching_parameters_class()()
    try:
        text_format.Parse(text, parameters)
    except text_format.ParseError as error:
        raise UsageError(f"{source} is not a valid text-format BatchingParameters: {error}.") from None
    defaults = BatchingOptions()
    values = {}
    for name in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        if parameters.HasField(name):
            values[name] = int(getattr(parameters, name).value)
    if parameters.HasField("max_execution_batch_size") and parameters.enable_large_batch_splitting:
        # With splitting, TensorFlow Serving runs at most max_execution_batch_size rows per model call.
        values["max_batch_size"] = int(parameters.max_execution_batch_size.value)
    return dataclasses.replace(
        defaults,
        **values,
        allowed_batch_sizes=tuple(int(size) for size in parameters.allowed_batch_sizes),
        enable_large_batch_splitting=bool(parameters.enable_large_batch_splitting),
    )


def read_batching_parameters(path: Path | None) -> BatchingOptions:
    """Options from --batching_parameters_file, or the defaults when no file is given."""
    if path is None:
        return BatchingOptions()
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise UsageError(f"Cannot read --batching_parameters_file {path}: {error.strerror or error}.") from None
    return parse_batching_parameters(text, f"--batching_parameters_file {path}")


class _Task:
    """One request (or one slice of a split request) waiting in the queue."""

    __slots__ = ("abandoned", "done", "enqueued", "error", "inputs", "key", "outputs", "rows", "servable", "signature")

    def __init__(
        self, key: tuple, servable: Servable, signature: Signature, inputs: Mapping[str, np.ndarray], rows: int
    ):
        self.key = key
        self.servable = servable  # held so an unload during the wait cannot free the model under us
        self.signature = signature
        self.inputs = inputs
        self.rows = rows
        self.done = threading.Event()
        self.outputs: dict[str, np.ndarray] | None = None
        self.error: BaseException | None = None
        self.abandoned = False
        self.enqueued = time.monotonic()


class BatchScheduler:
    """Merges tasks with the same model version, signature and inner input shapes into model calls."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self._condition = threading.Condition()
        self._pending: collections.deque[_Task] = collections.deque()
        self._pending_rows = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"batch-{index}", daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def run(
        self,
        servable: Servable,
        signature: Signature,
        inputs: Mapping[str, np.ndarray],
        rows: int,
        output_aliases: tuple[str, ...],
        timeout_s: float | None,
    ) -> dict[str, np.ndarray]:
        """Queue the request (inputs with a shared batch dimension of rows), wait for its batch, return its rows."""
        limit = self.options.max_batch_size
        if rows > limit and not self.options.enable_large_batch_splitting:
            raise RequestError(
                f"Task size {rows} is larger than maximum input batch size {limit} (max_batch_size of "
                "--batching_parameters_file)."
            )
        # Inner shapes and dtypes are part of the key: only tensors that concatenate along axis 0 share a batch.
        key = (id(servable), signature.name) + tuple(
            (alias, array.shape[1:], array.dtype.str) for alias, array in sorted(inputs.items())
        )
        tasks = []
        for start in range(0, max(rows, 1), limit):
            chunk = {alias: array[start : start + limit] for alias, array in inputs.items()}
            tasks.append(_Task(key, servable, signature, chunk, min(limit, rows - start)))
        self._enqueue(tasks)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for task in tasks:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not task.done.wait(remaining):
                for pending in tasks:
                    pending.abandoned = True  # the worker skips it if it has not started yet
                raise RequestError("The request timed out waiting for its batch.", code="DEADLINE_EXCEEDED")
            if task.error is not None:
                raise task.error
        if len(tasks) == 1:
            outputs = tasks[0].outputs
        else:
            outputs = {alias: np.concatenate([task.outputs[alias] for task in tasks]) for alias in tasks[0].outputs}
        return {alias: outputs[alias] for alias in output_aliases}

    def _enqueue(self, tasks: list[_Task]) -> None:
        with self._condition:
            if self._stopping:
                raise RequestError("The server is shutting down.", code="UNAVAILABLE")
            rows = sum(task.rows for task in tasks)
            if self._pending_rows + rows > self.options.max_enqueued_batches * self.options.max_batch_size:
                raise RequestError("The batching queue is full; try again later.", code="UNAVAILABLE")
            self._pending.extend(tasks)
            self._pending_rows += rows
            self._condition.notify()

    def _take_batch(self) -> list[_Task] | None:
        """Block until a batch is ready (full, or its oldest task waited batch_timeout); None when stopping."""
        timeout_s = self.options.batch_timeout_micros / 1e6
        with self._condition:
            while True:
                while not self._pending and not self._stopping:
                    self._condition.wait()
                if not self._pending:
                    return None
                first = self._pending[0]
                ready_at = first.enqueued + timeout_s
                while (
                    not self._stopping
                    and self._rows_for(first.key) < self.options.max_batch_size
                    and time.monotonic() < ready_at
                ):
                    self._condition.wait(ready_at - time.monotonic())
                if not self._pending or self._pending[0] is not first:
                    continue  # another worker took it meanwhile
                batch, rows, keep = [], 0, collections.deque()
                for task in self._pending:
                    if task.key == first.key and rows + task.rows <= self.options.max_batch_size:
                        batch.append(task)
                        rows += task.rows
                    else:
                        keep.append(task)
                self._pending = keep
                self._pending_rows -= rows
                if self._pending:
                    self._condition.notify()  # another worker can start on what is left
                return batch

    def _rows_for(self, key: tuple) -> int:
        return sum(task.rows for task in self._pending if task.key == key)

    def _work(self) -> None:
        while (batch := self._take_batch()) is not None:
            batch = [task for task in batch if not task.abandoned]
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Task]) -> None:
        signature = batch[0].signature
        try:
            if len(batch) == 1:
                merged = dict(batch[0].inputs)
            else:
                merged = {alias: np.concatenate([task.inputs[alias] for task in batch]) for alias in batch[0].inputs}
            total = sum(task.rows for task in batch)
            padded = self._padded_size(total)
            if padded > total:
                # Repeat the first row up to an allowed size, so the model only ever sees those batch sizes.
                merged = {
                    alias: np.concatenate([array, np.repeat(array[:1], padded - total, axis=0)])
                    for alias, array in merged.items()
                }
            outputs = signature.run(merged, signature.outputs)
            start = 0
            for task in batch:
                task.outputs = {
                    alias: array[start : start + task.rows] if array.ndim and len(array) == padded else array
                    for alias, array in outputs.items()
                }
                start += task.rows
        except BaseException as error:  # noqa: BLE001 (every waiting request must hear about the failure)
            for task in batch:
                task.error = error
        for task in batch:
            task.done.set()

    def _padded_size(self, rows: int) -> int:
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows

    def stop(self) -> None:
        """Finish queued tasks, then end the worker threads."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
