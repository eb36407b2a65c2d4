"""Tensors written as JSON the way TensorFlow Serving writes them: floats with six significant digits when those read
back to the same value, else nine (float32) or seventeen (float64); whole floats with ".0"; NaN and Infinity as
tokens; DT_STRING as text, or {"b64": ...} for outputs whose name ends in "_bytes"; nested lists by shape.

Floats follow one rule, two ways that tests hold equal: value by value for small arrays and float64 (each formatting
pass one C call), and for large float32 arrays NumPy arithmetic with orjson writing the digits, with no Python step
per value.

NumPy and orjson only (the TorchServe archive carries this package); without orjson every array is written value by
value.
"""

from __future__ import annotations

import base64
import json
import math
from types import ModuleType
from typing import TypeGuard

import numpy as np
import numpy.typing as npt

from .errors import RequestError
from .signatures import DType, FloatTensor, Tensor, string_bytes

orjson: ModuleType | None
try:
    import orjson
except ImportError:  # a TorchServe image that lacks it: value by value
    orjson = None

# Significant digits of the fallback when six do not read back to the same value (max_digits10).
_FULL_DIGITS: dict[DType, int] = {np.dtype(np.float32): 9, np.dtype(np.float64): 17}
_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def is_float_tensor(array: Tensor) -> TypeGuard[FloatTensor]:
    """Whether array holds float32 or float64 values, the floats written as tokens of six to seventeen digits."""
    return array.dtype.kind == "f" and array.dtype in _FULL_DIGITS


def float_tokens(array: FloatTensor) -> list[str]:
    """float32/float64 values as the real server writes them: '%g' if it reads back exactly, else '%.9g' ('%.17g').

    Large float32 arrays are written by NumPy arithmetic and orjson (C), small ones and float64 value by value: one
    rule, two ways, which tests hold equal; below _VECTORIZED_FROM values the NumPy calls' fixed cost exceeds the
    per-value formatting they replace.
    """
    values = array.ravel()
    if orjson is not None and values.dtype == np.float32 and values.size >= _VECTORIZED_FROM:
        return _float32_tokens(values.astype(np.float32, copy=False))
    return _float_tokens_one_by_one(values)


def _float_tokens_one_by_one(values: FloatTensor) -> list[str]:
    """The rule itself, for small arrays and float64, each formatting pass in one C call ('%g,%g' % values)."""
    as_python = values.tolist()  # float64 values, exact for float32 too
    count = len(as_python)
    tokens = (",".join(["%g"] * count) % tuple(as_python)).split(",") if count else []
    read_back = np.array(list(map(float, tokens)), dtype=values.dtype)  # the double, then the nearest float32
    redo = (read_back != values).nonzero()[0]  # NaN too: '%.9g' writes it "nan" as '%g' does
    if redo.size:
        full = "%." + str(_FULL_DIGITS[values.dtype]) + "g"
        if redo.size == count:
            tokens = (",".join([full] * count) % tuple(as_python)).split(",")
        else:
            for index in redo.tolist():
                tokens[index] = full % as_python[index]
    for position, token in enumerate(tokens):
        if "." not in token and "e" not in token:
            tokens[position] = _NON_FINITE.get(token) or token + ".0"  # whole numbers keep a decimal point
    return tokens


