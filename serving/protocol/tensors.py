"""TensorProto ⇄ NumPy by TensorFlow's own rules, without TensorFlow: tensor_content is read with np.frombuffer.

Answers are written the two ways TensorFlow writes tensors: typed repeated fields (float_val, int64_val, ...: what
TensorFlow Serving's Predict returns) or raw bytes in tensor_content (what this project's client sends).
A request's tensors must carry exactly the values their shapes declare, and no more elements than
serving.protocol.limits allows: both are checked before any array is allocated.
Only TensorFlow's generated protobuf modules are used (never the TensorFlow API), so decoding is the same in every
process that speaks the gRPC API, with or without a model loaded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from tensorflow.core.framework import tensor_pb2, types_pb2

from .errors import RequestError
from .limits import MAX_REQUEST_ELEMENTS
from .signatures import DATA_TYPE_NAMES, DType, Tensor, string_bytes

# The dtypes whose TensorProto can carry raw little-endian bytes in tensor_content.
NUMPY_BY_DTYPE: dict[int, DType] = {
    types_pb2.DataType.Value(name): numpy_dtype for numpy_dtype, name in DATA_TYPE_NAMES.items()
}
DTYPE_BY_NUMPY: dict[DType, int] = {numpy_dtype: enum for enum, numpy_dtype in NUMPY_BY_DTYPE.items()}

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
        name: str = types_pb2.DataType.Name(dtype_enum)
    except ValueError:
        return f"dtype {dtype_enum}"
    return name


def _parsing_error(name: str, detail: str) -> RequestError:
    # The real server's words first ("tensor parsing error: x"), then what exactly is wrong.
    return RequestError(f"tensor parsing error: {name}. {detail}")


def tensor_to_array(
    proto: tensor_pb2.TensorProto, name: str = "tensor", max_elements: int = MAX_REQUEST_ELEMENTS, fill: bool = False
) -> Tensor:
    """Decode a TensorProto; a malformed one raises RequestError (INVALID_ARGUMENT) before anything is allocated.

    The values must fill the shape exactly: as many typed values (float_val, ...) as the shape has elements, or
    exactly the shape's bytes of tensor_content. fill=True applies TensorFlow's Tensor::FromProto rule to a short
    typed field instead (the last value repeats, no values means zeros), for trusted input such as a model's own
    warm-up records; a request never gets it, because a few bytes could then declare gigabytes.
    """
    shape, count = _checked_shape(proto, name, max_elements)
    if proto.dtype == types_pb2.DT_STRING:
        _check_value_count(name, shape, len(proto.string_val), count, fill)
        return _fill_to_shape(np.array(list(proto.string_val), dtype=object), shape, b"")
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
    field = "half_val" if proto.dtype == types_pb2.DT_HALF else _VALUE_FIELD[proto.dtype]
    parts = 2 if numpy_dtype.kind == "c" else 1  # complex values travel as (real, imaginary) pairs
    raw = getattr(proto, field)
    _check_value_count(name, shape, len(raw) // parts if len(raw) % parts == 0 else -1, count, fill, parts)
    if proto.dtype == types_pb2.DT_HALF:
        values = np.asarray(raw, dtype=np.uint16).view(np.float16)
    elif parts == 2:
        values = np.asarray(raw, dtype=numpy_dtype.type(0).real.dtype).view(numpy_dtype)
    else:
        values = np.asarray(raw, dtype=numpy_dtype)
    return _fill_to_shape(values, shape, numpy_dtype.type(0))


def _checked_shape(proto: tensor_pb2.TensorProto, name: str, max_elements: int) -> tuple[tuple[int, ...], int]:
    """The shape and its element count; RequestError for an unknown rank, a negative size, or too many elements."""
    if proto.tensor_shape.unknown_rank:
        raise _parsing_error(name, "Its shape has an unknown rank; give every dimension.")
    shape = tuple(dimension.size for dimension in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise _parsing_error(name, f"Its shape {list(shape)} has a negative dimension.")
    count = math.prod(shape)  # a Python int: a shape of 2^40 elements is just a large number here
    if count > max_elements:
        raise _parsing_error(
            name, f"Its shape {list(shape)} has {count} elements, more than the {max_elements} a request may hold."
        )
    return shape, count


def _check_value_count(name: str, shape: tuple[int, ...], values: int, count: int, fill: bool, parts: int = 1) -> None:
    """Refuse typed values that do not fill the shape exactly (fill: TensorFlow's rule, fewer values may repeat)."""
    if values == count or (fill and 0 <= values < count):
        return
    if values < 0:
        held = "an odd number of numbers for (real, imaginary) pairs"
    else:
        held = f"{values} value{'' if values == 1 else 's'}"
    per_value = "" if parts == 1 else f" of {parts} numbers each"
    raise _parsing_error(name, f"It holds {held} but its shape {list(shape)} needs exactly {count}{per_value}.")


def _fill_to_shape(values: Tensor, shape: tuple[int, ...], default: bytes | np.generic[object]) -> Tensor:
    """values (count or fewer, checked) reshaped to shape: fewer values repeat the last one, none means zeros."""
    count = math.prod(shape)
    if values.size == count:
        return values.reshape(shape)
    if values.size == 0:
        filled = np.empty(count, dtype=values.dtype)
        filled[:] = default
        return filled.reshape(shape)
    return np.concatenate([values, np.full(count - values.size, values[-1], dtype=values.dtype)]).reshape(shape)


def tensors_to_arrays(
    protos: Mapping[str, tensor_pb2.TensorProto], max_elements: int = MAX_REQUEST_ELEMENTS
) -> dict[str, Tensor]:
    """Decode a request's named tensors; INVALID_ARGUMENT when together they declare more than max_elements."""
    # Every shape is checked before any tensor is decoded, so a request over the cap allocates nothing.
    total = sum(_checked_shape(proto, alias, max_elements)[1] for alias, proto in protos.items())
    if total > max_elements:
        raise RequestError(
            f"The request's tensors hold {total} elements together, more than the {max_elements} a request may hold."
        )
    return {alias: tensor_to_array(proto, alias, max_elements) for alias, proto in protos.items()}


def _fill_shape_and_dtype(proto: tensor_pb2.TensorProto, array: Tensor) -> int | None:
    """Write array's shape and dtype into proto; the DataType enum, or None for strings (DT_STRING, written here)."""
    proto.tensor_shape.SetInParent()  # a scalar still has its (empty) shape, as TensorFlow writes it
    dimensions = proto.tensor_shape.dim
    for size in array.shape:
        dimensions.add(size=size)
    if array.dtype.kind in "OSU":
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(string_bytes(value) for value in array.flat)
        return None
    dtype_enum = DTYPE_BY_NUMPY.get(array.dtype)
    if dtype_enum is None:
        raise ValueError(f"arrays of {array.dtype} have no TensorProto encoding here")
    proto.dtype = dtype_enum
    return dtype_enum


def fill_tensor(proto: tensor_pb2.TensorProto, array: Tensor) -> None:
    """Write array into proto: dtype, shape, and raw bytes in tensor_content (or string_val for strings)."""
    if _fill_shape_and_dtype(proto, array) is not None:
        # tobytes() of a C-contiguous little-endian array is exactly TensorFlow's tensor_content layout.
        proto.tensor_content = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def fill_tensor_fields(proto: tensor_pb2.TensorProto, array: Tensor) -> None:
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


def array_to_tensor(array: npt.ArrayLike) -> tensor_pb2.TensorProto:
    """A new TensorProto holding array."""
    proto = tensor_pb2.TensorProto()
    fill_tensor(proto, np.asarray(array))
    return proto
