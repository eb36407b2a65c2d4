"""TensorFlow Serving's :classify and :regress bodies: tf.Example features written as JSON, and the answers.

{"signature_name": ..., "context": {feature: value | [values]}, "examples": [{feature: value | [values]}, ...]}.
A feature's kind follows its values as the real server decides it: decimals are a float_list, whole numbers (and
true/false) an int64_list, strings and {"b64": ...} a bytes_list; one feature cannot mix kinds. The features come
back as plain (kind, values) pairs, so this module needs no TensorFlow; the server builds the Example protos.
Answers: {"results": [[[label, score], ...], ...]} for classify, {"results": [value, ...]} for regress.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import RequestError, quoted
from .json_values import FLOAT32_MAX, decode_base64, is_base64_object, json_type, value_text
from .json_writing import float_tokens

if TYPE_CHECKING:  # the TorchServe archive carries this package alone: types from the project only when checking
    from experiment.json_types import JSONValue

# One value of a feature: a float, an int64 (true/false too) or bytes.
FeatureValue = float | int | bytes
# A feature: its kind ("float_list", "int64_list", "bytes_list"; None while it has no value) and its values.
Feature = tuple[str | None, list[FeatureValue]]
_KIND_NAMES = {"bytes_list": "bytes", "float_list": "float", "int64_list": "int64", None: "UNKNOWN"}
INT64_MAX = 2**63 - 1


def parse_examples(
    document: Mapping[str, JSONValue], method: str = "classify"
) -> tuple[dict[str, Feature] | None, list[dict[str, Feature]]]:
    """The request's context features (None without "context") and one feature map per example."""
    context = _features(document["context"]) if "context" in document else None
    if "examples" not in document:
        raise RequestError(
            f"JSON Value: {value_text(document)} When method is {method}, key 'examples' is expected and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise RequestError(f"JSON Value: {value_text(document)} Expecting 'examples' value to be an list/array")
    if not examples:
        raise RequestError(f"JSON Value: {value_text(document)} 'examples' value is an empty array")
    return context, [_features(example) for example in examples]


def _features(example: JSONValue) -> dict[str, Feature]:
    if not isinstance(example, dict):
        raise RequestError(f"Example must be JSON object but got JSON {json_type(example)}")
    features: dict[str, Feature] = {}
    for name, content in example.items():
        kind: str | None = None
        values: list[FeatureValue] = []
        for value in content if isinstance(content, list) else [content]:
            kind = _add_value(name, value, kind, values)
        features[name] = (kind, values)
    return features


def _add_value(name: str, value: JSONValue, kind: str | None, values: list[FeatureValue]) -> str:
    """Append one JSON value to a feature's values; its kind, which the first value fixes (AddValueToFeature)."""
    converted: FeatureValue
    if isinstance(value, bool):
        found, converted = "int64_list", int(value)
    elif isinstance(value, str):
        found, converted = "bytes_list", value.encode()
    elif is_base64_object(value):
        found, converted = "bytes_list", decode_base64(value)
    elif isinstance(value, float) or (isinstance(value, int) and value > 2**64 - 1):
        found, converted = "float_list", float(value)
        if np.isfinite(converted) and abs(converted) > FLOAT32_MAX:
            raise RequestError(f"Cannot convert JSON value: {value_text(value)} to float without loss of precision.")
    elif isinstance(value, int):
        if value > INT64_MAX:
            raise RequestError(f"Feature: {quoted(name)} has uint64 element. Only int64 is supported.")
        found, converted = "int64_list", value
    else:
        raise RequestError(f"Feature: {quoted(name)} has element with unexpected JSON type: {json_type(value)}")
    if kind not in (None, found):
        raise RequestError(f"Unexpected element type in feature: {quoted(name)} expecting type: {_KIND_NAMES[kind]}")
    values.append(converted)
    return found


def format_classifications(results: Sequence[Sequence[tuple[str, float]]]) -> str:
    """{"results": [[[label, score], ...] per example]}, scores written as float32 as the real server does."""
    if not results:
        raise RequestError("Cannot convert empty ClassificationResults to JSON")
    scores = float_tokens(np.array([score for classes in results for _, score in classes], np.float32))
    texts, position = [], 0
    for classes in results:
        pairs = []
        for label, _ in classes:
            pairs.append("[" + value_text(label) + "," + scores[position] + "]")
            position += 1
        texts.append("[" + ",".join(pairs) + "]")
    return '{"results":[' + ",".join(texts) + "]}"


def format_regressions(values: Sequence[float]) -> str:
    """{"results": [value per example]}, written as float32 as the real server does."""
    if not len(values):
        raise RequestError("Cannot convert empty RegressionResults to JSON")
    return '{"results":[' + ",".join(float_tokens(np.asarray(values, np.float32))) + "]}"
