"""The suite's own tools, without a model server: the generator is seeded and complete, and the raw HTTP exchange
tells an answer from a hang, a refusal and a dropped connection."""

from __future__ import annotations

import contextlib
import random
import socket
import threading

import pytest

from experiment.processes import free_port
from tests.robustness import bodies, checks, wire
from tests.robustness.targets import RestTarget


def fake_target(server: str = "tfserving") -> RestTarget:
    return RestTarget(server, "127.0.0.1", 1, "digits", 1024)


def test_the_same_seed_gives_the_same_requests_and_every_category():
    target = fake_target()
    first = [case.request(target) for case in bodies.malformed_cases(5, 120)]
    again = [case.request(target) for case in bodies.malformed_cases(5, 120)]
    other = [case.request(target) for case in bodies.malformed_cases(6, 120)]
    assert first == again
    assert first != other
    drawn = {case.category for case in bodies.malformed_cases(5, 120)}
    assert drawn == {category(random.Random(0)).category for category in bodies.CATEGORIES}
    torchserve = fake_target("torchserve")
    assert all(case.request(torchserve) is not None for case in bodies.malformed_cases(5, 300, torchserve))


@pytest.mark.parametrize("server", ["tfserving", "torchserve"])
def test_every_case_is_a_complete_request_line_for_each_server(server):
    target = fake_target(server)
    for case in bodies.malformed_cases(17, 300):
        data = case.request(target)
        if data is None:
            # TorchServe has no status route, and answers predictions whatever the method; the TF server, as the real
            # one, hands a rank-4 batch of one image's elements to the graph.
            left_out = {
                "torchserve": "status" in case.description or case.category == "wrong method",
                "tfserving": (case.category, case.description) == ("wrong shape", "rank4"),
            }
            assert left_out[server], case
            continue
        request_line = data.split(b"\r\n", 1)[0]
        assert request_line.endswith(b" HTTP/1.1") and b"\r\n\r\n" in data, case


def test_declared_length_cases_declare_more_than_the_limit_and_ask_for_413():
    target = fake_target()
    declared = [case for case in bodies.malformed_cases(17, 300) if case.category == "declared too large"]
    assert declared and all(case.expected_status in (413, None) for case in declared)
    assert any(case.expected_status == 413 for case in declared)
    for case in declared:
        length = int(case.request(target).split(b"Content-Length: ")[1].split(b"\r\n")[0])
        assert length > target.body_limit


@contextlib.contextmanager
def one_shot_server(behaviour: str):
    """A TCP listener on a free port that answers, closes, or keeps silent after reading a request."""
    listener = socket.create_server(("127.0.0.1", free_port()))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            connection, _ = listener.accept()
            accepted.append(connection)
            connection.recv(65536)
            if behaviour == "answer":
                connection.sendall(
                    b'HTTP/1.1 400 Bad Request\r\nContent-Length: 31\r\n\r\n{"error": "One bad thing."}    '
                )
                connection.close()
            elif behaviour == "close":
                connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        listener.close()
        for connection in accepted:
            connection.close()
        thread.join(timeout=5)


def test_exchange_tells_answer_hang_and_dropped_connection_apart():
    request = wire.request_bytes("POST", "/x", "127.0.0.1", b"{}")
    with one_shot_server("answer") as port:
        answer = wire.exchange("127.0.0.1", port, request, timeout=5)
    assert (answer.outcome, answer.status) == (wire.ANSWERED, 400)
    assert wire.error_problem(answer) is None
    with one_shot_server("close") as port:
        assert wire.exchange("127.0.0.1", port, request, timeout=5).outcome == wire.NO_ANSWER
    with one_shot_server("silent") as port:
        answer = wire.exchange("127.0.0.1", port, request, timeout=0.5)
    assert answer.outcome == wire.HANG and answer.seconds < 2
    assert wire.exchange("127.0.0.1", free_port(), request, timeout=5).outcome == wire.REFUSED


@pytest.mark.parametrize(
    ("body", "torchserve", "acceptable"),
    [
        (b'{"error": "The body is not valid JSON."}', False, True),
        (b'{"code": 400, "type": "BadRequest", "message": "Bad body."}', True, True),
        (b'{"code": 400, "type": "BadRequest", "message": "Bad body."}', False, False),
        (b"<html><body>Bad Request</body></html>", False, False),
        (b"Invalid HTTP request received.", False, False),
        (b'{"error": "Traceback (most recent call last):\\n  File \\"x.py\\""}', False, False),
        (b'{"error": "RecursionError: maximum recursion depth exceeded"}', False, False),
    ],
)
def test_error_bodies_must_be_one_json_sentence(body, torchserve, acceptable):
    answer = wire.Answer(wire.ANSWERED, 400, {}, body)
    assert (wire.error_problem(answer, torchserve) is None) == acceptable


def test_only_malformed_framing_may_get_the_front_ends_own_plain_400():
    plain = wire.Answer(wire.ANSWERED, 400, {}, checks.FRONT_END_400_BODY)
    assert checks.front_end_refusal(plain, "bad chunked framing")
    assert not checks.front_end_refusal(plain, "wrong type")  # a body the server reads: its answer is JSON
    assert not checks.front_end_refusal(wire.Answer(wire.ANSWERED, 400, {}, b"Bad Request"), "bad chunked framing")


def test_only_a_chunk_declaring_more_than_it_sends_waits_for_the_body_deadline():
    stopping = {case.description for case in bodies.malformed_cases(17, 600) if case.body_stops}
    assert stopping == {"size ffffffffffffffff"}
