"""TensorFlow Serving's REST predict format, shared by every server: parse a JSON body, format the answer.

Row format:      {"instances": [x, x, ...]}           → {"predictions": [{"probabilities": [...], "classes": 3}, ...]}
Columnar format: {"inputs": {"images": [...]}} or {"inputs": [...]} → {"outputs": {"probabilities": [[...]], ...}}
Errors:          {"error": "one sentence"} with TensorFlow Serving's HTTP status (400, 404, 413, 503).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .errors import RequestError, quoted
from .json_values import JsonSyntaxError, check_element_count, dense_shape, parse_json
from .json_writing import float_tokens, is_float_tensor
from .signatures import DType, Tensor, TensorSpec

if TYPE_CHECKING:  # the TorchServe archive carries this package alone: types from the project only when checking
    from experiment.json_types import JSONDict, JSONValue

# Instances per request the Flask app and the TorchServe handler accept unless configured otherwise; more is a 400.
MAX_BATCH_SIZE = 1024
# The one sentence for a body the parser failed on in a way it did not name itself (its own checks bound depth,
# numbers and size first): servers answer it with 400 rather than let one body fail with a 500.
UNREADABLE_BODY = "The request body could not be read as a predict request."


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """A parsed body: named input arrays, which format was used, and the signature asked for (if any)."""

    inputs: dict[str, Tensor]
    row_format: bool
    signature_name: str | None


def load_json(raw: bytes | str) -> JSONValue:
    """Decode a request body; bad JSON becomes a RequestError (400) naming what was wrong and where.

    Bounded as every server's bodies are (serving.protocol.limits): nesting deeper than MAX_JSON_DEPTH or more than
    MAX_REQUEST_ELEMENTS values is refused before parsing; a number beyond a double's range (1e999, an integer of
    thousands of digits) is refused, not read as infinity; NaN and Infinity are read (parse_predict_body decides).
    """
    try:
        return parse_json(raw)
    except JsonSyntaxError as error:
        raise RequestError(
            f"The request body is not valid JSON: {error.reason[:1].lower()}{error.reason[1:-1]} "
            f"at offset {error.offset}."
        ) from None


def to_array(values: JSONValue, spec: TensorSpec, allow_non_finite: bool = True) -> Tensor:
    """Convert JSON values to spec's dtype, refusing strings, booleans, ragged lists and wrong shapes."""
    check_element_count(dense_shape(values))
    try:
        array = np.asarray(values)
    except (ValueError, OverflowError):
        raise RequestError(
            f"Input '{spec.name}' is ragged: every list at one depth must have the same length."
        ) from None
    if array.dtype.kind not in "iuf":
        if array.dtype.kind == "O":
            raise RequestError(
                f"Input '{spec.name}' is ragged or mixes types: expected numbers in nested lists of {spec.describe()}."
            )
        raise RequestError(f"Input '{spec.name}' must hold numbers, got {_kind_name(array.dtype)} values.")
    expected_dtype = np.dtype(spec.dtype)
    if expected_dtype.kind in "iu" and array.dtype.kind == "f":
        raise RequestError(
            f"Input '{spec.name}' expects integers ({expected_dtype.name}) but got floating-point values."
        )
    if not spec.accepts_shape(array.shape):
        raise RequestError(
            f"Input '{spec.name}' has shape {list(array.shape)} but the model expects {spec.describe()}."
        )
    if array.shape and array.shape[0] == 0:
        raise RequestError(f"Input '{spec.name}' is an empty batch; send at least one instance.")
    with np.errstate(over="ignore"):  # values beyond float32's range become inf and are judged below
        converted = array.astype(expected_dtype, copy=False)
    if not allow_non_finite and converted.dtype.kind == "f" and not _all_finite(converted):
        raise RequestError(f"Input '{spec.name}' contains NaN or infinity.")
    return converted


def _all_finite(array: Tensor) -> bool:
    """Whether every value is finite; for float32 and narrower one sum in float64 tells (it cannot overflow)."""
    if array.dtype.itemsize <= 4:
        return math.isfinite(np.add.reduce(array, axis=None, dtype=np.float64))
    return bool(np.isfinite(array).all())


def _kind_name(dtype: DType) -> str:
    return {"U": "string", "S": "string", "b": "boolean"}.get(dtype.kind, dtype.name)


