"""JSON values to tensors as TensorFlow Serving reads them, typed by the signature's input dtypes.

A JSON value becomes a tensor of the dtype its signature input declares (DT_FLOAT takes any number that float32
holds without loss, DT_INT32 only integers, DT_STRING strings or {"b64": ...}), shaped by its nesting. Nothing is
checked against the signature's shapes: the real server hands the tensor to the graph. Refusals carry the real
server's words (its util/json_tensor.cc). Writing tensors back as JSON is serving.protocol.json_writing's.

Bodies are decoded by orjson (C) when it reads them: it takes the same numbers as rapidjson (integers while they
fit 64 bits, doubles beyond) and refuses what rapidjson refuses; whatever it refuses (NaN and Infinity, which the
real server reads, numbers beyond a double, lone surrogates, other encodings, syntax errors) goes through the
standard library's parser with the checks below, which give the real server's reading and words.

NumPy, orjson and the standard library only, so serving.protocol.rest (and the TorchServe archive) can use it; an
image without orjson (the TorchServe archive carries this package into images it does not build) takes the exact
path for every body.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import re
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from .errors import QUOTED_LIMIT, RequestError, quoted
from .limits import MAX_JSON_DEPTH, MAX_REQUEST_ELEMENTS
from .signatures import DATA_TYPE_NAMES, DType, Tensor

if TYPE_CHECKING:  # the TorchServe archive carries this package alone: types from the project only when checking
    from experiment.json_types import JSONDict, JSONValue

orjson: ModuleType | None
try:
    import orjson
except ImportError:  # a TorchServe image that lacks it: the .mar's copy of this package parses on the exact path
    orjson = None

# One JSON leaf converted for a tensor: a number, a boolean (an int), or the bytes of a string.
Leaf = int | float | bytes

# DataType name → (NumPy dtype, TensorFlow's short name, which JSON numbers it takes). Only these convert from JSON.
JSON_DTYPES: dict[str, tuple[DType, str, str]] = {
    "DT_FLOAT": (np.dtype(np.float32), "float", "float"),
    "DT_DOUBLE": (np.dtype(np.float64), "double", "float"),
    "DT_INT32": (np.dtype(np.int32), "int32", "int32"),
    "DT_INT16": (np.dtype(np.int16), "int16", "int32"),
    "DT_INT8": (np.dtype(np.int8), "int8", "int32"),
    "DT_UINT8": (np.dtype(np.uint8), "uint8", "int32"),
    "DT_INT64": (np.dtype(np.int64), "int64", "int64"),
    "DT_UINT32": (np.dtype(np.uint32), "uint32", "uint32"),
    "DT_UINT64": (np.dtype(np.uint64), "uint64", "uint64"),
    "DT_BOOL": (np.dtype(np.bool_), "bool", "bool"),
    "DT_STRING": (np.dtype(object), "string", "string"),
}
# The range of JSON integers each kind accepts (rapidjson's IsInt, IsInt64, IsUint, IsUint64).
INTEGER_RANGES = {
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
# Largest whole number a float (24-bit mantissa) or double (53-bit) holds exactly; larger JSON integers are refused.
EXACT_INTEGER_LIMIT = {"float": 2**24 - 1, "double": 2**53 - 1}
FLOAT32_MAX = float(np.finfo(np.float32).max)

# Python's json messages → rapidjson's, which the real server's messages carry.
_PARSE_ERRORS = (
    ("Expecting value", "Invalid value."),
    ("Extra data", "The document root must not be followed by other values."),
    ("Expecting property name", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Expecting ',' delimiter", "Missing a comma or ']' after an array element."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
)


def type_name(dtype_name: str) -> str:
    """TensorFlow's short name of a DataType name ('DT_FLOAT' → 'float')."""
    return JSON_DTYPES[dtype_name][1] if dtype_name in JSON_DTYPES else dtype_name.removeprefix("DT_").lower()


_MESSAGE_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=True, ensure_ascii=False, default=str)


def value_text(value: object) -> str:
    """A JSON value as it appears in a message (NaN and Infinity as tokens), cut to a readable length."""
    # iterencode writes lazily: a 64 MiB document costs the few pieces before the cut, not a whole copy
    pieces = itertools.islice(_MESSAGE_ENCODER.iterencode(value), QUOTED_LIMIT + 1)
    return quoted("".join(pieces))


