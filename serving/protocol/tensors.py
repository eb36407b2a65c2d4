"""TensorProto ⇄ NumPy without per-element work: tensor_content is read with np.frombuffer, written from array bytes.

Only TensorFlow's generated protobuf modules are used (never the TensorFlow API), so decoding is the same in every
process that speaks the gRPC API, with or without a model loaded.
"""

from __future__ import annotations

import math

import numpy as np
from tensorflow.core.framework import tensor_pb2, types_pb2

from .errors import RequestError
from .signatures import DATA_TYPE_NAMES

# The dtypes whose TensorProto can carry raw little-endian bytes in tensor_content.
NUMPY_BY_DTYPE: dict[int, np.dtype] = {
    types_pb2.DataType.Value(name): numpy_dtype for numpy_dtype, name in DATA_TYPE_NAMES.items()
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
    types_pb2.DT_COMPLEX64: "scomplex_val",  # real and imaginary parts interleaved
    types_pb2.DT_COMPLEX128: "dcomplex_val",
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
    if proto.dtype == types_pb2.DT_STRING:
        return _fill_to_shape(np.array(list(proto.string_val), dtype=object), shape, name)
    numpy_dtype = NUMPY_BY_DTYPE.get(proto.dtype)
    if numpy_dtype is None:
        raise RequestError(f"Tensor '{name}' has dtype {dtype_name(proto.dtype)}, which this server cannot decode.")
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
    elif numpy_dtype.kind == "c":
        parts = np.asarray(getattr(proto, _VALUE_FIELD[proto.dtype]), dtype=numpy_dtype.type(0).real.dtype)
        values = parts[: parts.size - parts.size % 2].view(numpy_dtype)  # (real, imaginary) pairs
    else:
        values = np.asarray(getattr(proto, _VALUE_FIELD[proto.dtype]), dtype=numpy_dtype)
    return _fill_to_shape(values, shape, name)


def _fill_to_shape(values: np.ndarray, shape: tuple[int, ...], name: str) -> np.ndarray:
    """values (count,) reshaped to shape; TensorFlow's rule: fewer values than elements repeats the last one."""
    count = math.prod(shape)
    if values.size == count:
        return values.reshape(shape)
    if 0 < values.size < count:
        return np.concatenate([values, np.full(count - values.size, values[-1], dtype=values.dtype)]).reshape(shape)
    raise RequestError(f"Tensor '{name}' holds {values.size} values but its shape {list(shape)} needs {count}.")


def fill_tensor(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write array into proto: dtype, shape, and raw bytes (or string_val for strings and bytes)."""
    dimensions = proto.tensor_shape.dim
    for size in array.shape:
        dimensions.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value.encode() if isinstance(value, str) else bytes(value) for value in array.flat)
        return
    dtype_enum = DTYPE_BY_NUMPY.get(array.dtype)
    if dtype_enum is None:
        raise ValueError(f"arrays of {array.dtype} have no TensorProto encoding here")
    proto.dtype = dtype_enum
    # tobytes() of a C-contiguous little-endian array is exactly TensorFlow's tensor_content layout.
    proto.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A new TensorProto holding array."""
    proto = tensor_pb2.TensorProto()
    fill_tensor(proto, np.asarray(array))
    return proto

