"""One loaded model version: a TensorFlow session over its SavedModel's 'serve' graph, run as the real server runs it.

TensorFlow Serving loads the MetaGraphDef into a session and feeds request tensors to the tensor names its
SignatureDefs list, whatever the signature says about shapes (x of shape [1] where the signature says [-1, 1] is
fed as is, and answered if the graph can compute it). This does the same for TF1 graphs and TF2 SavedModels alike:
tf.compat.v1's loader restores variables and runs the init op, and each (feeds, fetches) pair becomes a session
callable. Callables skip Session.run's Python-side checks, which refuse shapes and silently cast dtypes: here, as
in the real server, the graph judges the tensors, and a wrong dtype is the runtime's INVALID_ARGUMENT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import threading
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import config_pb2, error_codes_pb2, meta_graph_pb2

from serving.protocol.errors import RequestError, quoted

SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
logger = logging.getLogger("serving.tfserving")

# --enable_signature_method_name_check, off by default as in TensorFlow Serving: a TF2 SavedModel writes every
# signature with the predict method name, so Classify, Regress and MultiInference take any signature whose inputs
# and outputs have their layout. Like the real server's flag, it holds for the whole process.
_method_name_check = False


def set_method_name_check(enabled: bool) -> None:
    """Turn the check of a signature's method_name against the API called on or off (for the whole process)."""
    global _method_name_check
    _method_name_check = bool(enabled)


def method_name_check() -> bool:
    """Whether Predict, Classify and Regress refuse a signature whose method_name is not theirs."""
    return _method_name_check


def error_from_tensorflow(error: tf.errors.OpError) -> RequestError:
    """A RequestError with TensorFlow's status code and the first line of its message (the node names follow it)."""
    lines = [line for line in (error.message or "").strip().splitlines() if line.strip()]
    return RequestError(lines[0] if lines else type(error).__name__, error_codes_pb2.Code.Name(error.error_code))


@dataclasses.dataclass(frozen=True)
class Signature:
    """One SignatureDef of a loaded version: its aliases, the tensors they name, and how to run it."""

    name: str
    definition: meta_graph_pb2.SignatureDef
    servable: Servable = dataclasses.field(repr=False, compare=False)

    @property
    def method_name(self) -> str:
        """tensorflow/serving/predict, .../classify or .../regress (anything else cannot be called)."""
        return self.definition.method_name

    @functools.cached_property
    def outputs(self) -> tuple[str, ...]:
        """The output aliases, sorted."""
        return tuple(sorted(self.definition.outputs))

    @functools.cached_property
    def inputs(self) -> tuple[str, ...]:
        """The input aliases, sorted."""
        return tuple(sorted(self.definition.inputs))

    @functools.cached_property
    def _tensor_names(self) -> tuple[dict[str, str], dict[str, str]]:
        # The graph's tensor name of every input and output alias, read from the SignatureDef once per version.
        definition = self.definition
        return (
            {alias: info.name for alias, info in definition.inputs.items()},
            {alias: info.name for alias, info in definition.outputs.items()},
        )

    @functools.cached_property
    def _input_dtypes(self) -> dict[str, str]:
        return {alias: types_pb2.DataType.Name(info.dtype) for alias, info in self.definition.inputs.items()}

    def input_dtypes(self) -> dict[str, str]:
        """DataType name of each input alias ('DT_FLOAT'), which decides how a JSON value converts (found once per
        loaded version; callers must not change it)."""
        return self._input_dtypes

    def run(
        self, arrays: Mapping[str, np.ndarray], output_aliases: Iterable[str], timeout_s: float | None = None
    ) -> dict[str, np.ndarray]:
        """Feed arrays (by input alias) and fetch the chosen outputs (by alias), cut off after timeout_s if given."""
        aliases = tuple(output_aliases)
        input_names, output_names = self._tensor_names
        feeds = {input_names[alias]: array for alias, array in arrays.items()}
        fetched = self.servable.run(feeds, tuple(output_names[alias] for alias in aliases), timeout_s)
        return dict(zip(aliases, fetched, strict=True))


