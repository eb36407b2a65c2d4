"""gRPC Predicts on the TF server whose declared shape and values disagree: INVALID_ARGUMENT at once, before any
allocation, and the server still answers a valid call."""

from __future__ import annotations

import pytest

from tests.robustness import grpc_cases

pytestmark = pytest.mark.slow
QUICK_SECONDS = 1.0  # the call must be refused before a tensor of the declared size could be built
MEMORY_GROWTH_LIMIT = 256 * 1024 * 1024  # [2^20, 8, 8] float32 alone is 256 MiB


@pytest.fixture(scope="module")
def shape_results(robust_stack):
    """Every shape case sent once to the shared TF server, by name."""
    tf_server = robust_stack["tfserving"]
    return {result.name: result for result in grpc_cases.grpc_shape_cases(tf_server.grpc_address, tf_server.process)}


@pytest.mark.parametrize("case", grpc_cases.GRPC_SHAPE_CASES)
def test_shape_and_values_that_disagree_are_invalid_argument(shape_results, case):
    result = shape_results[case]
    assert result.code == "INVALID_ARGUMENT", f"{result.code} after {result.seconds:.2f} s: {result.details[:200]}"
    assert result.seconds < QUICK_SECONDS, f"refused only after {result.seconds:.2f} s"
    assert result.memory_growth_bytes < MEMORY_GROWTH_LIMIT, (
        f"server memory grew {result.memory_growth_bytes >> 20} MiB"
    )


def test_valid_predict_still_answered_after_the_shape_cases(shape_results, robust_stack):
    assert grpc_cases.grpc_valid_predict(robust_stack["tfserving"].grpc_address) is None
