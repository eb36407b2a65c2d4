"""A seeded generator of malformed REST requests: each is a client mistake every server must answer with one 4xx.

Categories: deep nesting, huge integers, NaN and Infinity where no number may stand, wrong types, wrong shapes,
a declared length beyond the body limit, truncated JSON, bad UTF-8, bad chunked framing (sent raw), absurd versions
in the URL, path traversal in the model name, and wrong methods. A NaN pixel inside a well-shaped image is a valid
request (TensorFlow Serving accepts it), so NaN and Infinity appear only where the body's structure is wrong too.

The same seed always gives the same requests, so a failure names a case that can be replayed.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Callable
from typing import Protocol

from tests.robustness import wire

IMAGE_SIDE = 8  # the serving signature's [N, 8, 8]
ABSURD_VERSIONS = ("99999999999999999999", "18446744073709551616", "-1", "0x10", "1e3", "abc", "1.5", "%00", "9" * 400)
TRAVERSAL_NAMES = (
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "..%2f..%2fmodels",
    "%2e%2e",
    "..",
    "digits%00",
    "digits%2F..%2F..%2Ftf",
    "~root",
    "%252e%252e%252f",
)


class Target(Protocol):
    """What a case needs to know about the server it is sent to (tests.robustness.targets.RestTarget)."""

    host: str
    model_name: str
    body_limit: int

    def predict_path(self, model_name: str | None = None, version: str | None = None) -> str: ...

    def status_path(self, model_name: str | None = None, version: str | None = None) -> str | None: ...

    def headers(self) -> dict[str, str]: ...


@dataclasses.dataclass(frozen=True)
class Case:
    """One malformed request: its category, a short description, and how to write its bytes for a target."""

    category: str
    description: str
    build: Callable[[Target], bytes | None]  # None: the case does not apply to that server
    expected_status: int | None = None  # a specific 4xx required (413 for a body over the limit); None: any 4xx
    # The body stops before its framing says it ends, in a way only a reader of chunk sizes can tell at once: uvicorn
    # gives the app the data alone, so the TF server answers it at its body deadline (a pause of 10 s), with a 408.
    body_stops: bool = False

    def request(self, target: Target) -> bytes | None:
        """The request's bytes for this target, or None when the case does not apply to it."""
        return self.build(target)


def image(value: object = 1) -> list:
    """One 8×8 image of the same value."""
    return [[value] * IMAGE_SIDE for _ in range(IMAGE_SIDE)]


def valid_body(images: int = 1) -> bytes:
    """A well-formed row-format body of `images` blank-ish images."""
    return json.dumps({"instances": [image(float(index % 17)) for index in range(images)]}).encode()


def _post(body: bytes, chunked: bool = False, content_type: str = "application/json") -> Callable[[Target], bytes]:
    def build(target: Target) -> bytes:
        headers = {"Content-Type": content_type, **target.headers()}
        return wire.request_bytes("POST", target.predict_path(), target.host, body, headers, chunked)

    return build