class Servable:
    """A model version loaded from <base_path>/<version>/: its session, MetaGraphDef and signatures."""

    def __init__(
        self,
        model_name: str,
        version: int,
        path: Path,
        session: tf.compat.v1.Session,
        meta_graph: meta_graph_pb2.MetaGraphDef,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.path = Path(path)
        self.session = session
        self.meta_graph = meta_graph
        self.signature_defs: dict[str, meta_graph_pb2.SignatureDef] = dict(meta_graph.signature_def)
        self.signatures = {name: Signature(name, definition, self) for name, definition in self.signature_defs.items()}
        self._callables: dict[tuple, object] = {}
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model_name: str, version: int, path: Path) -> Servable:
        """Load the 'serve' MetaGraph of the SavedModel at path into a new session (variables restored, init op run)."""
        session = tf.compat.v1.Session(graph=tf.Graph())
        try:
            with _quiet_tensorflow_logs():
                meta_graph = tf.compat.v1.saved_model.loader.load(session, [SERVE_TAG], str(path))
        except BaseException:
            session.close()
            raise
        return cls(model_name, version, path, session, meta_graph)

    def signature(self, name: str | None) -> Signature:
        """The signature called name ("" or None: serving_default); FAILED_PRECONDITION, as Predict answers, if absent."""
        name = name or DEFAULT_SIGNATURE
        signature = self.signatures.get(name)
        if signature is None:
            raise RequestError(f'Serving signature key "{quoted(name)}" not found.', "FAILED_PRECONDITION")
        return signature

    def run(
        self, feeds: Mapping[str, np.ndarray], fetches: tuple[str, ...], timeout_s: float | None = None
    ) -> list[np.ndarray]:
        """Run the graph: feed arrays to tensor names, fetch tensor names; TensorFlow's errors become RequestErrors.

        With timeout_s, TensorFlow cancels the run at the deadline (DEADLINE_EXCEEDED), as the real server's
        session run options do for a REST request under --rest_api_timeout_in_ms.
        """
        names = tuple(feeds)
        timeout_ms = max(1, round(timeout_s * 1000)) if timeout_s is not None else 0
        key = (names, fetches, timeout_ms)
        runner = self._callables.get(key)
        if runner is None:
            runner = self._make_callable(names, fetches, timeout_ms)
        try:
            results = runner(*(feeds[name] for name in names))
        except tf.errors.OpError as error:
            raise error_from_tensorflow(error) from None
        return [np.asarray(result) for result in results]

    def _make_callable(self, feeds: tuple[str, ...], fetches: tuple[str, ...], timeout_ms: int = 0):
        options = config_pb2.CallableOptions(feed=feeds, fetch=fetches)
        if timeout_ms:
            options.run_options.timeout_in_ms = timeout_ms
        with self._lock:
            runner = self._callables.get((feeds, fetches, timeout_ms))
            if runner is None:
                try:
                    # The private half of Session.make_callable, a deliberate exception to using public API only:
                    # the public half hands every call to Session.run's feed checks, 186 µs a call for the digits
                    # model against 68 µs here (2026-12-06, 2 cores; the whole REST request path is about 200 µs).
                    runner = self.session._make_callable_from_options(options)
                except (tf.errors.OpError, ValueError, KeyError) as error:
                    message = error.message if isinstance(error, tf.errors.OpError) else str(error)
                    raise RequestError(
                        f"The model's graph cannot run this signature: {message.splitlines()[0]}", "INTERNAL"
                    ) from None
                self._callables[(feeds, fetches, timeout_ms)] = runner
        return runner

    def close(self) -> None:
        """Release the session (requests still holding this servable must have finished)."""
        self.session.close()


@contextlib.contextmanager
def _quiet_tensorflow_logs() -> Iterator[None]:
    # tf.compat.v1's loader announces its own deprecation on first use; the server's log should not.
    tensorflow_logger = tf.get_logger()
    level = tensorflow_logger.level
    tensorflow_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        tensorflow_logger.setLevel(level)
