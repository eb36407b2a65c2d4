"""TensorFlow Serving's :predict bodies: row ("instances") and columnar ("inputs") requests, and their answers.

Row format: one entry per example; a plain value or list when the signature has one input, else an object naming
every input. Columnar format: the whole tensor, or an object of tensors by input name. The answer follows the
request: {"predictions": [...]} for rows (objects per row when there are several outputs), {"outputs": ...} for
columns. Refusals use the real server's words (its util/json_tensor.cc).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from .errors import RequestError, quoted
from .json_values import fast_tensor, is_base64_object, to_tensor, value_text
from .json_writing import nest, tensor_tokens
from .signatures import Tensor

if TYPE_CHECKING:  # the TorchServe archive carries this package alone: types from the project only when checking
    from experiment.json_types import JSONValue

BYTES_SUFFIX = "_bytes"  # DT_STRING outputs named like this are written as {"b64": ...}


def parse_predict(
    document: Mapping[str, JSONValue], input_dtypes: Mapping[str, str], may_hold_booleans: bool = True
) -> tuple[dict[str, Tensor], bool]:
    """A :predict body's tensors by input alias, and whether it used the row format.

    input_dtypes maps each signature input to its DataType name ("DT_FLOAT"). may_hold_booleans=False (no `true` or
    `false` anywhere in the body) lets numeric tensors convert in one NumPy call.
    """
    if not input_dtypes:
        raise RequestError(
            f"Failed to get input map for signature: {quoted(document.get('signature_name') or 'DEFAULT')}"
        )
    has_instances, has_inputs = "instances" in document, "inputs" in document
    if has_instances and has_inputs:
        raise RequestError(
            f"JSON Value: {value_text(document)} Not formatted correctly expecting only one of 'inputs' or "
            "'instances' keys to exist "
        )
    if has_instances:
        instances = document["instances"]
        if not isinstance(instances, list):
            raise RequestError(f"JSON Value: {value_text(document)} Excepting 'instances' to be an list/array")
        if not instances:
            raise RequestError(f"JSON Value: {value_text(document)} No values in 'instances' array")
        return _parse_rows(instances, input_dtypes, may_hold_booleans), True
    if has_inputs:
        return _parse_columns(document["inputs"], input_dtypes, may_hold_booleans), False
    raise RequestError("Missing 'inputs' or 'instances' key")


def _parse_columns(value: JSONValue, input_dtypes: Mapping[str, str], may_hold_booleans: bool) -> dict[str, Tensor]:
    if not isinstance(value, dict) or is_base64_object(value):
        if len(input_dtypes) > 1:
            raise RequestError(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required as per "
                "tensorinfo_map"
            )
        ((alias, dtype_name),) = input_dtypes.items()
        return {alias: to_tensor(value, dtype_name, may_hold_booleans)}
    tensors: dict[str, Tensor] = {}
    for alias, dtype_name in sorted(input_dtypes.items()):  # names the request adds beyond these are ignored
        if alias not in value:
            raise RequestError(f"Missing named input: {quoted(alias)} in 'inputs' object.")
        tensors[alias] = to_tensor(value[alias], dtype_name, may_hold_booleans)
    return tensors


def _any_object(values: list[JSONValue]) -> bool:
    """Whether any value is a JSON object, found from the set of their types (one pass in C, not one call each)."""
    return any(issubclass(kind, dict) for kind in set(map(type, values)))


def _is_named(value: object) -> TypeGuard[dict[str, JSONValue]]:
    return isinstance(value, dict) and not is_base64_object(value)


def _parse_rows(
    instances: list[JSONValue], input_dtypes: Mapping[str, str], may_hold_booleans: bool
) -> dict[str, Tensor]:
    if len(input_dtypes) > 1 and not isinstance(instances[0], dict):
        raise RequestError(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
            "tensorinfo_map"
        )
    # First all instances at once (one NumPy call per input); if that cannot tell, one by one as the real server does.
    names = set(input_dtypes)
    columns: dict[str, list[JSONValue]] | None = None
    if _is_named(instances[0]):
        rows = [item for item in instances if _is_named(item) and item.keys() == names]
        if len(rows) == len(instances):
            columns = {alias: [row[alias] for row in rows] for alias in names}
    elif not _any_object(instances) or not any(_is_named(item) for item in instances):
        columns = {next(iter(names)): instances}
    if columns is not None:
        tensors: dict[str, Tensor] = {}
        for alias, column in columns.items():
            tensor = fast_tensor(column, input_dtypes[alias], may_hold_booleans)
            if tensor is None:
                break
            tensors[alias] = tensor
        else:
            return tensors
    return _parse_rows_one_by_one(instances, input_dtypes)


class _Column:
    """The tensors of one input, instance by instance, checked to agree in size and shape (AddInstanceItem)."""

    def __init__(self, dtype_name: str) -> None:
        self.dtype_name = dtype_name
        self.items: list[Tensor] = []

    def add(self, value: JSONValue) -> None:
        tensor = to_tensor(value, self.dtype_name)
        if self.items:
            first = self.items[0]
            if first.size != tensor.size:
                raise RequestError(f"Expecting tensor size: {first.size} but got: {tensor.size}")
            if first.shape != tensor.shape:
                raise RequestError(f"Expecting shape {_shape_text(first.shape)} but got: {_shape_text(tensor.shape)}")
        self.items.append(tensor)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(size) for size in shape) + "]"


def _parse_rows_one_by_one(instances: list[JSONValue], input_dtypes: Mapping[str, str]) -> dict[str, Tensor]:
    """Every instance on its own, as the real server walks them; slow, used only to name what is wrong."""
    columns = {alias: _Column(dtype_name) for alias, dtype_name in input_dtypes.items()}
    named = _is_named(instances[0])
    names = sorted(input_dtypes)
    for index, item in enumerate(instances):
        if named != _is_named(item):
            got = "list" if named else "object"
            expected = "object" if named else "value/list"
            raise RequestError(f"Expecting {expected} but got {got} at item {index} of input list")
        if not _is_named(item):
            ((_alias, column),) = columns.items()
            _add(column, item, f"Failed to process element: {index} of 'instances' list.")
            continue
        for key, value in item.items():
            if key not in columns:
                raise RequestError(
                    f"Failed to process element: {index} key: {quoted(key)} of 'instances' list. Error: INVALID_ARGUMENT: "
                    f"JSON object: does not have named input: {key}"
                )
            _add(columns[key], value, f"Failed to process element: {index} key: {quoted(key)} of 'instances' list.")
        if set(item) != set(names):
            raise RequestError(
                f"Failed to process element: {index} of 'instances' list. JSON object: {value_text(item)} must only "
                f"have keys: {','.join(names)}"
            )
    return {alias: np.stack(column.items) for alias, column in columns.items()}


def _add(column: _Column, value: JSONValue, where: str) -> None:
    try:
        column.add(value)
    except RequestError as error:
        raise RequestError(f"{where} Error: {error.code}: {error.message}", error.code) from None


# ---- answers ----------------------------------------------------------------------------------------------------


def format_predict(outputs: Mapping[str, Tensor], row_format: bool) -> str:
    """The JSON answer to a :predict request, numbers written as the real server writes them."""
    if not outputs:
        raise RequestError("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    single = len(names) == 1
    if not row_format:
        texts = {name: nest(_tokens(name, outputs[name]), outputs[name].shape)[0] for name in names}
        if single:
            return '{"outputs":' + texts[names[0]] + "}"
        return '{"outputs":{' + ",".join(f"{_key(name)}:{texts[name]}" for name in names) + "}}"
    batch_size = 0
    for name in names:
        shape = outputs[name].shape
        if not shape:
            raise RequestError(f"Tensor name: {quoted(name)} has no shape information ")
        if shape[0] < 1:
            raise RequestError(f"Tensor name: {quoted(name)} has invalid batch size: {shape[0]}")
        if batch_size and shape[0] != batch_size:
            raise RequestError(
                f"Tensor name: {quoted(name)} has inconsistent batch size: {shape[0]} expecting: {batch_size}"
            )
        batch_size = shape[0]
    rows = {name: nest(_tokens(name, outputs[name]), outputs[name].shape, keep=1) for name in names}
    if single:
        return '{"predictions":[' + ",".join(rows[names[0]]) + "]}"
    keys = {name: _key(name) for name in names}
    objects = ("{" + ",".join(f"{keys[name]}:{rows[name][row]}" for name in names) + "}" for row in range(batch_size))
    return '{"predictions":[' + ",".join(objects) + "]}"


def _tokens(name: str, array: Tensor) -> list[str]:
    return tensor_tokens(array, as_bytes=array.dtype.kind in "OSU" and name.endswith(BYTES_SUFFIX))


_KEYS: dict[str, str] = {}  # output names as JSON keys: a model's few names, quoted once
_KEYS_KEPT = 1024


def _key(name: str) -> str:
    key = _KEYS.get(name)
    if key is None:
        key = json.dumps(name, ensure_ascii=False)
        if len(_KEYS) < _KEYS_KEPT:
            _KEYS[name] = key
    return key