_JSON_TYPE_NAMES: dict[type, str] = {dict: "Object", list: "Array", str: "String"}


def json_type(value: object) -> str:
    """rapidjson's name of a value's JSON type."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return _JSON_TYPE_NAMES.get(type(value), "Number")


class JsonSyntaxError(ValueError):
    """A body that is not JSON as rapidjson (the real server's parser) reads it: its reason and offset."""

    def __init__(self, reason: str, offset: int) -> None:
        super().__init__(f"{reason} at offset: {offset}")
        self.reason = reason
        self.offset = offset


class _NumberTooBig(ValueError):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


# Byte maps for the scans below, which run at C speed over the whole body before json parses it: digits become "0"
# and exponent marks "e" (a run of 20 digits, beyond int64, or an exponent of three digits, beyond a double perhaps,
# are the numbers that need the slow per-number conversion); "[" and "{" become 1, "]" and "}" become -1, and every
# other byte is deleted, leaving one signed byte per bracket to sum.
_NUMBER_SHAPES = bytes(ord("0") if 48 <= byte <= 57 else ord("e") if chr(byte) in "eE" else 32 for byte in range(256))
_SIGNS = b"+-"  # deleted, so that "1e-400" reads "0e000"
_FEW_EXPONENTS = 256
_BRACKET_STEPS = bytes(1 if chr(byte) in "[{" else 255 if chr(byte) in "]}" else 0 for byte in range(256))
_NOT_BRACKETS = bytes(byte for byte in range(256) if chr(byte) not in "[]{}")
_DEPTH_CHUNK = 4 * 1024 * 1024  # brackets summed at once: 32 MiB of running sums
# Strings are blanked in two linear passes: escape pairs first (valid JSON has backslashes only inside strings, and
# reading pairs from the left agrees with reading them from each string's start), then quote to quote. One pattern
# for "a string with escapes" would backtrack: a body of 20,000 \" pairs after a quote took it 14 s.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_STRING = re.compile(rb'"[^"]*"')
# \u escapes of UTF-16 surrogates: a surrogate is a character only as a high one (D800-DBFF) escaped right before a
# low one (DC00-DFFF); json alone reads a lone one into a str that UTF-8 cannot encode.
_HIGH = rb"\\u[dD][89abAB][0-9a-fA-F]{2}"
_LOW = rb"\\u[dD][c-fC-F][0-9a-fA-F]{2}"
_LONE_HIGH = re.compile(_HIGH + b"(?!" + _LOW + b")")
_LONE_LOW = re.compile(_LOW + b"(?<!" + _HIGH + _LOW + b")")  # looks behind last, so that searches skip to "\\u"
_INVALID_SURROGATE = "The surrogate pair in string is invalid."
_UINT64_MAX = 2**64 - 1
_INT64_MIN = -(2**63)


def _rapidjson_integer(token: str) -> int | float:
    """An integer token as rapidjson reads it: an integer while it fits 64 bits, else a double (or too big)."""
    digits = len(token) - token.startswith("-")
    if digits <= 20:  # Python's int() is exact and cheap here; past 4300 digits it would refuse
        value = int(token)
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
    return _rapidjson_double(token)


def _rapidjson_double(token: str) -> float:
    value = float(token)  # never raises for a JSON number token; overflows to inf
    if math.isinf(value):
        raise _NumberTooBig(token)
    return value


def _has_long_number(utf8: bytes) -> bool:
    """Whether the text holds a run of 20 digits or an exponent of three (perhaps inside a string: harmless)."""
    shapes = utf8.translate(_NUMBER_SHAPES, _SIGNS)
    if b"0" * 20 in shapes:
        return True
    if shapes.count(b"e") > _FEW_EXPONENTS:
        return b"e000" in shapes
    position = shapes.find(b"e")  # few: look at each (a search for "e000" crawls over bodies full of digits)
    while position >= 0:
        if shapes.startswith(b"000", position + 1):
            return True
        position = shapes.find(b"e", position + 1)
    return False


def _invalid_surrogate_offset(utf8: bytes) -> int | None:
    """The offset of the first \\u escape of a surrogate that is not half of a pair (rapidjson refuses it), or None.

    Searches at C speed: a body without a \\u escape, nearly every one, costs one search; 60 MB of surrogate pairs, 1.3 s.
    """
    if b"\\u" not in utf8:
        return None
    # Escaped backslashes blanked (read from the left, as _ESCAPE reads pairs): every backslash left starts an escape.
    text = utf8.replace(b"\\\\", b"__")
    if b"\\ud" not in text and b"\\uD" not in text:
        return None
    lone = [match.start() for pattern in (_LONE_HIGH, _LONE_LOW) if (match := pattern.search(text)) is not None]
    return min(lone, default=None)


def _utf8(raw: bytes | bytearray | str) -> bytes:
    """The body as UTF-8 bytes (json accepts UTF-16 and UTF-32 too, whose bytes the scans below cannot read)."""
    if isinstance(raw, str):
        return raw.encode("utf-8", errors="surrogatepass")
    raw = bytes(raw)
    encoding = json.detect_encoding(raw)
    return raw if encoding == "utf-8" else raw.decode(encoding, errors="replace").encode("utf-8")


def json_depth(raw: bytes | bytearray) -> int:
    """The deepest nesting of arrays and objects in a JSON text, counted without parsing it (so without recursion).

    Brackets inside strings do not count. A few passes at C speed; the one array it builds has an entry per bracket.
    """
    text = _ESCAPE.sub(b"_", raw) if b"\\" in raw else raw
    text = _STRING.sub(b'""', text) if b'"' in text else text
    steps = np.frombuffer(text.translate(_BRACKET_STEPS, _NOT_BRACKETS), np.int8)  # one byte per bracket: +1 or -1
    deepest = level = 0
    for start in range(0, steps.size, _DEPTH_CHUNK):  # chunks bound the running sums' memory for any body
        levels = np.cumsum(steps[start : start + _DEPTH_CHUNK], dtype=np.int64) + level
        deepest, level = max(deepest, int(levels.max())), int(levels[-1])
    return deepest


def _too_many_values() -> RequestError:
    return RequestError(f"The request holds more than {MAX_REQUEST_ELEMENTS} values, this server's limit per request.")


def check_json_bounds(raw: bytes | bytearray) -> None:
    """Refuse, before parsing, a UTF-8 body nested deeper than MAX_JSON_DEPTH or holding more than
    MAX_REQUEST_ELEMENTS values (counted by its commas, an upper bound found without building anything)."""
    # Every value but the last is followed by a comma; a body under twice the cap cannot hold that many commas.
    if len(raw) >= 2 * MAX_REQUEST_ELEMENTS and raw.count(b",") >= MAX_REQUEST_ELEMENTS:
        raise _too_many_values()
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return  # so few brackets cannot nest too deep: small bodies skip the scan
    depth = json_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise RequestError(
            f"The request nests {depth} levels of arrays and objects; this server accepts at most {MAX_JSON_DEPTH}."
        )


def parse_json(raw: bytes | bytearray | str) -> JSONValue:
    """A request body decoded as the real server's parser reads it, within this server's bounds.

    Numbers follow rapidjson: integers that fit 64 bits stay integers, longer ones become doubles, and a number
    beyond a double's range is an error (json alone would say Infinity, or refuse an integer of 4300 digits with a
    ValueError). NaN and Infinity are accepted, as the real server accepts them. Raises JsonSyntaxError for text that
    is not JSON and RequestError for a body over the bounds of serving.protocol.limits.
    """
    # UTF-8 text (the first byte of any other encoding's JSON is a NUL or a byte order mark) goes to orjson, after the
    # bounds; what orjson refuses, the exact path reads or names as rapidjson would.
    if orjson is not None and isinstance(raw, (bytes, bytearray)) and raw[:1] not in _NOT_UTF8_STARTS:
        check_json_bounds(raw)
        try:
            document: JSONValue = orjson.loads(raw)
            return document
        except orjson.JSONDecodeError:
            pass
    return _parse_json_exactly(raw)


# A JSON text starts with whitespace or a value; these first bytes mean UTF-16/32 or a byte order mark.
_NOT_UTF8_STARTS = (b"\x00", b"\xef", b"\xfe", b"\xff")


def _parse_json_exactly(raw: bytes | bytearray | str) -> JSONValue:
    """parse_json for any body, with the standard library's parser and rapidjson's rules laid over it."""
    utf8 = _utf8(raw)
    check_json_bounds(utf8)
    document: JSONValue
    try:
        if _has_long_number(utf8):
            document = json.loads(utf8, parse_int=_rapidjson_integer, parse_float=_rapidjson_double)
        else:
            document = json.loads(utf8)
    except UnicodeDecodeError:
        raise JsonSyntaxError("Invalid encoding in string.", 0) from None
    except json.JSONDecodeError as error:
        surrogate = _invalid_surrogate_offset(utf8[: error.pos])  # rapidjson stops at whichever comes first
        if surrogate is not None:
            raise JsonSyntaxError(_INVALID_SURROGATE, surrogate) from None
        reason = next((theirs for ours, theirs in _PARSE_ERRORS if error.msg.startswith(ours)), error.msg + ".")
        raise JsonSyntaxError(reason, error.pos) from None
    except _NumberTooBig as error:
        offset = max(utf8.find(error.token.encode()), 0)  # the first place the token appears: where rapidjson stops
        raise JsonSyntaxError("Number too big to be stored in double.", offset) from None
    except RecursionError:  # unreachable after the depth check; kept so that no body can ever become a 500
        raise RequestError(f"The request nests deeper than {MAX_JSON_DEPTH} levels of arrays and objects.") from None
    surrogate = _invalid_surrogate_offset(utf8)
    if surrogate is not None:
        raise JsonSyntaxError(_INVALID_SURROGATE, surrogate)
    return document


def load_document(raw: bytes | str) -> JSONDict:
    """Parse a request body; mistakes read as the real server's 'JSON Parse error: ...'; the top level must be an object."""
    if not raw or not (raw.strip() if isinstance(raw, (bytes, str)) else raw):
        raise RequestError("JSON Parse error: The document is empty")
    try:
        document = parse_json(raw)
    except JsonSyntaxError as error:
        raise RequestError(f"JSON Parse error: {error.reason} at offset: {error.offset}") from None
    if not isinstance(document, dict):
        raise RequestError(f"JSON Value: {value_text(document)} Is not object")
    return document


def signature_name(document: Mapping[str, JSONValue]) -> str:
    """The optional "signature_name" ("" when absent), which must be a string."""
    name = document.get("signature_name", "")
    if not isinstance(name, str):
        raise RequestError(
            f"JSON Value: {value_text(document)} not formatted correctly. 'signature_name' key must be a string value."
        )
    return name


def is_base64_object(value: object) -> TypeGuard[dict[str, str]]:
    """{"b64": "<base64 text>"} and nothing else: binary data inside JSON."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get("b64"), str)


def decode_base64(value: object) -> bytes:
    """The bytes of a {"b64": ...} object."""
    if not is_base64_object(value):
        raise RequestError(f"JSON Value: {value_text(value)} not formatted correctly for base64 data")
    text = value["b64"]
    try:  # padding is optional, as for the real server's decoder
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("Unable to base64 decode") from None


def _type_error(value: object, dtype_name: str) -> RequestError:
    return RequestError(
        f"JSON Value: {value_text(value)} Type: {json_type(value)} is not of expected type: {type_name(dtype_name)}"
    )


def _number(value: object, dtype_name: str) -> Leaf:
    """One JSON leaf checked and converted for dtype_name, as the real server's AddValueToTensor does."""
    if dtype_name not in JSON_DTYPES:
        raise RequestError(
            f"Conversion of JSON Value: {value_text(value)} to type: {type_name(dtype_name)}", "UNIMPLEMENTED"
        )
    kind = JSON_DTYPES[dtype_name][2]
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, dtype_name)
        limit = EXACT_INTEGER_LIMIT[type_name(dtype_name)]
        lossless = (
            abs(value) <= limit
            if isinstance(value, int)
            else (not math.isfinite(value) or dtype_name == "DT_DOUBLE" or abs(value) <= FLOAT32_MAX)
        )
        if not lossless:
            raise RequestError(
                f"Cannot convert JSON value: {value_text(value)} to {type_name(dtype_name)} without loss of precision."
            )
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise _type_error(value, dtype_name)
        return value
    if kind == "string":
        if isinstance(value, str):
            return value.encode()
        if isinstance(value, dict):
            return decode_base64(value)
        raise _type_error(value, dtype_name)
    low, high = INTEGER_RANGES[kind]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _type_error(value, dtype_name)
    return value


