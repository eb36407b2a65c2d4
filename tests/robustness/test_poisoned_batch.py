"""Valid requests sent together with malformed ones (10,000-deep nesting, 5,000-digit integers, a wrong shape):
every valid one succeeds, every malformed one gets its own 4xx, even where the server batches requests together."""

from __future__ import annotations

import pytest

from tests.robustness import load

pytestmark = pytest.mark.slow


def assert_neighbours_unharmed(report: load.BatchReport) -> None:
    assert report.valid_failed == 0, (
        f"{report.valid_failed} of {report.valid_sent} valid requests failed beside malformed ones: "
        + "; ".join(report.failures[:5])
    )
    assert report.poison_not_4xx == 0, f"{report.poison_not_4xx} of {report.poison_sent} malformed requests not a 4xx"


def test_malformed_requests_do_not_fail_their_batch_neighbours(running):
    assert_neighbours_unharmed(load.poisoned_batch(running.target, valid=120, poison=60))


@pytest.mark.soak
def test_soak_poisoned_batches(running):
    assert_neighbours_unharmed(load.poisoned_batch(running.target, valid=3000, poison=1500))
