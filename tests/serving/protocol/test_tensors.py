"""serving.protocol.tensors: TensorProto ⇄ NumPy without TensorFlow's API, checked against TensorFlow's own codec."""

from __future__ import annotations

import numpy as np
import pytest
from tensorflow.core.framework import tensor_pb2, types_pb2

from serving.protocol import tensors
from serving.protocol.errors import RequestError


def _proto(dtype: int, shape: tuple[int, ...], **values) -> tensor_pb2.TensorProto:
    proto = tensor_pb2.TensorProto(dtype=dtype, **values)
    for size in shape:
        proto.tensor_shape.dim.add(size=size)
    return proto


@pytest.mark.parametrize(
    "dtype", [np.float32, np.float64, np.float16, np.int64, np.int32, np.int8, np.uint8, np.bool_, np.complex64]
)
def test_tensor_round_trip_through_tensor_content(dtype):
    array = (np.arange(24).reshape(2, 3, 4) % 5).astype(dtype)
    proto = tensors.array_to_tensor(array)
    assert proto.tensor_content  # raw bytes, not typed repeated fields
    decoded = tensors.tensor_to_array(proto)
    assert decoded.dtype == array.dtype
    np.testing.assert_array_equal(decoded, array)


def test_typed_values_must_fill_the_shape_exactly():
    proto = _proto(types_pb2.DT_FLOAT, (2, 2), float_val=[1.0, 2.0])
    with pytest.raises(
        RequestError, match=r"tensor parsing error: tensor. It holds 2 values but its shape \[2, 2\] needs exactly 4"
    ):
        tensors.tensor_to_array(proto)
    proto.float_val.extend([3.0, 4.0, 5.0])
    with pytest.raises(RequestError, match="It holds 5 values"):
        tensors.tensor_to_array(proto)
    with pytest.raises(RequestError, match="It holds 0 values"):  # TensorFlow would fill zeros
        tensors.tensor_to_array(_proto(types_pb2.DT_INT64, (2,)))
    with pytest.raises(RequestError, match="odd number of numbers"):
        tensors.tensor_to_array(_proto(types_pb2.DT_COMPLEX64, (1,), scomplex_val=[1.0, 2.0, 3.0]))


def test_fill_applies_tensorflows_repeat_last_value_rule_for_trusted_records():
    proto = _proto(types_pb2.DT_FLOAT, (2, 2), float_val=[1.0, 2.0])
    np.testing.assert_array_equal(tensors.tensor_to_array(proto, fill=True), [[1.0, 2.0], [2.0, 2.0]])
    # No values at all: TensorFlow fills the shape with zeros (empty strings for DT_STRING).
    np.testing.assert_array_equal(tensors.tensor_to_array(_proto(types_pb2.DT_INT64, (2,)), fill=True), [0, 0])
    assert tensors.tensor_to_array(_proto(types_pb2.DT_STRING, (2,)), fill=True).tolist() == [b"", b""]
    proto.float_val.extend([3.0, 4.0, 5.0])
    with pytest.raises(RequestError, match="It holds 5 values"):  # more values than room: refused either way
        tensors.tensor_to_array(proto, fill=True)


@pytest.mark.parametrize(
    "shape, values",
    [
        ((1 << 20, 8, 8), {"float_val": [1.0]}),
        ((1 << 40,), {"float_val": [1.0]}),
        ((1 << 62, 4), {}),
        ((1 << 20, 8, 8), {"bool_val": [True]}),
    ],
    ids=["2^26 elements from one value", "2^40 elements", "beyond int64", "one bool"],
)
def test_a_few_bytes_never_declare_a_huge_tensor(shape, values):
    import tracemalloc

    dtype = types_pb2.DT_BOOL if "bool_val" in values else types_pb2.DT_FLOAT
    proto = _proto(dtype, shape, **values)
    tracemalloc.start()
    try:
        with pytest.raises(RequestError) as raised:
            tensors.tensor_to_array(proto, "images")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert raised.value.code == "INVALID_ARGUMENT" and raised.value.message.startswith("tensor parsing error: images.")
    assert "\n" not in raised.value.message and peak < 1 << 20  # refused before any array was allocated