# The vectorized float32 writer. A value rounded to d significant digits is an integer mantissa M (10^(d-1) <= M <
# 10^d) and a decimal exponent e: the token is the decimal M * 10^(e-d+1). NumPy finds M and e for every value at
# once (x * 10^(d-1-e), rounded), reads the six-digit decimal back as the per-value rule does (the double nearest to
# it, then the nearest float32), and orjson writes the digits: a double nearest to a decimal of at most nine digits is
# printed by orjson (shortest round trip) as exactly those digits. '%g' writes M * 10^(e-d+1) in fixed notation for
# -4 <= e < d, which is orjson's notation for that double too; otherwise it writes M / 10^(d-1) followed by
# "e-05" or "e+38", and so does this writer. A value whose scaled x lies within _TIE_MARGIN of a rounding tie, or
# whose six-digit decimal lies next to a float32 rounding boundary, is written by the per-value rule instead.
_VECTORIZED_FROM = 128  # measured crossover with the per-value writer (docs/performance.md)
_POWERS = 64  # 10^-64 ... 10^64 covers every float32 value rounded to 6 or 9 digits
_POWERS_OF_TEN = np.array([float(f"1e{power}") for power in range(-_POWERS, _POWERS + 1)])  # each correctly rounded
_EXPONENT_TEXT = np.array([f"e{power:+03d}" for power in range(-_POWERS, _POWERS + 1)], dtype=object)
_TIE_MARGIN = 1e-6  # scaled values carry an error below 3e-7 (two roundings of numbers under 1e9)
_BOUNDARY_MARGIN = 4e-16  # relative: a decimal this close to a float32 rounding boundary is left to the exact rule


def _rounded(
    magnitudes: npt.NDArray[np.float64], digits: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64], npt.NDArray[np.bool_]]:
    """Positive finite magnitudes rounded to `digits` significant digits: mantissas, exponents, and which are sure."""
    exponents = np.floor(np.log10(magnitudes)).astype(np.int64)
    scaled = magnitudes * _POWERS_OF_TEN[_POWERS + digits - 1 - exponents]
    low, high = 10.0 ** (digits - 1) - 0.5, 10.0**digits - 0.5
    step = (scaled >= high).astype(np.int64) - (scaled < low)  # log10 may be off by one next to a power of ten
    if step.any():
        exponents += step
        scaled = magnitudes * _POWERS_OF_TEN[_POWERS + digits - 1 - exponents]
    mantissas = np.rint(scaled)  # half to even, as printf rounds an exact tie (those are left to the exact rule)
    sure = np.abs(scaled - mantissas) < 0.5 - _TIE_MARGIN
    return mantissas, exponents, sure


def _decimal_value(
    mantissas: npt.NDArray[np.float64], exponents: npt.NDArray[np.int64], digits: int
) -> npt.NDArray[np.float64]:
    """The double nearest to each decimal M * 10^(e-d+1) where |e-d+1| <= 22 (exact operands, one rounding): every
    token in fixed notation. Elsewhere within two roundings of it, which only the six-digit read-back uses."""
    shift = exponents - (digits - 1)
    decimals: npt.NDArray[np.float64] = np.where(
        shift >= 0, mantissas * _POWERS_OF_TEN[_POWERS + shift], mantissas / _POWERS_OF_TEN[_POWERS - shift]
    )
    return decimals


def _float32_tokens(values: npt.NDArray[np.float32]) -> list[str]:
    """float_tokens for a 1-D float32 array, without a Python step per value (but for the rare unsure ones)."""
    assert orjson is not None
    with np.errstate(over="ignore", invalid="ignore"):  # decimals past float32's range read back as infinity
        return _float32_tokens_unchecked(values, orjson)


