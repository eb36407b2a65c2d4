"""Prometheus metrics of the Flask app: requests by endpoint and status, latency, the model version loaded.

Under `python -m serving.flask_app` each worker is a process with its own counters. The server sets
PROMETHEUS_MULTIPROC_DIR to a folder of its own before the app is built, prometheus_client then keeps the values in
files there, and /metrics adds up every worker's (prometheus_client's multiprocess mode). Without that variable
(flask run, tests) values live in memory.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

MULTIPROCESS_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# A batch-1 prediction takes about a millisecond; the buckets resolve that and still catch slow outliers.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class AppMetrics:
    """The app's metric objects, registered in a registry of their own so that several apps can coexist (tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "flask_http_requests_total",
            "HTTP requests answered, by endpoint, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flask_http_request_duration_seconds",
            "Time from the request reaching Flask to the response leaving it, by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        # One sample per live worker (label pid) in multiprocess mode: during a swap, workers may briefly differ.
        self.model_version = Gauge(
            "flask_model_version_loaded",
            "Version of the model this process serves (0 before one is loaded).",
            ["model"],
            registry=self.registry,
            multiprocess_mode="liveall",
        )
        self._children: dict[tuple[str, str, int], tuple] = {}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its latency."""
        children = self._children.get((endpoint, method, status))
        if children is None:  # labels() costs a lock and a key per call; each combination is looked up once
            children = self.requests.labels(endpoint, method, str(status)), self.latency.labels(endpoint)
            self._children[(endpoint, method, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        """The text to answer /metrics with (every worker's values in multiprocess mode) and its content type."""
        if os.environ.get(MULTIPROCESS_VARIABLE):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class CountingMiddleware:
    """WSGI middleware around the Flask app (app.wsgi_app): counts every answer by endpoint, method and status, and
    observes its latency from the request reaching Flask to its response leaving it.

    The endpoint is the one Flask matched, read when Flask starts the response from the request object werkzeug
    files in the environ ("werkzeug.request"); "unmatched" when no route matched. Around the app rather than in
    before/after-request hooks: no hook dispatch and no context-local lookups per request.
    """

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], metrics: AppMetrics) -> None:
        self.wsgi_app = wsgi_app
        self.metrics = metrics

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        answered: list[tuple[str, str]] = []

        def recording_start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            # Flask answers while its request is still filed in the environ (it clears it when the context ends).
            request = environ.get("werkzeug.request")
            answered.append((status, getattr(request, "endpoint", None) or "unmatched"))
            return start_response(status, headers, exc_info)

        result = self.wsgi_app(environ, recording_start_response)
        if answered:
            status, endpoint = answered[-1]
            self.metrics.observe(
                endpoint, environ.get("REQUEST_METHOD", ""), int(status[:3]), time.perf_counter() - started
            )
        return result