def test_the_element_cap_holds_for_one_tensor_and_for_a_whole_request():
    from serving.protocol.limits import MAX_REQUEST_ELEMENTS

    exact = tensors.array_to_tensor(np.zeros((4, 4), np.uint8))
    assert tensors.tensor_to_array(exact, max_elements=16).shape == (4, 4)
    with pytest.raises(RequestError, match="16 elements, more than the 15 a request may hold"):
        tensors.tensor_to_array(exact, "images", max_elements=15)
    arrays = tensors.tensors_to_arrays({"a": exact, "b": exact}, max_elements=32)
    assert set(arrays) == {"a", "b"}
    with pytest.raises(RequestError, match="hold 32 elements together, more than the 31"):
        tensors.tensors_to_arrays({"a": exact, "b": exact}, max_elements=31)
    half = _proto(types_pb2.DT_UINT8, (MAX_REQUEST_ELEMENTS // 2 + 1,))  # each alone under the cap, not together
    with pytest.raises(RequestError, match="together") as raised:
        tensors.tensors_to_arrays({"a": half, "b": half})
    assert raised.value.code == "INVALID_ARGUMENT"


TYPED_PROTOS = {
    "float": _proto(types_pb2.DT_FLOAT, (3,), float_val=[1.5, -2.0, 3.25]),
    "int32": _proto(types_pb2.DT_INT32, (2, 2), int_val=[7, -7, 0, 2**31 - 1]),
    "int64": _proto(types_pb2.DT_INT64, (2,), int64_val=[2**40, -3]),
    "uint8": _proto(types_pb2.DT_UINT8, (2,), int_val=[0, 255]),
    "bool": _proto(types_pb2.DT_BOOL, (3,), bool_val=[True, False, True]),
    "half": _proto(types_pb2.DT_HALF, (2,), half_val=[15360, 16384]),  # 1.0 and 2.0 as float16 bits
    "complex64": _proto(types_pb2.DT_COMPLEX64, (2,), scomplex_val=[1.0, 2.0, 3.0, -4.0]),
    "strings": _proto(types_pb2.DT_STRING, (2,), string_val=[b"seven", b"\xff"]),
    "empty": _proto(types_pb2.DT_FLOAT, (0, 8)),
    "scalar": _proto(types_pb2.DT_DOUBLE, (), double_val=[2.5]),
}


@pytest.mark.parametrize("proto", TYPED_PROTOS.values(), ids=TYPED_PROTOS.keys())
def test_typed_fields_decode_as_tensorflow_decodes_them(proto):
    import tensorflow as tf

    expected = tf.make_ndarray(proto)
    decoded = tensors.tensor_to_array(proto)
    assert decoded.shape == expected.shape and decoded.dtype == expected.dtype
    np.testing.assert_array_equal(decoded, expected)


@pytest.mark.parametrize(
    "array",
    [np.array([[b"a", b"bc"]], dtype=object), np.array(["x", "yz"]), np.arange(6, dtype=np.uint16).reshape(2, 3)],
)
def test_encoded_tensors_are_what_tensorflow_reads(array):
    import tensorflow as tf

    decoded = tf.make_ndarray(tensors.array_to_tensor(array))
    expected = np.vectorize(lambda value: value.encode() if isinstance(value, str) else value, otypes=[object])(array)
    np.testing.assert_array_equal(decoded, expected if array.dtype.kind in "OU" else array)


@pytest.mark.parametrize(
    "proto, message",
    [
        (tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, tensor_shape={"unknown_rank": True}), "unknown rank"),
        (_proto(types_pb2.DT_FLOAT, (-1, 8)), "negative dimension"),
        (_proto(types_pb2.DT_BFLOAT16, (1,), half_val=[1]), "dtype DT_BFLOAT16 cannot be decoded"),
        (
            _proto(types_pb2.DT_STRING, (1,), string_val=[b"a", b"b"]),
            "holds 2 values but its shape [1] needs exactly 1",
        ),
    ],
)
def test_malformed_tensors_are_one_sentence_invalid_argument(proto, message):
    with pytest.raises(RequestError) as raised:
        tensors.tensor_to_array(proto, "images")
    assert raised.value.code == "INVALID_ARGUMENT" and message in raised.value.message
    assert raised.value.message.startswith("tensor parsing error: images")  # the real server's words come first


@pytest.mark.parametrize(
    "array, field",
    [
        (np.array([[0.5, 2.05]], np.float32), "float_val"),
        (np.array([1.5], np.float64), "double_val"),
        (np.array([7, -1], np.int32), "int_val"),
        (np.array([300], np.uint16), "int_val"),
        (np.array(5, np.int8), "int_val"),
        (np.array([2**40], np.int64), "int64_val"),
        (np.array([2**32 - 1], np.uint32), "uint32_val"),
        (np.array([2**64 - 1], np.uint64), "uint64_val"),
        (np.array([True, False]), "bool_val"),
        (np.array([1.0, -2.0], np.float16), "half_val"),
        (np.array([1 + 2j], np.complex64), "scomplex_val"),
        (np.array([b"a", b"\xff"], dtype=object), "string_val"),
    ],
)
def test_typed_fields_are_what_tensorflow_serving_writes_and_what_tensorflow_reads(array, field):
    import tensorflow as tf

    proto = tensor_pb2.TensorProto()
    tensors.fill_tensor_fields(proto, array)
    assert not proto.tensor_content and len(getattr(proto, field)) > 0  # never packed bytes
    expected = proto.__class__()
    expected.CopyFrom(tf.make_tensor_proto(array))  # TensorFlow itself, for comparison of shape and dtype
    assert proto.dtype == expected.dtype and proto.tensor_shape == expected.tensor_shape
    np.testing.assert_array_equal(tf.make_ndarray(proto), array)
    np.testing.assert_array_equal(tensors.tensor_to_array(proto), array)


def test_wrong_tensor_content_length_is_invalid_argument():
    proto = tensors.array_to_tensor(np.zeros((2, 8, 8), np.float32))
    proto.tensor_content = proto.tensor_content[:-4]
    with pytest.raises(RequestError) as raised:
        tensors.tensor_to_array(proto, "images")
    assert raised.value.code == "INVALID_ARGUMENT" and "images" in raised.value.message


def test_dtype_names_and_the_one_dtype_table():
    assert tensors.dtype_name(types_pb2.DT_FLOAT) == "DT_FLOAT" and tensors.dtype_name(999) == "dtype 999"
    assert tensors.DTYPE_BY_NUMPY[np.dtype(np.int64)] == types_pb2.DT_INT64