def _raw_chunked(framing: bytes) -> Callable[[Target], bytes]:
    """A POST whose chunked body is sent exactly as given (broken framing no client library would write)."""

    def build(target: Target) -> bytes:
        lines = [
            f"POST {target.predict_path()} HTTP/1.1",
            f"Host: {target.host}",
            "Connection: close",
            "Content-Type: application/json",
            "Transfer-Encoding: chunked",
            *(f"{name}: {value}" for name, value in target.headers().items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + framing

    return build


def _declared_length(length: int, sent: bytes) -> Callable[[Target], bytes]:
    """A POST declaring `length` bytes (far beyond the limit) that sends only `sent`: the answer must not wait."""

    def build(target: Target) -> bytes:
        declared = length
        lines = [
            f"POST {target.predict_path()} HTTP/1.1",
            f"Host: {target.host}",
            "Connection: close",
            "Content-Type: application/json",
            f"Content-Length: {declared}",
            *(f"{name}: {value}" for name, value in target.headers().items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + sent

    return build


def _url(
    method: str, path: Callable[[Target], str | None], body: bytes | None = None
) -> Callable[[Target], bytes | None]:
    def build(target: Target) -> bytes | None:
        where = path(target)
        if where is None:
            return None
        headers = {"Content-Type": "application/json", **target.headers()} if body is not None else target.headers()
        return wire.request_bytes(method, where, target.host, body, headers)

    return build


# -- the categories: each draws one case from the random generator ------------------------------------------------


def deep_nesting(rng: random.Random) -> Case:
    depth = rng.choice([65, 100, 1_000, 10_000, 100_000])
    kind = rng.choice(["list", "object", "inputs"])
    if kind == "list":
        body = b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"
    elif kind == "object":
        body = b'{"instances": [' + b'{"a":' * depth + b"1" + b"}" * depth + b"]}"
    else:
        body = b'{"inputs": {"images": ' + b"[" * depth + b"]" * depth + b"}}"
    return Case("deep nesting", f"{kind} nested {depth} deep", _post(body))


def huge_integer(rng: random.Random) -> Case:
    digits = rng.choice([400, 1_000, 5_000, 20_000])
    number = rng.choice(["", "-"]) + "9" * digits
    where = rng.choice(["pixel", "instances", "signature", "exponent"])
    if where == "pixel":
        rows = [[1] * IMAGE_SIDE for _ in range(IMAGE_SIDE)]
        text = json.dumps({"instances": [rows]}).replace("1", number, 1)
    elif where == "instances":
        text = '{"instances": ' + number + "}"
    elif where == "signature":
        text = '{"signature_name": ' + number + ', "instances": ' + json.dumps([image()]) + "}"
    else:
        text = json.dumps({"instances": [image()]}).replace("1", f"1e{number.lstrip('-')}", 1)
    return Case("huge integer", f"{digits}-digit number as {where}", _post(text.encode()))


def nan_infinity(rng: random.Random) -> Case:
    token = rng.choice(["NaN", "Infinity", "-Infinity"])
    templates = [
        '{"instances": TOKEN}',
        '{"instances": [TOKEN, TOKEN]}',
        '{"inputs": {"images": TOKEN}}',
        '{"inputs": TOKEN}',
        "TOKEN",
        '{"instances": [[[TOKEN]]]}',
        '{"signature_name": TOKEN, "instances": []}',
    ]
    template = rng.choice(templates)
    return Case("NaN/Infinity", f"{template.replace('TOKEN', token)}", _post(template.replace("TOKEN", token).encode()))


def wrong_type(rng: random.Random) -> Case:
    choices = [
        {"instances": "images"},
        {"instances": {"images": "x"}},
        {"instances": True},
        {"instances": None},
        {"instances": [[["1"] * IMAGE_SIDE] * IMAGE_SIDE]},
        {"instances": [[[True] * IMAGE_SIDE] * IMAGE_SIDE]},
        {"instances": [[[None] * IMAGE_SIDE] * IMAGE_SIDE]},
        {"instances": [[[{"b64": "AAAA"}] * IMAGE_SIDE] * IMAGE_SIDE]},
        {"instances": [{"images": "x"}]},
        {"instances": [{"not_an_input": image()}]},
        {"inputs": {"not_an_input": [image()]}},
        {"inputs": 5},
        {"instances": [image()], "inputs": [image()]},
        {"signature_name": 5, "instances": [image()]},
        {"signature_name": "no_such_signature", "instances": [image()]},
        {"instancez": [image()]},
        {},
        [],
        [image()],
        "instances",
        17,
        None,
    ]
    document = rng.choice(choices)
    text = json.dumps(document)
    return Case("wrong type", text[:60], _post(text.encode()))


def wrong_shape(rng: random.Random) -> Case:
    kind = rng.choice(["sides", "ragged", "rank1", "rank2", "rank4", "empty rows", "mixed"])
    if kind == "sides":
        height, width = IMAGE_SIDE, IMAGE_SIDE
        while (height, width) == (IMAGE_SIDE, IMAGE_SIDE):
            height, width = rng.randint(1, 12), rng.randint(1, 12)
        document = {"instances": [[[1.0] * width for _ in range(height)] for _ in range(rng.randint(1, 3))]}
    elif kind == "ragged":
        rows = [[1.0] * IMAGE_SIDE for _ in range(IMAGE_SIDE)]
        rows[rng.randrange(IMAGE_SIDE)] = [1.0] * rng.choice([0, 1, 7, 9])
        document = {"instances": [image(), rows]}
    elif kind == "rank1":
        document = {"instances": [1.0] * rng.randint(1, 64)}
    elif kind == "rank2":
        document = {"inputs": {"images": [[1.0] * IMAGE_SIDE] * rng.randint(1, 3)}}
    elif kind == "rank4":
        document = {"instances": [[image()]]}
    elif kind == "empty rows":
        document = {"instances": [[]]}
    else:
        document = {"instances": [image(), [[1.0] * IMAGE_SIDE]]}
    build = _post(json.dumps(document).encode())
    if kind == "rank4":
        # The TF server hands tensors to the graph unchecked, as the real TensorFlow Serving does (its predict never
        # compares a request's shape with the signature's): [1, 1, 8, 8] has the elements of one image, the model's
        # Flatten reads it as one, and both servers answer 200 (docs/tfserving.md). A mistake for the other two.
        return Case("wrong shape", kind, _except_on("tfserving", build))
    return Case("wrong shape", kind, build)


def _except_on(server: str, build: Callable[[Target], bytes | None]) -> Callable[[Target], bytes | None]:
    """The same request, but not for that server (a case it answers correctly by design)."""

    def wrapped(target: Target) -> bytes | None:
        return None if getattr(target, "server", "") == server else build(target)

    return wrapped


def declared_too_large(rng: random.Random) -> Case:
    # Far beyond any limit, so the only answer is an immediate one: a length just over the limit may be waited for
    # (a server may read and drop a little more than its limit, so the client sees the 413 rather than a reset).
    length = rng.choice([10**12, 2**63 - 1, 2**64])
    sent = valid_body()[: rng.randint(0, 40)]
    expected = 413 if length < 2**63 else None  # 2^64 overflows a 64-bit length: a 400 is as right as a 413
    return Case("declared too large", f"Content-Length {length}", _declared_length(length, sent), expected)


def truncated(rng: random.Random) -> Case:
    body = valid_body(rng.randint(1, 3))
    cut = rng.randint(1, len(body) - 1)
    return Case("truncated JSON", f"cut at byte {cut} of {len(body)}", _post(body[:cut]))


def bad_utf8(rng: random.Random) -> Case:
    kind = rng.choice(
        ["invalid byte in key", "invalid byte in value", "lone surrogate", "overlong", "cut sequence", "garbage"]
    )
    if kind == "invalid byte in key":
        body = b'{"inst\xff\xfeances": ' + json.dumps([image()]).encode() + b"}"
    elif kind == "invalid byte in value":
        body = b'{"signature_name": "serving\xc3\x28default", "instances": ' + json.dumps([image()]).encode() + b"}"
    elif kind == "lone surrogate":
        body = b'{"signature_name": "\\ud800", "instances": ' + json.dumps([image()]).encode() + b"}"
    elif kind == "overlong":
        body = b'{"signature_name": "\xc0\xaf", "instances": ' + json.dumps([image()]).encode() + b"}"
    elif kind == "cut sequence":
        body = b'{"signature_name": "serving_default\xe2\x82", "instances": ' + json.dumps([image()]).encode() + b"}"
    else:
        body = bytes(rng.randrange(256) for _ in range(rng.randint(1, 512)))
    return Case("bad UTF-8", kind, _post(body))


def bad_chunking(rng: random.Random) -> Case:
    body = valid_body()
    choices = {
        "non-hex size": b"zz\r\n" + body + b"\r\n0\r\n\r\n",
        "size ffffffffffffffff": b"ffffffffffffffff\r\n" + body[:20],
        "size 1 followed by 2^64": b"1" + b"0" * 16 + b"\r\n" + body[:20],
        "negative size": b"-1\r\n" + body + b"\r\n0\r\n\r\n",
        "data longer than size": b"5\r\n" + body + b"\r\n0\r\n\r\n",
        "missing CRLF after data": f"{len(body):x}\r\n".encode() + body + b"XX0\r\n\r\n",
        "size with 0x prefix": f"0x{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n",
        "no terminating chunk then garbage": f"{len(body):x}\r\n".encode() + body + b"\r\nGARBAGE\r\n\r\n",
        "NUL in size": b"1\x00\r\n{\r\n0\r\n\r\n",
    }
    kind = rng.choice(sorted(choices))
    return Case("bad chunked framing", kind, _raw_chunked(choices[kind]), body_stops=kind == "size ffffffffffffffff")


def absurd_version(rng: random.Random) -> Case:
    version = rng.choice(ABSURD_VERSIONS)
    if rng.random() < 0.5:
        return Case(
            "absurd version",
            f"POST predict version {version[:24]}",
            _url("POST", lambda target: target.predict_path(version=version), valid_body()),
        )
    return Case(
        "absurd version",
        f"GET status version {version[:24]}",
        _url("GET", lambda target: target.status_path(version=version)),
    )


def path_traversal(rng: random.Random) -> Case:
    name = rng.choice(TRAVERSAL_NAMES + ("x" * rng.choice([300, 5_000]),))
    if rng.random() < 0.5:
        return Case(
            "path traversal",
            f"POST predict model {name[:40]}",
            _url("POST", lambda target: target.predict_path(model_name=name), valid_body()),
        )
    return Case(
        "path traversal",
        f"GET status model {name[:40]}",
        _url("GET", lambda target: target.status_path(model_name=name)),
    )


def wrong_method(rng: random.Random) -> Case:
    method = rng.choice(["PUT", "DELETE", "PATCH"])

    def path(target: Target) -> str | None:
        # TorchServe answers predictions whatever the method (its own docs send PUT): not a mistake there.
        return None if getattr(target, "server", "") == "torchserve" else target.predict_path()

    return Case("wrong method", f"{method} predict", _url(method, path, valid_body()))


CATEGORIES: tuple[Callable[[random.Random], Case], ...] = (
    deep_nesting,
    huge_integer,
    nan_infinity,
    wrong_type,
    wrong_shape,
    declared_too_large,
    truncated,
    bad_utf8,
    bad_chunking,
    absurd_version,
    path_traversal,
    wrong_method,
)


def malformed_cases(seed: int, count: int, target: Target | None = None) -> list[Case]:
    """count malformed requests drawn with this seed, the categories taking turns so every one appears; with a
    target, only cases that apply to it (TorchServe has no status route) until there are count of them."""
    rng = random.Random(seed)
    cases: list[Case] = []
    index = 0
    while len(cases) < count:
        case = CATEGORIES[index % len(CATEGORIES)](rng)
        index += 1
        if target is None or case.request(target) is not None:
            cases.append(case)
    return cases
