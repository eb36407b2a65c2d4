"""`python -m serving.flask_app`: its flags, the one sentence it ends with when it cannot start, worker restarts."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import urllib.request

import pytest

from experiment.errors import UsageError
from serving import runtime
from serving.clients.base import poll_until
from serving.flask_app import server
from serving.runtime import flask_app

EXIT_TIMEOUT_S = 60
START_TIMEOUT_S = 180


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--workers", "0"], "--workers must be at least 1"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--max-body-bytes", "0"], "--max-body-bytes must be at least 1"),
        (["--graceful-seconds", "0"], "--graceful-seconds must be at least 1"),
        (["--app", "serving.flask_app"], "--app must be module:function"),
    ],
)
def test_a_bad_flag_is_one_sentence(argv, words):
    with pytest.raises(UsageError, match=words):
        server.parse_options(argv)


def test_the_workers_default_to_web_concurrency(monkeypatch):
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    assert server.parse_options([]).workers == 3
    assert server.parse_options(["--workers", "1"]).workers == 1
    monkeypatch.setenv("WEB_CONCURRENCY", "three")
    with pytest.raises(UsageError, match="WEB_CONCURRENCY must be a whole number"):
        server.parse_options([])
    monkeypatch.delenv("WEB_CONCURRENCY")
    assert 2 <= server.parse_options([]).workers <= 4


def test_main_says_what_was_wrong_and_exits_2(capsys):
    assert server.main(["--workers", "0"]) == 2
    assert capsys.readouterr().err == "python -m serving.flask_app: error: --workers must be at least 1, got 0.\n"


def test_an_app_that_cannot_be_found_is_one_sentence():
    with pytest.raises(UsageError, match=r"cannot find create_nothing in serving\.flask_app"):
        server.load_application("serving.flask_app:create_nothing")


def run_until_exit(spec, log_path) -> tuple[int | None, str]:
    process = runtime.launch(spec, log_path)
    try:
        status = process.wait(EXIT_TIMEOUT_S)
    finally:
        process.stop()
    return status, process.log()


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_sentence_and_a_nonzero_exit(tmp_path, workers):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        spec = flask_app.spec(port, base_path=tmp_path, flags=["--workers", workers])
        status, log = run_until_exit(spec, tmp_path / "flask.log")
    assert status == 2
    assert f"python -m serving.flask_app: error: Cannot listen on 127.0.0.1:{port}: Address already in use." in log
    assert "Traceback" not in log


@pytest.mark.slow
def test_a_bad_app_setting_stops_every_worker_with_one_sentence(tmp_path):
    spec = flask_app.spec(runtime.free_port(), base_path=tmp_path, environment={"FLASK_MODEL_VERSION": "0"})
    status, log = run_until_exit(spec, tmp_path / "flask.log")
    assert status == 2
    assert "error: FLASK_MODEL_VERSION must be a positive integer, got 0." in log
    assert "Traceback" not in log


def version_gauge_pids(port: int) -> set[int]:
    """The pids of the flask_model_version_loaded samples /metrics shows (one per live worker)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        int(re.search(r'pid="(\d+)"', line)[1]) for line in text.splitlines() if line.startswith("flask_model_version_")
    }


@pytest.mark.slow
def test_a_worker_that_dies_is_restarted_and_its_gauge_leaves_the_metrics(torch_smoke_run, tmp_path):
    shutil.copytree(torch_smoke_run.export_path, tmp_path / "digits" / "1")
    port = runtime.free_port()
    spec = flask_app.spec(port, base_path=tmp_path / "digits", flags=["--workers", "2"])
    with runtime.start(spec, tmp_path / "flask.log", START_TIMEOUT_S) as process:
        [sibling] = process.leader.children()
        assert version_gauge_pids(port) == {process.leader.pid, sibling.pid}
        os.kill(sibling.pid, signal.SIGKILL)

        def restarted() -> str | None:
            workers = {process.leader.pid, *(child.pid for child in process.leader.children())}
            if sibling.pid in workers or len(workers) != 2:
                return f"workers {sorted(workers)}"
            shown = version_gauge_pids(port)
            return None if shown == workers else f"gauges of {sorted(shown)}, workers {sorted(workers)}"

        poll_until(restarted, START_TIMEOUT_S, lambda problem: f"no clean restart: {problem}")
        assert "Worker 1 exited with status -9; starting it again." in process.log()
