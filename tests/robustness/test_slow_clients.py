"""200 idle connections and 64 clients sending a byte a second must not stall a server: a valid request is still
answered within a second, on every server."""

from __future__ import annotations

import pytest

from tests.robustness import checks, load
from tests.robustness.conftest import SOAK_SECONDS

pytestmark = pytest.mark.slow


def assert_not_stalled(report: load.SlowClientReport) -> None:
    assert report.idle_opened == 200 and report.slow_opened == 64, "could not open every idle and slow connection"
    assert report.stalled == 0, (
        f"{report.stalled} of {report.probes} valid requests not answered within {checks.VALID_ANSWER_TIMEOUT_S} s "
        f"(slowest {report.slowest_seconds:.2f} s): " + "; ".join(report.failures[:5])
    )
    assert report.probes >= 3, f"only {report.probes} valid requests sent"


def test_idle_and_slow_clients_leave_valid_requests_answered(running):
    assert_not_stalled(load.slow_and_idle_clients(running.target, hold_seconds=6.0))
    assert checks.ask_valid(running.target) is None


@pytest.mark.soak
def test_soak_idle_and_slow_clients_for_a_minute(running):
    assert_not_stalled(load.slow_and_idle_clients(running.target, hold_seconds=SOAK_SECONDS))
