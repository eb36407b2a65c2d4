"""Malformed REST requests (a seeded generator's, and a chunked body over the limit) on every server: each gets a 4xx
with one JSON sentence (or, for malformed HTTP framing, the front end's own refusal), never a 5xx, a hang, a silent
cut or a dropped connection, and the server keeps answering."""

from __future__ import annotations

import pytest

from tests.robustness import bodies, checks, wire
from tests.robustness.conftest import BODIES_PER_SERVER, SEED, SOAK_BODIES_PER_SERVER

pytestmark = pytest.mark.slow
FAILURES_SHOWN = 25


def assert_all_refused_cleanly(report: checks.BodyReport) -> None:
    """Every malformed request answered with a proper 4xx, and a valid one answered afterwards."""
    summary = (
        f"{report.failed} of {report.sent} malformed requests not answered with a 4xx JSON sentence: "
        f"{report.server_errors} 5xx, {report.hangs} hangs, {report.silent_cuts} silent cuts, "
        f"{report.no_answer} without an answer, {report.bad_error_bodies} bad error bodies, "
        f"{report.wrong_status} wrong 4xx ({report.netty_refusals} refused by TorchServe's Netty itself and "
        f"{report.front_end_refusals} by uvicorn itself, not counted)"
    )
    assert report.failed == 0, summary + "\n" + "\n".join(report.summary(FAILURES_SHOWN))
    assert report.valid_after is None, f"a valid request afterwards failed: {report.valid_after}"


def test_generated_malformed_requests_get_a_4xx_sentence(running):
    cases = bodies.malformed_cases(SEED, BODIES_PER_SERVER, running.target)
    assert len(cases) >= 300 and len({case.category for case in cases}) >= len(bodies.CATEGORIES) - 1
    assert_all_refused_cleanly(checks.send_malformed(running.target, cases))


def test_chunked_body_over_the_limit_is_413_never_cut(running):
    answer = checks.over_limit_chunked(running.target)
    assert answer.outcome == wire.ANSWERED, f"{answer.outcome} after {answer.seconds:.1f} s {answer.detail}"
    assert answer.status == 413, f"HTTP {answer.status} for a body over the limit: {answer.body[:160]!r}"
    if not (running.target.torchserve and checks.netty_refusal(answer, "over the limit")):  # Netty's empty 413
        problem = wire.error_problem(answer, running.target.torchserve)
        assert problem is None, problem
    assert checks.ask_valid(running.target) is None


@pytest.mark.soak
def test_soak_many_generated_malformed_requests(running):
    cases = bodies.malformed_cases(SEED + 1, SOAK_BODIES_PER_SERVER, running.target)
    assert_all_refused_cleanly(checks.send_malformed(running.target, cases))