def _float32_tokens_unchecked(values: npt.NDArray[np.float32], orjson: ModuleType) -> list[str]:
    wide = values.astype(np.float64)
    finite = np.isfinite(wide)
    magnitudes = np.abs(wide)
    special = ~finite | (magnitudes == 0)  # NaN, infinities and zeros: written from constants and orjson
    any_special = bool(special.any())
    if any_special:
        magnitudes = np.where(special, 1.0, magnitudes)
    mantissas, exponents, sure = _rounded(magnitudes, 6)
    decimals = _decimal_value(mantissas, exponents, 6)
    # The per-value rule reads the six-digit token back as a double, then as float32.
    six = decimals.astype(np.float32) == magnitudes.astype(np.float32)
    sure &= (decimals * (1 - _BOUNDARY_MARGIN)).astype(np.float32) == (decimals * (1 + _BOUNDARY_MARGIN)).astype(
        np.float32
    )
    digits: int | npt.NDArray[np.int64] = 6
    if not six.all():
        mantissas9, exponents9, sure9 = _rounded(magnitudes, 9)
        decimals = np.where(six, decimals, _decimal_value(mantissas9, exponents9, 9))
        mantissas = np.where(six, mantissas, mantissas9)
        exponents = np.where(six, exponents, exponents9)
        sure &= six | sure9
        digits = np.where(six, 6, 9)
    scientific = (exponents < -4) | (exponents >= digits)
    if any_special:
        sure |= special
        scientific &= ~special
        decimals = np.where(special, np.where(finite, wide, 0.0), decimals)  # zeros keep their sign
    # Fixed notation: orjson writes the double nearest to the token as the token's digits ("0.0001", "16777215.0").
    fixed = np.copysign(np.where(scientific, 0.0, decimals), wide)
    tokens = np.array(orjson.dumps(fixed, option=orjson.OPT_SERIALIZE_NUMPY).decode()[1:-1].split(","), dtype=object)
    if scientific.any():
        where = np.flatnonzero(scientific)
        scale = _POWERS_OF_TEN[_POWERS + (digits if isinstance(digits, int) else digits[where]) - 1]
        leads = np.copysign(mantissas[where] / scale, wide[where])  # in [1, 10): orjson writes "1.5", "9.0"
        text = orjson.dumps(leads, option=orjson.OPT_SERIALIZE_NUMPY).decode()
        leads_text = text.replace(".0,", ",").replace(".0]", "]")[1:-1].split(",")  # "9e+06", not "9.0e+06"
        tokens[where] = np.array(leads_text, dtype=object) + _EXPONENT_TEXT[_POWERS + exponents[where]]
    if any_special:
        where = np.flatnonzero(~finite)
        tokens[where] = np.where(np.isnan(wide[where]), "NaN", np.where(wide[where] > 0, "Infinity", "-Infinity"))
    if not sure.all():
        where = np.flatnonzero(~sure)
        tokens[where] = np.array(_float_tokens_one_by_one(values[where]), dtype=object)
    listed: list[str] = tokens.tolist()
    return listed


# ---- every dtype -------------------------------------------------------------------------------------------------


def tensor_tokens(array: Tensor, as_bytes: bool = False) -> list[str]:
    """Every value of array (flattened) as a JSON token; DT_STRING as text, or {"b64": ...} when as_bytes."""
    if is_float_tensor(array):
        return float_tokens(array)
    if array.dtype.kind in "iu":
        return [str(value) for value in array.ravel().tolist()]
    if array.dtype.kind == "b":
        return ["true" if value else "false" for value in array.ravel().tolist()]
    if array.dtype.kind in "OSU":
        values = [string_bytes(value) for value in array.ravel().tolist()]
        if as_bytes:
            return ['{"b64":"' + base64.b64encode(value).decode() + '"}' for value in values]
        return [json.dumps(value.decode("utf-8", errors="replace"), ensure_ascii=False) for value in values]
    raise RequestError(f"Failed to write JSON value for tensor type: {_numpy_type_name(array.dtype)}")


def _numpy_type_name(dtype: DType) -> str:
    return {"float16": "half"}.get(dtype.name, dtype.name)


def nest(tokens: list[str], shape: tuple[int, ...], keep: int = 0) -> list[str]:
    """Join flat tokens into nested JSON lists of shape; one text per index of the first `keep` dimensions."""
    for depth in range(len(shape) - 1, keep - 1, -1):
        size, groups = shape[depth], math.prod(shape[:depth])
        if size == 0:
            tokens = ["[]"] * groups
        else:
            tokens = ["[" + ",".join(tokens[start : start + size]) + "]" for start in range(0, groups * size, size)]
    return tokens
