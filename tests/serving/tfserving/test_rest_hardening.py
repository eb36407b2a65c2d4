"""What a hostile or broken REST client gets from the TF server: a 4xx, never a 500 or a hang. The server's answers
are one JSON sentence; what uvicorn refuses before any code of ours runs (malformed HTTP, the connection limit) gets
uvicorn's own plain answer, as the real server's evhttp gives its own.

Bodies and URLs go to the reference server (started once for the session); the body deadlines, keep-alive and
connection limit are checked on the bare front end with short settings, so that no test waits long.
"""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from serving.frontend.http import FrontEndSettings, RestFrontEnd, listening_socket
from serving.protocol.errors import QUOTED_LIMIT
from serving.protocol.limits import MAX_JSON_DEPTH
from tests.serving.tfserving.support import require_ours

PREDICT = "/v1/models/default:predict"
CLASSIFY = "/v1/models/default:classify"


def exchange(port: int, data: bytes, timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes on a new connection; the status, headers and body of the answer (read until it is whole)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        connection.sendall(data)
        return read_answer(connection)


def read_answer(connection: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP answer from a connection (Content-Length framed, as every answer of this server is)."""
    received = b""
    while b"\r\n\r\n" not in received:
        piece = connection.recv(65536)
        if not piece:
            raise ConnectionError(f"closed without an answer after {received!r}")
        received += piece
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers["content-length"]):
        piece = connection.recv(65536)
        if not piece:
            break
        body += piece
    return int(lines[0].split()[1]), headers, body


def post(path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def get(path: bytes) -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n"


def one_sentence(answer: tuple[int, dict[str, str], bytes]) -> str:
    """The error of a JSON answer {"error": "..."}, checked to be all the body holds."""
    _, headers, body = answer
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert list(document) == ["error"] and "\n" not in document["error"] and "Traceback" not in document["error"]
    return document["error"]


@pytest.fixture(scope="module")
def rest_port(served) -> int:
    return int(served.rest_url.rsplit(":", 1)[1])


# ---- bodies --------------------------------------------------------------------------------------------------------

DEEP = MAX_JSON_DEPTH + 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"instances": ' + b"[" * DEEP + b"1" + b"]" * DEEP + b"}",
        b'{"instances": [1.0], "unused": ' + b'{"a":' * 900 + b"1" + b"}" * 900 + b"}",
    ],
    ids=["lists 10000 deep", f"lists {DEEP} deep", "objects 900 deep in an unused key"],
)
def test_deep_nesting_is_400(served, rest_port, body):
    require_ours(served, "the real server has no depth limit (it recurses until its stack ends)")
    answer = exchange(rest_port, post(PREDICT, body))
    assert answer[0] == 400 and f"at most {MAX_JSON_DEPTH}" in one_sentence(answer)


@pytest.mark.slow
def test_nesting_within_the_limit_reaches_the_tensor_checks(served, rest_port):
    depth = MAX_JSON_DEPTH - 2  # the body and "instances" take two levels
    answer = exchange(rest_port, post(PREDICT, b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"))
    assert answer[0] in (200, 400) and "at most" not in json.loads(answer[2]).get("error", "")


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, body",
    [
        (PREDICT, b'{"instances": [' + b"9" * 5000 + b"]}"),  # past the 4300 digits Python's int() reads
        (PREDICT, b'{"instances": [1e999]}'),
        (PREDICT, b'{"instances": [' + b"9" * 400 + b".5]}"),
        (CLASSIFY, b'{"examples": [{"x": ' + b"9" * 5000 + b"}]}"),
    ],
    ids=["integer of 5000 digits", "1e999", "400-digit decimal", "classify with a 5000-digit integer"],
)
def test_numbers_beyond_a_double_are_400_as_the_real_server_says(served, rest_port, path, body):
    answer = exchange(rest_port, post(path, body))
    assert answer[0] == 400 and "Number too big to be stored in double" in one_sentence(answer)


@pytest.mark.slow
def test_integers_beyond_64_bits_read_as_doubles_as_rapidjson_does(served, rest_port):
    status, _, body = exchange(rest_port, post(PREDICT, b'{"instances": [' + b"1" + b"0" * 29 + b"]}"))
    assert status == 200 and json.loads(body) == {"predictions": [5e28]}  # 0.5 x + 2, x = 1e29 as a float


@pytest.mark.slow
def test_nan_and_infinity_are_read_as_the_real_server_reads_them(served, rest_port):
    status, _, body = exchange(rest_port, post(PREDICT, b'{"instances": [NaN, -Infinity]}'))
    assert status == 200 and body == b'{"predictions":[NaN,-Infinity]}'


# ---- URLs ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "data, status",
    [
        (get(b"/v1/models/" + b"x" * 5000), 404),
        (get(b"/v1/models/" + b"x" * 5000 + b"/metadata"), 404),
        (post("/v1/models/" + "x" * 5000 + ":predict", b'{"instances": [1.0]}'), 404),
        (post("/v1/models/default/labels/" + "x" * 5000 + ":predict", b'{"instances": [1.0]}'), 400),
        (post(PREDICT, json.dumps({"signature_name": "x" * 5000, "instances": [1.0]}).encode()), 400),
    ],
    ids=["status", "metadata", "predict", "label", "signature name"],
)
def test_a_5000_character_name_is_cut_in_the_error_sentence(served, rest_port, data, status):
    require_ours(served, "the real server echoes names whole")
    answer = exchange(rest_port, data)
    message = one_sentence(answer)
    assert answer[0] == status and len(answer[2]) < 500
    assert "x" * (QUOTED_LIMIT - 3) + "..." in message and "x" * QUOTED_LIMIT not in message


@pytest.mark.slow
@pytest.mark.parametrize("escape", ["\\ud800", "\\udfff", "\\ud800\\u0041"])
def test_a_lone_surrogate_is_a_400_as_rapidjson_refuses_it(served, rest_port, escape):
    body = b'{"signature_name": "' + escape.encode() + b'", "instances": [1.0]}'
    answer = exchange(rest_port, post(PREDICT, body))
    assert answer[0] == 400
    assert one_sentence(answer) == "JSON Parse error: The surrogate pair in string is invalid. at offset: 20"


@pytest.mark.slow
@pytest.mark.parametrize(
    "path, status, words",
    [
        (b"/v1/models/default/versions/99999999999999999999", 400, "Failed to convert version"),
        (b"/v1/models/default/versions/" + b"9" * 5000, 400, "Failed to convert version"),
        (b"/v1/models/default/versions/" + b"9" * 5000 + b"/metadata", 400, "Failed to convert version"),
        (b"/v1/models/default/versions/%EF%BC%91%EF%BC%92%EF%BC%93", 400, "Malformed request"),  # full-width 123
        (b"/v1/models/default/versions/9223372036854775807", 404, "Could not find version"),
    ],
    ids=["20 digits", "5000 digits", "5000 digits metadata", "full-width digits", "int64 max"],
)
def test_absurd_versions_are_4xx(served, rest_port, path, status, words):
    answer = exchange(rest_port, get(path))
    assert answer[0] == status and words in one_sentence(answer)
    assert len(json.loads(answer[2])["error"]) < 400  # a 5000-digit version is not echoed whole


# ---- HTTP framing --------------------------------------------------------------------------------------------------

CHUNKED = f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()


# uvicorn's own answer to what it cannot parse, as the real server's evhttp answers its own (docs/performance.md).
FRONT_END_400 = (400, "close", "text/plain; charset=utf-8", b"Invalid HTTP request received.")


@pytest.mark.slow
@pytest.mark.parametrize(
    "data",
    [
        CHUNKED + b"zz\r\n{}\r\n0\r\n\r\n",
        CHUNKED + b"1ffffffffffffffff\r\n{}\r\n0\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models/default HTTP/1.1\r\nHo st: x\r\n\r\n",
        f"POST {PREDICT} HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".encode(),
        b"POST /v1/models/default:predict HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n{}",
    ],
    ids=[
        "bad chunk size",
        "chunk size over 64 bits",
        "bad request line",
        "bad header name",
        "length and chunked",
        "length over 64 bits",
    ],
)
def test_what_is_not_http_is_the_front_ends_own_plain_400(served, rest_port, data):
    require_ours(served, "uvicorn's own answer")
    status, headers, body = exchange(rest_port, data)
    assert (status, headers["connection"], headers["content-type"], body) == FRONT_END_400


@pytest.mark.slow
def test_headers_have_no_size_limit_of_the_front_ends_own(served, rest_port):
    """uvicorn over httptools limits neither header size nor header time (docs/performance.md: a proxy does)."""
    require_ours(served, "uvicorn's behaviour")
    status, _, body = exchange(rest_port, b"GET /v1/models/default HTTP/1.1\r\nX-Pad: " + b"a" * 100_000 + b"\r\n\r\n")
    assert status == 200 and json.loads(body)["model_version_status"]


@pytest.mark.slow
def test_a_valid_request_is_answered_within_a_second_beside_200_idle_and_64_slow_clients(served, rest_port):
    require_ours(served, "a front end of this project")
    idle = [socket.create_connection(("127.0.0.1", rest_port)) for _ in range(200)]
    slow = [socket.create_connection(("127.0.0.1", rest_port)) for _ in range(64)]
    try:
        head = post(PREDICT, b" " * 1000)[:-1000]
        for index, connection in enumerate(slow):  # half stuck in their headers, half in their bodies
            connection.sendall(head[:20] if index % 2 else head + b"{")
        stop = threading.Event()

        def trickle() -> None:  # one more byte a second from each slow client
            while not stop.wait(1.0):
                for index, connection in enumerate(slow):
                    try:
                        connection.sendall(b" " if index % 2 == 0 else head[20:21])
                    except OSError:
                        pass

        sender = threading.Thread(target=trickle, daemon=True)
        sender.start()
        try:
            for _ in range(3):
                started = time.perf_counter()
                status, _, body = exchange(rest_port, post(PREDICT, b'{"instances": [1.0, 2.0]}'))
                assert status == 200 and json.loads(body) == {"predictions": [2.5, 3.0]}
                assert time.perf_counter() - started < 1.0
                time.sleep(0.5)
        finally:
            stop.set()
            sender.join(5)
    finally:
        for connection in idle + slow:
            connection.close()


# ---- the front end's deadlines and limits, on short settings ----------------------------------------------------


class EchoApp:
    """A WSGI app answering 200 with the body it was given."""

    def __call__(self, environ, start_response):
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"length": len(body)}).encode()]

    def drain(self, timeout_s: float) -> bool:
        return True


READ_TIMEOUT_S = 0.5
BODY_TIMEOUT_S = 1.5
KEEP_ALIVE_S = 1
MAX_CONNECTIONS = 8


@pytest.fixture
def front_end():
    settings = FrontEndSettings(
        1000,
        threads=2,
        keep_alive_seconds=KEEP_ALIVE_S,
        read_timeout_seconds=READ_TIMEOUT_S,
        body_timeout_seconds=BODY_TIMEOUT_S,
        max_connections=MAX_CONNECTIONS,
    )
    server = RestFrontEnd(EchoApp(), listening_socket("127.0.0.1", 0, share_port=False), settings)
    server.start()
    yield server
    server.stop(5)


def timed_exchange(port: int, data: bytes) -> tuple[float, tuple[int, dict[str, str], bytes]]:
    started = time.monotonic()
    answer = exchange(port, data, timeout=10)
    return time.monotonic() - started, answer


CHUNKED_HEAD = b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "data",
    [
        CHUNKED_HEAD + b"100\r\n{}",
        CHUNKED_HEAD + b"ffffffffffffffff\r\n{}",
        CHUNKED_HEAD + b"3e9\r\n{}",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}",
    ],
    ids=[
        "chunk shorter than its size",
        "chunk declaring 2^64-1 bytes",
        "chunk declaring one byte over the limit",
        "body shorter than its Content-Length",
    ],
)
def test_a_body_that_stops_arriving_is_408_after_the_read_timeout(front_end, data):
    """uvicorn hands the app de-chunked data only: a chunk declaring more than the limit is refused once its data
    passes the limit (413) or stops arriving (408)."""
    seconds, answer = timed_exchange(front_end.port, data)
    assert answer[0] == 408 and answer[1]["connection"] == "close" and "did not arrive in time" in one_sentence(answer)
    assert READ_TIMEOUT_S * 0.9 <= seconds < READ_TIMEOUT_S + 2


def test_chunks_within_the_limit_arrive_whole_however_they_are_split(front_end):
    body = b"a" * 300 + b"\r\n" * 100 + b"b" * 400  # 900 bytes, CRLFs inside the data
    framing = b"12c\r\n" + body[:300] + b"\r\n" + b"258;x=y\r\n" + body[300:] + b"\r\n0\r\n\r\n"
    with socket.create_connection(("127.0.0.1", front_end.port), timeout=10) as connection:
        connection.sendall(CHUNKED_HEAD)
        for start in range(0, len(framing), 97):
            time.sleep(0.005)
            connection.sendall(framing[start : start + 97])
        status, _, answer = read_answer(connection)
        assert status == 200 and json.loads(answer) == {"length": 900}
        connection.sendall(CHUNKED_HEAD + b"3e8\r\n" + b" " * 1000 + b"\r\n0\r\n\r\n")  # exactly the limit
        status, _, answer = read_answer(connection)
        assert status == 200 and json.loads(answer) == {"length": 1000}


def test_a_client_expecting_100_continue_gets_413_before_it_sends_a_body_too_large(front_end):
    head = b"POST /x HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", front_end.port), timeout=10) as connection:
        connection.sendall(head)
        answer = read_answer(connection)
    assert answer[0] == 413 and answer[1]["connection"] == "close"  # it must not send its body now
    assert "larger than this server's limit of 1000 bytes" in one_sentence(answer)


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_far_over_the_limit_still_lets_the_client_read_its_413(front_end, chunked):
    megabyte = b" " * (1 << 20)
    size = 40  # MiB: past the limit and the 16 MiB drained before answering
    if chunked:
        head, pieces = b"Transfer-Encoding: chunked", [b"100000\r\n" + megabyte + b"\r\n"] * size + [b"0\r\n\r\n"]
    else:
        head, pieces = f"Content-Length: {size << 20}".encode(), [megabyte] * size
    with socket.create_connection(("127.0.0.1", front_end.port), timeout=10) as connection:
        connection.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n")
        for piece in pieces:  # as http.client sends: the whole body first, then it reads the answer
            connection.sendall(piece)
        answer = read_answer(connection)
        assert answer[0] == 413 and "larger than this server's limit" in one_sentence(answer)
        connection.sendall(post("/x", b"{}"))  # uvicorn read the rest of the refused body and dropped it
        assert read_answer(connection)[0] == 200


def test_a_body_trickling_in_is_408_after_the_body_timeout(front_end):
    with socket.create_connection(("127.0.0.1", front_end.port), timeout=10) as connection:
        started = time.monotonic()
        connection.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n")
        connection.settimeout(0.2)
        answer = None
        while answer is None and time.monotonic() - started < 10:
            connection.sendall(b" ")  # a byte every 0.2 s: never a pause long enough for the read timeout
            try:
                answer = read_answer(connection)
            except TimeoutError:
                continue
    assert answer is not None and answer[0] == 408 and "did not arrive in time" in one_sentence(answer)
    assert BODY_TIMEOUT_S * 0.9 <= time.monotonic() - started < BODY_TIMEOUT_S + 2


def test_the_keep_alive_closes_an_idle_connection_after_an_answer_but_none_before_the_first_request(front_end):
    """uvicorn's keep-alive timer starts with an answer: a connection idle before its first request, or stuck in its
    headers, has no timer (docs/performance.md: a proxy in front closes those)."""
    idle = socket.create_connection(("127.0.0.1", front_end.port), timeout=10)
    stuck = socket.create_connection(("127.0.0.1", front_end.port), timeout=10)
    try:
        stuck.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\n")
        with socket.create_connection(("127.0.0.1", front_end.port), timeout=10) as kept:
            kept.sendall(post("/x", b"{}"))
            assert read_answer(kept)[0] == 200
            started = time.monotonic()
            assert kept.recv(100) == b""  # closed by the server, with nothing said
            assert KEEP_ALIVE_S * 0.9 <= time.monotonic() - started < KEEP_ALIVE_S + 2
        for connection in (idle, stuck):  # idle longer than the one just closed, and still open
            connection.setblocking(False)
            with pytest.raises(BlockingIOError):
                connection.recv(100)
    finally:
        idle.close()
        stuck.close()


def test_at_the_connection_limit_a_request_gets_uvicorns_plain_503_until_connections_close(front_end):
    held = [socket.create_connection(("127.0.0.1", front_end.port), timeout=10) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        status, headers, body = exchange(front_end.port, post("/x", b"{}"))
        assert (status, headers["connection"], body) == (503, "close", b"Service Unavailable")
    finally:
        for connection in held:
            connection.close()
    deadline = time.monotonic() + 10  # the server notices each close on its own time
    while (status := exchange(front_end.port, post("/x", b"{}"))[0]) != 200 and time.monotonic() < deadline:
        pass
    assert status == 200
