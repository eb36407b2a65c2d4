"""TensorProto ⇄ numpy without per-element Python work: tensor_content is read with np.frombuffer, written from array bytes."""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from .errors import RequestError

# The dtypes whose TensorProto can carry raw little-endian bytes in tensor_content.
NUMPY_BY_DTYPE: dict[int, np.dtype] = {
    types_pb2.DT_FLOAT: np.dtype(np.float32),
    types_pb2.DT_DOUBLE: np.dtype(np.float64),
    types_pb2.DT_HALF: np.dtype(np.float16),
    types_pb2.DT_INT8: np.dtype(np.int8),
    types_pb2.DT_INT16: np.dtype(np.int16),
    types_pb2.DT_INT32: np.dtype(np.int32),
    types_pb2.DT_INT64: np.dtype(np.int64),
    types_pb2.DT_UINT8: np.dtype(np.uint8),
    types_pb2.DT_UINT16: np.dtype(np.uint16),
    types_pb2.DT_UINT32: np.dtype(np.uint32),
    types_pb2.DT_UINT64: np.dtype(np.uint64),
    types_pb2.DT_BOOL: np.dtype(np.bool_),
}
DTYPE_BY_NUMPY: dict[np.dtype, int] = {numpy_dtype: enum for enum, numpy_dtype in NUMPY_BY_DTYPE.items()}

# Which repeated field holds the values of each dtype when tensor_content is empty (TensorProto's typed fields).
_VALUE_FIELD: dict[int, str] = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
}


def dtype_name(dtype_enum: int) -> str:
    """DT_FLOAT and friends, as TensorFlow Serving writes them in messages."""
    try:
        return types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"dtype {dtype_enum}"


def tensor_to_array(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """Decode a TensorProto into a read-only numpy array; a malformed one raises RequestError (INVALID_ARGUMENT)."""
    if proto.tensor_shape.unknown_rank:
        raise RequestError(f"Tensor '{name}' has an unknown rank; give its shape.")
    shape = tuple(dimension.size for dimension in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise RequestError(f"Tensor '{name}' has a negative dimension in shape {list(shape)}.")
    count = math.prod(shape)
    numpy_dtype = NUMPY_BY_DTYPE.get(proto.dtype)
    if numpy_dtype is None:
        return _decode_with_tensorflow(proto, name)
    if proto.tensor_content:
        if len(proto.tensor_content) != count * numpy_dtype.itemsize:
            raise RequestError(
                f"Tensor '{name}' has {len(proto.tensor_content)} bytes of tensor_content but shape {list(shape)} "
                f"of {dtype_name(proto.dtype)} needs {count * numpy_dtype.itemsize}."
            )
        # (N, ...) view on the request's bytes: no copy, no per-element conversion.
        return np.frombuffer(proto.tensor_content, dtype=numpy_dtype).reshape(shape)
    if proto.dtype == types_pb2.DT_HALF:
        values = np.asarray(proto.half_val, dtype=np.uint16).view(np.float16)
    else:
        values = np.asarray(getattr(proto, _VALUE_FIELD[proto.dtype]), dtype=numpy_dtype)
    if values.size == count:
        return values.reshape(shape)
    # TensorFlow's rule: fewer values than elements repeats the last one (a single value fills the tensor).
    if 0 < values.size < count:
        return np.concatenate([values, np.full(count - values.size, values[-1], dtype=numpy_dtype)]).reshape(shape)
    if values.size == 0 and count == 0:
        return values.reshape(shape)
    raise RequestError(f"Tensor '{name}' holds {values.size} values but its shape {list(shape)} needs {count}.")


def _decode_with_tensorflow(proto: tensor_pb2.TensorProto, name: str) -> np.ndarray:
    """Rare dtypes (strings, complex, bfloat16): let TensorFlow's own decoder handle them."""
    import tensorflow as tf  # only on this slow path; clients importing this module stay light

    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # TensorFlow raises several types for malformed protos
        raise RequestError(f"Tensor '{name}' cannot be decoded: {error}.") from None


def fill_tensor(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write array into proto (dtype, shape, raw bytes); strings and other rare dtypes go through TensorFlow."""
    dtype_enum = DTYPE_BY_NUMPY.get(array.dtype)
    if dtype_enum is None:
        import tensorflow as tf

        proto.CopyFrom(tf.make_tensor_proto(array))
        return
    proto.dtype = dtype_enum
    dimensions = proto.tensor_shape.dim
    for size in array.shape:
        dimensions.add(size=size)
    # tobytes() of a C-contiguous little-endian array is exactly TensorFlow's tensor_content layout.
    proto.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A new TensorProto holding array."""
    proto = tensor_pb2.TensorProto()
    fill_tensor(proto, np.asarray(array))
    return proto


def shape_proto(shape: tuple[int | None, ...] | None) -> tensor_shape_pb2.TensorShapeProto:
    """A TensorShapeProto with -1 for unknown dimensions (or unknown rank for None)."""
    if shape is None:
        return tensor_shape_pb2.TensorShapeProto(unknown_rank=True)
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1 if size is None else size) for size in shape]
    )
