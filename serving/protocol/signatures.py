"""Signatures as TensorFlow Serving describes them: named tensor specs, the checks every server applies, SignatureDef JSON.

A TensorSpec is one named input or output (dtype and shape, None for a free dimension); a SignatureSpec groups a
signature's inputs and outputs with its method name. The checks and messages here are TensorFlow Serving's, so
every server refuses a request the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, TypeAlias

import numpy as np
import numpy.typing as npt

from .errors import RequestError

if TYPE_CHECKING:  # the TorchServe archive carries this package alone: types from the project only when checking
    from experiment.json_types import JSONDict

# A tensor of any dtype, and a dtype: what request bodies decode to and answers are written from. (Strings: NumPy's
# scalar types take their item type only in annotations.)
Tensor: TypeAlias = "npt.NDArray[np.generic[object]]"
DType: TypeAlias = "np.dtype[np.generic[object]]"
FloatTensor: TypeAlias = "npt.NDArray[np.float32 | np.float64]"


def string_bytes(value: object) -> bytes:
    """One DT_STRING element as bytes: text as UTF-8, bytes as they are."""
    if isinstance(value, str):
        return value.encode()
    return bytes(value) if isinstance(value, bytes | bytearray | memoryview) else str(value).encode()


# SignatureDef.method_name of TensorFlow Serving's three signature kinds.
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# NumPy dtype → tensorflow.DataType name; the one table from which serving.protocol.tensors builds its enum maps.
DATA_TYPE_NAMES: dict[DType, str] = {
    np.dtype(np.float32): "DT_FLOAT",
    np.dtype(np.float64): "DT_DOUBLE",
    np.dtype(np.float16): "DT_HALF",
    np.dtype(np.int8): "DT_INT8",
    np.dtype(np.int16): "DT_INT16",
    np.dtype(np.int32): "DT_INT32",
    np.dtype(np.int64): "DT_INT64",
    np.dtype(np.uint8): "DT_UINT8",
    np.dtype(np.uint16): "DT_UINT16",
    np.dtype(np.uint32): "DT_UINT32",
    np.dtype(np.uint64): "DT_UINT64",
    np.dtype(np.bool_): "DT_BOOL",
    np.dtype(np.complex64): "DT_COMPLEX64",
    np.dtype(np.complex128): "DT_COMPLEX128",
}


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One named input: its dtype and shape, None for a free dimension (the batch)."""

    name: str
    dtype: DType
    shape: tuple[int | None, ...]

    def describe(self) -> str:
        """E.g. 'float32 [N, 8, 8]'."""
        dims = ", ".join("N" if size is None else str(size) for size in self.shape)
        return f"{np.dtype(self.dtype).name} [{dims}]"

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """True when shape has this spec's rank and matches every fixed dimension."""
        return len(shape) == len(self.shape) and all(
            expected is None or actual == expected for actual, expected in zip(shape, self.shape, strict=True)
        )

    def to_json(self) -> JSONDict:
        """TensorFlow Serving's JSON TensorInfo: DataType name, shape with -1 for a free dimension, tensor name."""
        dims = [{"size": str(-1 if size is None else size), "name": ""} for size in self.shape]
        return {
            "dtype": DATA_TYPE_NAMES[np.dtype(self.dtype)],
            "tensor_shape": {"dim": dims, "unknown_rank": False},
            "name": self.name,
        }


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """A signature's name, input and output specs by alias, and method name."""

    name: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    method_name: str = PREDICT_METHOD

    def check_inputs(self, arrays: Mapping[str, Tensor]) -> int:
        """Check aliases, dtypes and shapes as TensorFlow Serving does; return the batch size."""
        unknown = sorted(set(arrays) - set(self.inputs))
        if unknown:
            raise RequestError(
                f"input tensor alias not found in signature: {unknown[0]}. "
                f"Inputs expected to be in the set {{{','.join(sorted(self.inputs))}}}."
            )
        missing = sorted(set(self.inputs) - set(arrays))
        if missing:
            raise RequestError(f"Missing input '{missing[0]}'; signature '{self.name}' needs {sorted(self.inputs)}.")
        batch_sizes = set()
        for alias, array in arrays.items():
            spec = self.inputs[alias]
            if array.dtype != spec.dtype:
                raise RequestError(
                    f"Input '{alias}' must be {np.dtype(spec.dtype).name} but the request sent {array.dtype.name}."
                )
            if not spec.accepts_shape(array.shape):
                raise RequestError(
                    f"Input '{alias}' has shape {list(array.shape)} but the model expects {spec.describe()}."
                )
            if array.ndim:
                batch_sizes.add(array.shape[0])
        if len(batch_sizes) > 1:
            raise RequestError(f"The inputs have different batch sizes: {sorted(batch_sizes)}.")
        return batch_sizes.pop() if batch_sizes else 1

    def check_output_filter(self, output_filter: Iterable[str]) -> tuple[str, ...]:
        """The output aliases to return (all when the filter is empty); unknown or repeated ones raise INVALID_ARGUMENT."""
        chosen = tuple(output_filter)
        for position, alias in enumerate(chosen):
            if alias not in self.outputs:
                raise RequestError(
                    f"output tensor alias not found in signature: {alias} "
                    f"Outputs expected to be in the set {{{','.join(sorted(self.outputs))}}}."
                )
            if alias in chosen[:position]:
                raise RequestError(f"duplicate output tensor alias: {alias}")
        return chosen or tuple(self.outputs)

    def to_json(self) -> JSONDict:
        """TensorFlow Serving's JSON SignatureDef, as GET /v1/models/<name>/metadata shows it."""
        return {
            "inputs": {alias: spec.to_json() for alias, spec in self.inputs.items()},
            "outputs": {alias: spec.to_json() for alias, spec in self.outputs.items()},
            "method_name": self.method_name,
            "defaults": {},
        }


def classifier_signature(
    name: str,
    input_name: str,
    input_shape: tuple[int, ...],
    probabilities_name: str,
    classes_name: str,
    num_classes: int,
) -> SignatureSpec:
    """A classifier's predict signature: float32 (N, *input_shape) in; float32 probabilities (N, C), int64 classes (N,) out."""
    return SignatureSpec(
        name,
        inputs={input_name: TensorSpec(input_name, np.dtype(np.float32), (None, *input_shape))},
        outputs={
            probabilities_name: TensorSpec(probabilities_name, np.dtype(np.float32), (None, num_classes)),
            classes_name: TensorSpec(classes_name, np.dtype(np.int64), (None,)),
        },
    )


def require_signature(requested: str | None, served: str) -> None:
    """Refuse (FAILED_PRECONDITION) a signature name other than the one a single-signature server serves."""
    if requested not in (None, served):
        raise RequestError(f"Unknown signature {requested!r}; this model has only {served!r}.", "FAILED_PRECONDITION")