def dense_shape(value: object) -> list[int]:
    """The shape a nested list claims, following the first element of every list (GetDenseTensorShape)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def check_element_count(shape: list[int]) -> None:
    """Refuse a tensor of more than MAX_REQUEST_ELEMENTS values before anything is allocated for it."""
    if math.prod(shape) > MAX_REQUEST_ELEMENTS:
        raise _too_many_values()


def _fill(value: object, level: int, shape: list[int], dtype_name: str, flat: list[Leaf]) -> None:
    """Walk value depth-first, checking it is dense with shape and collecting converted leaves (FillTensorProto)."""
    if not isinstance(value, list):
        if level != len(shape):
            raise RequestError(
                f"JSON Value: {value_text(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {len(shape)}"
            )
        if isinstance(value, dict) and dtype_name != "DT_STRING":
            raise _type_error(value, dtype_name)
        flat.append(_number(value, dtype_name))
        return
    if level >= len(shape):
        raise RequestError(f"Encountered list at unexpected level: {level} expected < {len(shape)}")
    if len(value) != shape[level]:
        raise RequestError(
            f"Encountered list at unexpected size: {len(value)} at level: {level} expected size: {shape[level]}"
        )
    for item in value:
        _fill(item, level + 1, shape, dtype_name, flat)


def _exact_array(value: object, dtype_name: str) -> Tensor:
    """value as a tensor, every leaf checked one by one (slow, but with the real server's exact refusals)."""
    shape = dense_shape(value)
    flat: list[Leaf] = []
    _fill(value, 0, shape, dtype_name, flat)
    return _as_array(flat, shape, dtype_name)


def _as_array(flat: list[Leaf], shape: list[int], dtype_name: str) -> Tensor:
    if dtype_name not in JSON_DTYPES:  # only an empty tensor gets here (any leaf would have been refused)
        by_name = {name: dtype for dtype, name in DATA_TYPE_NAMES.items()}
        if dtype_name not in by_name:
            raise RequestError(f"Conversion of JSON Value: [] to type: {type_name(dtype_name)}", "UNIMPLEMENTED")
        return np.zeros(shape, dtype=by_name[dtype_name])
    numpy_dtype = JSON_DTYPES[dtype_name][0]
    if numpy_dtype.kind == "O":
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    # int8/int16/uint8 wrap around as TensorFlow's int_val → int8 conversion does
    return (
        np.array(flat, dtype=np.int64 if numpy_dtype.kind in "iu" and numpy_dtype.itemsize < 8 else None)
        .astype(numpy_dtype)
        .reshape(shape)
    )


def fast_tensor(value: object, dtype_name: str, may_hold_booleans: bool = True) -> Tensor | None:
    """value via one np.asarray when that cannot change the answer; None when only the leaf-by-leaf walk can tell."""
    kind = JSON_DTYPES.get(dtype_name, (None, None, "string"))[2]
    if kind == "string" or (may_hold_booleans and kind != "bool"):
        return None  # booleans pass as 1/0 through np.asarray; strings need the per-leaf b64 check
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged lists and the like: the exact walk names the problem
    if array.size == 0 or array.dtype.kind not in ("b" if kind == "bool" else "iuf"):
        return None
    if kind == "float":
        if array.dtype.kind == "f":
            # whole numbers beyond the exact range may have been integers in the JSON: let the walk judge them
            limit = EXACT_INTEGER_LIMIT["float"]
            if not np.maximum.reduce(np.abs(array), axis=None) <= limit:  # one pass when all are finite and small
                finite = array[np.isfinite(array)]
                if finite.size and np.abs(finite).max() > limit:
                    return None
        elif (
            array.min() < -EXACT_INTEGER_LIMIT[type_name(dtype_name)]
            or array.max() > EXACT_INTEGER_LIMIT[type_name(dtype_name)]
        ):
            return None
    elif kind != "bool":
        low, high = INTEGER_RANGES[kind]
        if array.dtype.kind == "f" or int(array.min()) < low or int(array.max()) > high:
            return None
    return array.astype(JSON_DTYPES[dtype_name][0])


def to_tensor(value: object, dtype_name: str, may_hold_booleans: bool = True) -> Tensor:
    """One JSON value (scalar or nested lists) as a tensor of dtype_name, refused in the real server's words."""
    check_element_count(dense_shape(value))
    fast = fast_tensor(value, dtype_name, may_hold_booleans) if dtype_name in JSON_DTYPES else None
    return fast if fast is not None else _exact_array(value, dtype_name)
