"""serving.protocol.signatures: tensor and signature specs, TensorFlow Serving's input checks, the JSON SignatureDef."""

from __future__ import annotations

import numpy as np
import pytest

from serving.protocol import tensors
from serving.protocol.errors import RequestError
from serving.protocol.signatures import SignatureSpec, TensorSpec, classifier_signature, require_signature

DIGITS = classifier_signature("serving_default", "images", (8, 8), "probabilities", "classes", 10)


def test_tensor_spec_describes_and_matches_shapes():
    spec = TensorSpec("images", np.dtype(np.float32), (None, 8, 8))
    assert spec.describe() == "float32 [N, 8, 8]"
    assert spec.accepts_shape((5, 8, 8)) and spec.accepts_shape((0, 8, 8))
    assert not spec.accepts_shape((5, 8)) and not spec.accepts_shape((5, 8, 9))


def test_signature_json_is_what_tensorflow_serving_prints_for_the_same_signature_def():
    from google.protobuf import json_format
    from tensorflow.core.protobuf import meta_graph_pb2

    signature_def = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for infos, specs in ((signature_def.inputs, DIGITS.inputs), (signature_def.outputs, DIGITS.outputs)):
        for alias, spec in specs.items():
            infos[alias].name = spec.name
            infos[alias].dtype = tensors.DTYPE_BY_NUMPY[spec.dtype]
            for size in spec.shape:
                infos[alias].tensor_shape.dim.add(size=-1 if size is None else size)
    printed = json_format.MessageToDict(
        signature_def, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert DIGITS.to_json() == printed


def _arrays(**arrays):
    return {alias: np.asarray(array) for alias, array in arrays.items()}


@pytest.mark.parametrize(
    "arrays, message",
    [
        (_arrays(pixels=np.zeros((1, 8, 8), np.float32)), "input tensor alias not found in signature: pixels"),
        ({}, "Missing input 'images'"),
        (_arrays(images=np.zeros((1, 8, 8), np.float64)), "must be float32 but the request sent float64"),
        (
            _arrays(images=np.zeros((1, 4, 4), np.float32)),
            "has shape [1, 4, 4] but the model expects float32 [N, 8, 8]",
        ),
    ],
)
def test_check_inputs_refuses_as_tensorflow_serving_does(arrays, message):
    with pytest.raises(RequestError) as raised:
        DIGITS.check_inputs(arrays)
    assert raised.value.code == "INVALID_ARGUMENT" and message in raised.value.message


def test_check_inputs_returns_the_batch_size_and_refuses_different_ones():
    two = SignatureSpec(
        "two",
        inputs={name: TensorSpec(name, np.dtype(np.float32), (None,)) for name in ("a", "b")},
        outputs={},
    )
    assert two.check_inputs(_arrays(a=np.zeros(3, np.float32), b=np.zeros(3, np.float32))) == 3
    with pytest.raises(RequestError, match="different batch sizes"):
        two.check_inputs(_arrays(a=np.zeros(3, np.float32), b=np.zeros(2, np.float32)))


def test_output_filter():
    assert DIGITS.check_output_filter([]) == ("probabilities", "classes")
    assert DIGITS.check_output_filter(["classes"]) == ("classes",)
    with pytest.raises(RequestError, match="output tensor alias not found in signature: logits"):
        DIGITS.check_output_filter(["logits"])
    with pytest.raises(RequestError, match="duplicate output tensor alias: classes"):
        DIGITS.check_output_filter(["classes", "classes"])


def test_a_single_signature_server_refuses_other_names_with_failed_precondition():
    require_signature(None, "serving_default")
    require_signature("serving_default", "serving_default")
    with pytest.raises(RequestError) as raised:
        require_signature("other", "serving_default")
    assert raised.value.code == "FAILED_PRECONDITION" and raised.value.http_status == 400
    assert raised.value.message == "Unknown signature 'other'; this model has only 'serving_default'."
