"""One loaded model version: its SavedModel signatures, their SignatureDefs, input checks and the call itself."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

from experiment.spec import SIGNATURE_NAME
from serving.protocol.errors import RequestError
from serving.protocol.signatures import SignatureSpec, TensorSpec

SERVE_TAG = "serve"
logger = logging.getLogger("serving.tfserving")


@dataclasses.dataclass(frozen=True)
class Signature(SignatureSpec):
    """A callable signature: its specs (and TensorFlow Serving's checks) plus the loaded concrete function."""

    function: Callable[..., Mapping[str, tf.Tensor]] = dataclasses.field(kw_only=True)

    def run(self, arrays: Mapping[str, np.ndarray], output_aliases: Iterable[str]) -> dict[str, np.ndarray]:
        """Call the concrete function on checked inputs; return the chosen outputs as numpy arrays."""
        try:
            # The loaded signature's concrete function, called directly: no retracing, no Keras layer overhead.
            results = self.function(**{alias: tf.constant(array) for alias, array in arrays.items()})
            return {alias: results[alias].numpy() for alias in output_aliases}
        except tf.errors.InvalidArgumentError as error:
            raise RequestError(f"The model rejected the input: {_first_line(error.message)}") from None
        except tf.errors.OpError as error:
            raise RequestError(f"The model failed: {_first_line(error.message)}", code="INTERNAL") from None


def _first_line(message: str) -> str:
    line = message.strip().splitlines()[0] if message.strip() else "no message"
    return line if line.endswith(".") else line + "."


@dataclasses.dataclass
class Servable:
    """A model version loaded from <base_path>/<version>/."""

    model_name: str
    version: int
    path: Path
    signatures: dict[str, Signature]
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]
    loaded: Any  # the object tf.saved_model.load returned; holding it keeps the variables alive

    @classmethod
    def load(cls, model_name: str, version: int, path: Path) -> "Servable":
        """Load the SavedModel at path, read its signatures and SignatureDefs."""
        path = Path(path)
        signature_defs = read_signature_defs(path)
        loaded = tf.saved_model.load(str(path), tags=[SERVE_TAG])
        signatures = {}
        for name, function in loaded.signatures.items():
            _, keyword_specs = function.structured_input_signature  # signatures take keyword inputs only
            signatures[name] = Signature(
                name=name,
                inputs={alias: _spec(alias, spec) for alias, spec in keyword_specs.items()},
                outputs={alias: _spec(alias, spec) for alias, spec in function.structured_outputs.items()},
                function=function,
            )
        if not signatures:
            raise ValueError(f"the SavedModel at {path} has no serving signatures")
        return cls(model_name, version, path, signatures, signature_defs, loaded)

    def signature(self, name: str | None) -> Signature:
        """The signature called name (empty or None means serving_default); FAILED_PRECONDITION if absent."""
        name = name or SIGNATURE_NAME
        try:
            return self.signatures[name]
        except KeyError:
            raise RequestError(
                f"Serving signature name: \"{name}\" not found in signature def; "
                f"this model has {sorted(self.signatures)}.",
                code="FAILED_PRECONDITION",
            ) from None

    def warm_up(self) -> None:
        """Call every signature once with a batch of zeros, so the first request pays no first-call cost."""
        for signature in self.signatures.values():
            if any(size is None for spec in signature.inputs.values() for size in spec.shape[1:]):
                continue  # a free inner dimension: no single example input fits
            zeros = {
                alias: np.zeros((1, *spec.shape[1:]), dtype=spec.dtype) for alias, spec in signature.inputs.items()
            }
            signature.run(zeros, signature.outputs)


def _spec(alias: str, spec: tf.TensorSpec) -> TensorSpec:
    shape = tuple(spec.shape.as_list()) if spec.shape.rank is not None else ()
    return TensorSpec(name=alias, dtype=np.dtype(spec.dtype.as_numpy_dtype), shape=shape)


def read_signature_defs(path: Path) -> dict[str, meta_graph_pb2.SignatureDef]:
    """The SignatureDef map of the 'serve' MetaGraph in path/saved_model.pb (what GetModelMetadata returns)."""
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    for meta_graph in saved_model.meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return dict(meta_graph.signature_def)
    raise ValueError(f"the SavedModel at {path} has no MetaGraph tagged '{SERVE_TAG}'")
