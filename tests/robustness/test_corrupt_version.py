"""A newest version that cannot load, beside a good one: a server (re)started over them serves the good one and its
status says which version serves and that the newest failed."""

from __future__ import annotations

import os
import re
import signal

import psutil
import pytest

from serving.clients.base import poll_until
from tests.robustness import checks, fallback, grpc_cases, wire

pytestmark = pytest.mark.slow
START_TIMEOUT_S = 180.0
# Once a server answers at all, how long it may take to fall back to the good version before the test gives up.
SETTLE_SECONDS = 30.0
TORCHSERVE_SETTLE_SECONDS = 60.0  # its workers load after the inference port opens


def flask_version_gauges(target) -> dict[int, float]:
    """The Flask server's flask_model_version_loaded samples by worker pid (every worker's, from /metrics)."""
    answer = wire.exchange(target.host, target.port, wire.request_bytes("GET", "/metrics", target.host), 10.0)
    samples = re.findall(rb'^flask_model_version_loaded\{[^}]*pid="(\d+)"[^}]*\} (\S+)$', answer.body, re.MULTILINE)
    return {int(pid): float(value) for pid, value in samples}


def fallback_problem(running) -> str | None:
    """None when the status shows TensorFlow Serving's fallback: version 1 AVAILABLE, version 2 with its load error."""
    versions = fallback.versions_in_status(running.target)
    if versions.get("1", {}).get("state") != "AVAILABLE":
        return f"version 1 is not AVAILABLE in the status: {versions}"
    failed = versions.get("2", {})
    if failed.get("state") == "AVAILABLE" or failed.get("status", {}).get("error_code", "OK") == "OK":
        return f"the status does not say that version 2 failed to load: {versions}"
    return None


def assert_status_shows_fallback(running) -> None:
    """The status shows the fallback now."""
    problem = fallback_problem(running)
    assert problem is None, problem


def test_tf_server_started_over_a_corrupt_newest_version_serves_the_last_good_one(fresh_server):
    running = fresh_server("tfserving", lambda base: fallback.add_corrupt_tf_version(base, 1, 2), wait=False)
    problem = fallback.wait_for_predictions(running.target, running.process, START_TIMEOUT_S, SETTLE_SECONDS)
    assert problem is None, f"no fallback to version 1: {problem}"
    assert grpc_cases.grpc_valid_predict(running.grpc_address) is None
    assert_status_shows_fallback(running)


def test_flask_started_over_a_corrupt_newest_version_serves_the_last_good_one(fresh_server):
    running = fresh_server("flask", lambda base: fallback.add_corrupt_torch_version(base, 1, 2), wait=False)
    problem = fallback.wait_for_predictions(running.target, running.process, START_TIMEOUT_S, SETTLE_SECONDS)
    assert problem is None, f"no fallback to version 1: {problem}"
    assert_status_shows_fallback(running)


def test_flask_workers_restarted_after_a_corrupt_version_appeared_serve_the_last_good_one(fresh_server):
    running = fresh_server("flask")
    fallback.add_corrupt_torch_version(running.folder, 1, 2)
    # The running workers poll the folder: wait until one answers that version 2 failed and version 1 serves.
    poll_until(lambda: fallback_problem(running), SETTLE_SECONDS, lambda problem: f"version 2 never seen: {problem}")
    workers = running.process.leader.children()
    assert workers, "worker 0 started no other worker"
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    # Each worker has its own listening socket (SO_REUSEPORT): one killed takes the connections waiting in its own
    # queue with it. Once they are gone, worker 0 restarts them; wait until every restarted one serves a version.
    psutil.wait_procs(workers, timeout=10)
    killed = {worker.pid for worker in workers}

    def restarted_workers_serve() -> str | None:
        serving = set(flask_version_gauges(running.target))
        expected = {running.process.pid, *(child.pid for child in running.process.leader.children())}
        if killed & expected or len(expected) != len(workers) + 1:
            return f"workers {sorted(expected)} (killed {sorted(killed)})"
        return None if expected <= serving else f"version gauges of {sorted(serving)}, workers {sorted(expected)}"

    poll_until(restarted_workers_serve, 60.0, lambda problem: f"the workers were not restarted: {problem}")
    problem = fallback.wait_for_predictions(running.target, running.process, 60.0, SETTLE_SECONDS)
    assert problem is None, f"restarted workers do not serve version 1: {problem}"
    failures = [problem for problem in (checks.ask_valid(running.target) for _ in range(40)) if problem is not None]
    assert not failures, f"{len(failures)} of 40 requests failed after the workers restarted: {failures[:3]}"
    assert_status_shows_fallback(running)


def test_torchserve_started_with_a_corrupt_newest_archive_serves_the_last_good_one(fresh_server):
    running = fresh_server("torchserve", lambda store: fallback.add_corrupt_archive(store, "digits", 2), wait=False)
    problem = fallback.wait_for_predictions(running.target, running.process, START_TIMEOUT_S, TORCHSERVE_SETTLE_SECONDS)
    assert problem is None, f"no fallback to the archive of version 1: {problem}"
    client = running.spec.endpoint("torchserve-rest").client()
    try:
        assert str(client.describe().get("modelVersion")) == "1"
    finally:
        client.close()
