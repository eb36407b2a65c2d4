"""TensorProto ⇄ NumPy by TensorFlow's own rules, without TensorFlow: tensor_content is read with np.frombuffer.

Answers are written the two ways TensorFlow writes tensors: typed repeated fields (float_val, int64_val, ...: what
TensorFlow Serving's Predict returns) or raw bytes in tensor_content (what this project's client sends).
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


def _parsing_error(name: str, detail: str) -> RequestError:
    # The real server's words first ("tensor parsing error: x"), then what exactly is wrong.
    return RequestError(f"tensor parsing error: {name}. {detail}")


def tensor_to_array(proto: tensor_pb2.TensorProto, name: str = "tensor") -> np.ndarray:
    """Decode a TensorProto as TensorFlow's Tensor::FromProto does; a malformed one raises RequestError (INVALID_ARGUMENT)."""
    if proto.tensor_shape.unknown_rank:
        raise _parsing_error(name, "Its shape has an unknown rank; give every dimension.")
    shape = tuple(dimension.size for dimension in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise _parsing_error(name, f"Its shape {list(shape)} has a negative dimension.")
    count = math.prod(shape)
    if proto.dtype == types_pb2.DT_STRING:
        return _fill_to_shape(np.array(list(proto.string_val), dtype=object), shape, name, b"")
    numpy_dtype = NUMPY_BY_DTYPE.get(proto.dtype)
    if numpy_dtype is None:
        raise _parsing_error(name, f"Its dtype {dtype_name(proto.dtype)} cannot be decoded by this server.")
    if proto.tensor_content:
        if len(proto.tensor_content) != count * numpy_dtype.itemsize:
            raise _parsing_error(
                name,
                f"It has {len(proto.tensor_content)} bytes of tensor_content but shape {list(shape)} "
                f"of {dtype_name(proto.dtype)} needs {count * numpy_dtype.itemsize}.",
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
    return _fill_to_shape(values, shape, name, numpy_dtype.type(0))


def _fill_to_shape(values: np.ndarray, shape: tuple[int, ...], name: str, default: object) -> np.ndarray:
    """values (count,) reshaped to shape by TensorFlow's rules: fewer values repeat the last one, none means zeros."""
    count = math.prod(shape)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0:
        filled = np.empty(count, dtype=values.dtype)
        filled[:] = default
        return filled.reshape(shape)
    if values.size < count:
        return np.concatenate([values, np.full(count - values.size, values[-1], dtype=values.dtype)]).reshape(shape)
    raise _parsing_error(name, f"It holds {values.size} values but its shape {list(shape)} has room for {count}.")


def _fill_shape_and_dtype(proto: tensor_pb2.TensorProto, array: np.ndarray) -> int | None:
    """Write array's shape and dtype into proto; the DataType enum, or None for strings (DT_STRING, written here)."""
    proto.tensor_shape.SetInParent()  # a scalar still has its (empty) shape, as TensorFlow writes it
    dimensions = proto.tensor_shape.dim
    for size in array.shape:
        dimensions.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(value.encode() if isinstance(value, str) else bytes(value) for value in array.flat)
        return None
    dtype_enum = DTYPE_BY_NUMPY.get(array.dtype)
    if dtype_enum is None:
        raise ValueError(f"arrays of {array.dtype} have no TensorProto encoding here")
    proto.dtype = dtype_enum
    return dtype_enum


def fill_tensor(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write array into proto: dtype, shape, and raw bytes in tensor_content (or string_val for strings)."""
    if _fill_shape_and_dtype(proto, array) is not None:
        # tobytes() of a C-contiguous little-endian array is exactly TensorFlow's tensor_content layout.
        proto.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def fill_tensor_fields(proto: tensor_pb2.TensorProto, array: np.ndarray) -> None:
    """Write array into proto's typed fields (float_val, int64_val, ...), as TensorFlow Serving answers Predict."""
    dtype_enum = _fill_shape_and_dtype(proto, array)
    if dtype_enum is None:
        return
    flat = np.ascontiguousarray(array).ravel()
    if dtype_enum == types_pb2.DT_HALF:
        proto.half_val.extend(flat.view(np.uint16).tolist())  # float16 bit patterns, as TensorFlow stores them
    elif flat.dtype.kind == "c":
        getattr(proto, _VALUE_FIELD[dtype_enum]).extend(flat.view(flat.real.dtype).tolist())
    else:
        getattr(proto, _VALUE_FIELD[dtype_enum]).extend(flat.tolist())


def array_to_tensor(array: np.ndarray) -> tensor_pb2.TensorProto:
    """A new TensorProto holding array."""
    proto = tensor_pb2.TensorProto()
    fill_tensor(proto, np.asarray(array))
    return proto