def parse_predict_body(
    body: JSONValue, inputs: Mapping[str, TensorSpec], allow_non_finite: bool = True, max_batch_size: int | None = None
) -> PredictRequest:
    """Parse a decoded JSON predict body into named arrays checked against the signature's inputs."""
    if not isinstance(body, dict):
        raise RequestError('The request body must be a JSON object with "instances" or "inputs".')
    has_instances, has_inputs = "instances" in body, "inputs" in body
    if has_instances == has_inputs:
        raise RequestError('The request body must have exactly one of "instances" (row format) or "inputs" (columnar).')
    signature_name = body.get("signature_name")
    if signature_name is not None and not isinstance(signature_name, str):
        raise RequestError('"signature_name" must be a string.')
    named = _row_values(body["instances"], inputs) if has_instances else _columnar_values(body["inputs"], inputs)
    arrays = {name: to_array(values, inputs[name], allow_non_finite) for name, values in named.items()}
    batch_sizes = {len(array) for array in arrays.values() if array.ndim}
    if len(batch_sizes) > 1:
        raise RequestError(f"The inputs have different batch sizes: {sorted(batch_sizes)}.")
    if max_batch_size is not None and batch_sizes and max(batch_sizes) > max_batch_size:
        raise RequestError(f"The batch has {max(batch_sizes)} instances; this server accepts at most {max_batch_size}.")
    return PredictRequest(arrays, row_format=has_instances, signature_name=signature_name)


def _single_input_name(inputs: Mapping[str, TensorSpec]) -> str | None:
    return next(iter(inputs)) if len(inputs) == 1 else None


def _row_values(instances: JSONValue, inputs: Mapping[str, TensorSpec]) -> dict[str, JSONValue]:
    if not isinstance(instances, list):
        raise RequestError('"instances" must be a list with one entry per example.')
    if not instances:
        raise RequestError('"instances" is an empty batch; send at least one instance.')
    types = set(map(type, instances))  # one pass in C over the batch
    objects = [kind for kind in types if issubclass(kind, dict)]
    if len(objects) == len(types):
        names = set(instances[0])
        if any(set(instance) != names for instance in instances):
            raise RequestError("Every instance must name the same inputs.")
        _check_names(names, inputs)
        return {name: [instance[name] for instance in instances] for name in names}
    single = _single_input_name(inputs)
    if single is None:
        raise RequestError(f"This signature has inputs {sorted(inputs)}: each instance must be an object naming them.")
    if objects:
        raise RequestError("Instances must all be objects or all be values, not a mix.")
    return {single: instances}


def _columnar_values(values: JSONValue, inputs: Mapping[str, TensorSpec]) -> dict[str, JSONValue]:
    if isinstance(values, dict):
        _check_names(set(values), inputs)
        return dict(values)
    single = _single_input_name(inputs)
    if single is None:
        raise RequestError(f'This signature has inputs {sorted(inputs)}: "inputs" must be an object naming them.')
    return {single: values}


def _check_names(names: set[str], inputs: Mapping[str, TensorSpec]) -> None:
    unknown = sorted(names - set(inputs))
    if unknown:
        raise RequestError(f"Unknown input {quoted(repr(unknown[0]))}; this signature's inputs are {sorted(inputs)}.")
    missing = sorted(set(inputs) - names)
    if missing:
        raise RequestError(f"Missing input {missing[0]!r}; this signature's inputs are {sorted(inputs)}.")


def format_predict_response(outputs: Mapping[str, Tensor], row_format: bool) -> JSONDict:
    """TensorFlow Serving's answer: predictions per row, or outputs per name (a bare value if only one)."""
    listed = {name: _listed(array) for name, array in outputs.items()}
    if row_format:
        if len(listed) == 1:
            return {"predictions": next(iter(listed.values()))}
        names = list(listed)
        columns = {name: _rows(listed[name]) for name in names}
        count = len(next(iter(columns.values())))
        return {"predictions": [{name: columns[name][row] for name in names} for row in range(count)]}
    if len(listed) == 1:
        return {"outputs": next(iter(listed.values()))}
    return {"outputs": listed}


def _rows(listed: JSONValue) -> list[JSONValue]:
    """An output's rows in the row format: the entries of its first dimension (TypeError for a scalar output)."""
    if not isinstance(listed, list):
        raise TypeError(f"an output of {type(listed).__name__} has no rows")
    return listed


def _listed(array: Tensor) -> JSONValue:
    """array as nested lists; float32 values become the float64 of their shortest decimal, so JSON shows 2.05, not
    2.049999952316284 (the digits TensorFlow Serving writes)."""
    if array.dtype != np.float32 or not is_float_tensor(array):
        listed: JSONValue = array.tolist()
        return listed
    return np.array([float(token) for token in float_tokens(array)], np.float64).reshape(array.shape).tolist()


def dumps(document: JSONValue) -> str:
    """Compact JSON; non-finite floats (which JSON lacks) are written as TensorFlow Serving does: NaN, Infinity."""
    return json.dumps(document, separators=(",", ":"), allow_nan=True)


def is_finite_number(value: object) -> bool:
    """True for an int or a finite float (used by tests and clients)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
