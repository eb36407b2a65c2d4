"""The robustness checks' common parts (a valid request, what a good answer is) and the malformed-request check.

The checks return counts, shared by the tests (which assert on them) and the probe (which prints them): this
module, `load` (poisoned batches, slow and idle clients), `sigterm`, `grpc_cases` and `fallback`. Every check talks
to servers the runtime started (serving.runtime); none starts or stops one, except that `sigterm` signals its server.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses

from tests.robustness import bodies, wire
from tests.robustness.targets import MEBIBYTE, RestTarget

VALID_ANSWER_TIMEOUT_S = 1.0  # what "a valid request is still answered" means under slow and idle clients
# How long a case whose body stops arriving may wait for its answer: the front ends' longest pause inside a body
# (10 s), and a margin.
BODY_STOPS_TIMEOUT_S = 15.0
# uvicorn's own answer to a request it cannot parse, given before any code of the servers runs (docs/performance.md,
# "The front end's own refusals"); the real TF Serving's evhttp answers such requests in its own words too.
FRONT_END_400_BODY = b"Invalid HTTP request received."
# The categories whose requests are malformed HTTP rather than malformed bodies (a length over 64 bits among them).
FRAMING_CATEGORIES = ("bad chunked framing", "declared too large")


def valid_request(target: RestTarget, images: int = 1) -> bytes:
    """A well-formed predict request for the target."""
    headers = {"Content-Type": "application/json", **target.headers()}
    return wire.request_bytes("POST", target.predict_path(), target.host, bodies.valid_body(images), headers)


def predictions_problem(answer: wire.Answer, images: int = 1) -> str | None:
    """None when the answer is 200 with `images` predictions; else what is wrong."""
    if answer.outcome != wire.ANSWERED:
        return f"{answer.outcome} after {answer.seconds:.1f} s {answer.detail}".strip()
    if answer.status != 200:
        return f"HTTP {answer.status}: {answer.body[:160]!r}"
    try:
        document = answer.json()
    except (ValueError, UnicodeDecodeError):
        return f"200 with a body that is not JSON: {answer.body[:80]!r}"
    predictions = document.get("predictions") if isinstance(document, dict) else None
    if not isinstance(predictions, list) or len(predictions) != images:
        return f"200 without {images} predictions: {answer.body[:160]!r}"
    return None


def ask_valid(target: RestTarget, timeout: float = 10.0) -> str | None:
    """Send one valid request; None when it was answered with its prediction, else what went wrong."""
    return predictions_problem(wire.exchange(target.host, target.port, valid_request(target), timeout))


def grouped(failures: list[str], limit: int = 30) -> list[str]:
    """The distinct lines of failures, most frequent first, each with how often it happened."""
    counts: dict[str, int] = {}
    for failure in failures:
        counts[failure] = counts.get(failure, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    return [f"{count:3d}x {failure}" for failure, count in ranked[:limit]]


# -- malformed bodies ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class BodyReport:
    """How a server answered a list of malformed requests."""

    sent: int = 0
    answered_4xx: int = 0
    server_errors: int = 0  # 5xx
    hangs: int = 0
    silent_cuts: int = 0  # a 1xx/2xx/3xx answer to a request that is wrong
    no_answer: int = 0  # closed or reset without an HTTP answer
    bad_error_bodies: int = 0  # a 4xx whose body is not one JSON sentence
    wrong_status: int = 0  # a 4xx other than the one required (413 for a body over the limit)
    # TorchServe's Netty front end refuses some framing itself, before any code of this project runs: a 4xx with an
    # empty body (a declared length over max_request_size) or a closed connection (a negative chunk size). No
    # setting changes either (docs/torchserve.md); they are counted apart, as refusals, not as failures.
    netty_refusals: int = 0
    # The Python servers' front end (uvicorn) answers malformed HTTP framing with its own plain-text 400; no setting
    # changes it. Counted apart too.
    front_end_refusals: int = 0
    valid_after: str | None = None  # what went wrong with a valid request afterwards (None: it was answered)
    failures: list[str] = dataclasses.field(default_factory=list)

    def summary(self, limit: int = 30) -> list[str]:
        """The distinct failures, most frequent first, each with how often it happened."""
        return grouped(self.failures, limit)

    @property
    def failed(self) -> int:
        """Malformed requests that did not get a proper 4xx (or their front end's own refusal of bad framing)."""
        return self.sent - self.answered_4xx - self.netty_refusals - self.front_end_refusals

    def add(self, case: bodies.Case, answer: wire.Answer, torchserve_format: bool) -> None:
        """Count one answer."""
        self.sent += 1
        label = f"[{case.category}] {case.description}"
        if torchserve_format and netty_refusal(answer, case.category):
            self.netty_refusals += 1
        elif not torchserve_format and front_end_refusal(answer, case.category):
            self.front_end_refusals += 1
        elif answer.outcome == wire.HANG:
            self.hangs += 1
            self.failures.append(f"{label}: hang ({answer.seconds:.1f} s)")
        elif answer.outcome != wire.ANSWERED:
            self.no_answer += 1
            self.failures.append(f"{label}: {answer.outcome} {answer.detail}")
        elif answer.status >= 500:
            self.server_errors += 1
            self.failures.append(f"{label}: HTTP {answer.status} {answer.body[:120]!r}")
        elif answer.status < 400:
            self.silent_cuts += 1
            self.failures.append(f"{label}: HTTP {answer.status} for a malformed request {answer.body[:80]!r}")
        elif case.expected_status is not None and answer.status != case.expected_status:
            self.wrong_status += 1
            self.failures.append(f"{label}: HTTP {answer.status}, expected {case.expected_status}")
        elif (problem := wire.error_problem(answer, torchserve_format)) is not None:
            self.bad_error_bodies += 1
            self.failures.append(f"{label}: HTTP {answer.status}, {problem}")
        else:
            self.answered_4xx += 1


def netty_refusal(answer: wire.Answer, category: str) -> bool:
    """Whether a TorchServe answer is its Netty front end's own refusal: a 4xx with an empty body, or a connection
    closed on broken chunked framing (no TorchServe or handler code runs for either)."""
    if answer.outcome == wire.ANSWERED:
        return 400 <= answer.status < 500 and not answer.body.strip()
    return answer.outcome == wire.NO_ANSWER and category == "bad chunked framing"


def front_end_refusal(answer: wire.Answer, category: str) -> bool:
    """Whether an answer to malformed HTTP framing is uvicorn's own plain-text 400 (no code of the server runs)."""
    return (
        category in FRAMING_CATEGORIES
        and answer.outcome == wire.ANSWERED
        and answer.status == 400
        and answer.body == FRONT_END_400_BODY
    )


def send_malformed(
    target: RestTarget, cases: list[bodies.Case], timeout: float = wire.DEFAULT_ANSWER_TIMEOUT_S
) -> BodyReport:
    """Send each case that applies to the target on its own connection; then check a valid request is answered.

    Cases whose body stops arriving wait for the server's body deadline: they are sent side by side, on connections
    of their own, while the others go one after another, so that all of them together cost one such wait.
    """
    report = BodyReport()
    requests = [(case, data) for case in cases if (data := case.request(target)) is not None]
    stopping = [(case, data) for case, data in requests if case.body_stops]
    with concurrent.futures.ThreadPoolExecutor(max(len(stopping), 1)) as pool:
        wait = max(timeout, BODY_STOPS_TIMEOUT_S)
        waiting = [(case, pool.submit(wire.exchange, target.host, target.port, data, wait)) for case, data in stopping]
        for case, data in requests:
            if not case.body_stops:
                report.add(case, wire.exchange(target.host, target.port, data, timeout), target.torchserve)
        for case, answer in waiting:
            report.add(case, answer.result(), target.torchserve)
    report.valid_after = ask_valid(target)
    return report


def over_limit_chunked(target: RestTarget, timeout: float = 30.0) -> wire.Answer:
    """A valid request padded with spaces to 1 MiB past the body limit, sent chunked (no Content-Length).

    Only a 413 is right: a server that cuts the body at its limit sees valid JSON followed by spaces and answers 200.
    """
    headers = {"Content-Type": "application/json", **target.headers()}
    head = wire.request_bytes("POST", target.predict_path(), target.host, None, headers)
    head = head.replace(b"\r\n\r\n", b"\r\nTransfer-Encoding: chunked\r\n\r\n", 1)
    body = bodies.valid_body()
    padding = b" " * MEBIBYTE
    total_padding = target.body_limit + MEBIBYTE - len(body)

    def pieces():
        yield head + f"{len(body):x}\r\n".encode() + body + b"\r\n"
        left = total_padding
        while left > 0:
            piece = padding[: min(left, len(padding))]
            left -= len(piece)
            yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
        yield b"0\r\n\r\n"

    return wire.exchange(target.host, target.port, pieces(), timeout)
