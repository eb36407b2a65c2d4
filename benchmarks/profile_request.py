"""Where the microseconds of one REST predict go, inside each Python REST server's application (no network).

    python -m benchmarks.profile_request flask --model-base-path models/torch/digits
    python -m benchmarks.profile_request tfserving --model-base-path models/tf/digits

Builds the server's WSGI application in this process, sends it the same one-digit predict body (the body the load
benchmarks send) a few thousand times under cProfile, and prints the mean microseconds per request and the
functions with the most own time per request. The front end (HTTP parsing, sockets) is not in these figures:
`make compare` measures it with wrk against nginx's floor.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serving.frontend.asgi import call_wsgi

PATH = "/v1/models/digits:predict"


def one_digit_body() -> bytes:
    """A one-instance row-format body of 8x8 pixel values in [0, 1], as the load benchmarks send it."""
    rng = np.random.default_rng(0)
    pixels = np.round(rng.random((1, 8, 8)), 4).tolist()
    return json.dumps({"instances": pixels}).encode()


def _environ(body: bytes) -> dict[str, Any]:
    return {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": PATH,
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "0",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }


def call_once(app: Callable, body: bytes) -> tuple[str, bytes]:
    """One request through the WSGI app, as the front end calls it: its status line and body."""
    status, _, content = call_wsgi(app, _environ(body))
    return status, content


def flask_app(base_path: Path) -> tuple[Callable, Callable[[], None]]:
    """The Flask app serving base_path, polling off."""
    from serving.flask_app import create_app

    app = create_app({"MODEL_BASE_PATH": str(base_path), "MODEL_POLL_SECONDS": 0})
    return app, app.extensions["model_manager"].stop


def tfserving_app(base_path: Path) -> tuple[Callable, Callable[[], None]]:
    """The TF server's REST application (no batching) serving base_path as "digits"."""
    from serving.tfserving import config
    from serving.tfserving.manager import ModelManager
    from serving.tfserving.predictor import Predictor
    from serving.tfserving.rest import RestApp

    options = config.parse_options([f"--model_base_path={base_path}", "--model_name=digits", "--port=1"])
    manager = ModelManager(options.sources, 0)
    manager.poll_once()
    app = RestApp(Predictor(manager, None), options.max_request_bytes, options.rest_timeout_s, options.rest_threads)
    return app, manager.stop


def model_call(server: str, app: Any) -> Callable[[], Any]:
    """The model alone on one digit, as each server calls it (for the in-process floor)."""
    images = np.asarray(json.loads(one_digit_body())["instances"], np.float32)
    if server == "flask":
        model = app.extensions["model_manager"].current
        return lambda: model.predict(images)
    predictor = app.predictor
    servable = predictor.servable("digits")
    signature = servable.signatures["serving_default"]
    name = next(iter(signature.input_dtypes()))
    return lambda: predictor.predict(servable, signature, {name: images})


def profile(app: Callable, body: bytes, requests: int, top: int) -> tuple[float, str]:
    """Mean µs per request (unprofiled) and cProfile's table (own time per request) over `requests` calls."""
    for _ in range(200):
        status, content = call_once(app, body)
    if not status.startswith("200"):
        raise SystemExit(f"the app answered {status}: {content[:200]!r}")
    started = time.perf_counter()
    for _ in range(requests):
        call_once(app, body)
    mean_us = (time.perf_counter() - started) / requests * 1e6
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(requests):
        call_once(app, body)
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    lines = ["| own µs/request | calls/request | function |", "| ---: | ---: | --- |"]
    for (filename, line, function), (_, calls, own, _cumulative, _) in rows:
        where = filename.split("site-packages/")[-1].split("/work/")[-1]
        lines.append(f"| {own / requests * 1e6:.1f} | {calls / requests:g} | {function} ({where}:{line}) |")
    return mean_us, "\n".join(lines)


def median_us(call: Callable[[], Any], repeats: int) -> float:
    """Median µs of call over `repeats` runs."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e6)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", choices=["flask", "tfserving"])
    parser.add_argument("--model-base-path", type=Path, required=True, help="folder of integer version folders")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--top", type=int, default=15, help="rows of the table")
    arguments = parser.parse_args(argv)
    if not arguments.model_base_path.is_dir():
        print(
            f"No model folder at {arguments.model_base_path}; train first (make train-torch / make train-tf).",
            file=sys.stderr,
        )
        return 2
    build = flask_app if arguments.server == "flask" else tfserving_app
    app, stop = build(arguments.model_base_path.resolve())
    try:
        body = one_digit_body()
        mean_us, table = profile(app, body, arguments.requests, arguments.top)
        model_us = median_us(model_call(arguments.server, app), 2000)
    finally:
        stop()
    print(
        f"{arguments.server}: {mean_us:.0f} µs per request in the application (mean of {arguments.requests}, "
        f"unprofiled); the model call alone: {model_us:.1f} µs (median)\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
