"""The vectorized float32 writer writes every value exactly as the per-value rule does ('%g', else '%.9g', '.0', NaN).

The per-value rule is the reference (its own cases, the real server's, are in test_json_tensor.py); these tests
hold the NumPy/orjson writer to it over random bit patterns (every exponent, subnormals, NaN and infinities), values
that sit on decimal ties and powers of ten, and arrays of softmax outputs like the models' answers.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.protocol import json_writing
from serving.protocol.json_predict import format_predict
from serving.protocol.json_writing import _float32_tokens, _float_tokens_one_by_one, float_tokens

pytestmark = pytest.mark.skipif(json_writing.orjson is None, reason="the vectorized writer needs orjson")

SPECIAL = [
    0.0,
    -0.0,
    float("nan"),
    -float("nan"),
    float("inf"),
    -float("inf"),
    1e-45,  # the smallest subnormal
    -1e-45,
    1.1754942e-38,  # the largest subnormal
    1.17549435e-38,  # the smallest normal
    3.4028235e38,  # the largest float32
    -3.4028235e38,
    1.0,
    10.0,
    1e5,
    999999.5,  # six digits round up to 1e+06
    999999.4,
    9999999.0,
    16777215.0,
    16777220.0,
    1e6,
    9e6,
    1e9,
    123456789.0,
    1e15,
    1e16,
    1e17,
    0.0001,
    0.00009999999,
    1e-5,
    3e-5,
    555557.5,
    2.05,
    0.1,
    1 / 3,
]


def assert_same_tokens(values: np.ndarray) -> None:
    expected = _float_tokens_one_by_one(values)
    written = _float32_tokens(values)
    mismatches = [
        (repr(value), want, got) for value, want, got in zip(values, expected, written, strict=True) if want != got
    ]
    assert not mismatches, mismatches[:10]


def test_special_values():
    assert_same_tokens(np.array(SPECIAL, np.float32))


@pytest.mark.parametrize("seed", range(4))
def test_random_bit_patterns_cover_every_exponent(seed):
    bits = np.random.default_rng(seed).integers(0, 2**32, 50_000, dtype=np.uint64).astype(np.uint32)
    assert_same_tokens(bits.view(np.float32))


def test_subnormals_and_numbers_next_to_powers_of_ten():
    rng = np.random.default_rng(7)
    subnormals = rng.integers(1, 2**23, 20_000, dtype=np.uint32).view(np.float32)
    powers = np.array([10.0**power for power in range(-45, 39)], np.float32)
    neighbours = np.concatenate([np.nextafter(powers, -np.inf), powers, np.nextafter(powers, np.inf)])
    assert_same_tokens(np.concatenate([subnormals, neighbours[np.isfinite(neighbours)]]))


def test_decimal_ties_and_short_decimals():
    """Values whose exact expansion ends on a tie at six or nine digits, and decimals of few digits at every scale."""
    integers = np.arange(1_234_550, 1_234_600, dtype=np.float32)  # 1234565 is a six-digit tie
    halves = np.arange(100_000, 100_100, dtype=np.float32) + np.float32(0.5)
    rng = np.random.default_rng(3)
    short = rng.integers(1, 10**6, 20_000) * 10.0 ** rng.integers(-44, 33, 20_000)
    assert_same_tokens(np.concatenate([integers, halves, short.astype(np.float32), -short.astype(np.float32)]))


def softmax_outputs(rows: int) -> np.ndarray:
    logits = np.random.default_rng(11).normal(0, 8, (rows, 10))
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def test_softmax_outputs():
    assert_same_tokens(softmax_outputs(2048).ravel())


def test_only_rare_values_are_left_to_the_per_value_rule(monkeypatch):
    left: list[int] = []

    def counted(values: np.ndarray) -> list[str]:
        left.append(values.size)
        return _float_tokens_one_by_one(values)

    monkeypatch.setattr(json_writing, "_float_tokens_one_by_one", counted)
    probabilities = softmax_outputs(1024)
    float_tokens(probabilities)
    assert sum(left) <= probabilities.size // 1000


def test_large_arrays_are_written_as_before():
    probabilities = np.random.default_rng(5).random((300, 10)).astype(np.float32)
    tokens = float_tokens(probabilities)
    assert tokens == _float_tokens_one_by_one(probabilities.ravel())
    rows = ",".join("[" + ",".join(tokens[row * 10 : row * 10 + 10]) + "]" for row in range(300))
    assert format_predict({"probabilities": probabilities}, True) == '{"predictions":[' + rows + "]}"
