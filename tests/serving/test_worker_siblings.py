"""Worker 0's siblings (serving.frontend.workers.Siblings), started as real processes: which stops are clean."""

from __future__ import annotations

import signal
import textwrap
import time

import pytest

from serving.frontend.workers import Siblings, WorkerGroup

# Each sibling runs `python -m <module>`; these modules stand in for a worker at moments of its life. Those that set
# a SIGTERM handler write a file named "ready" once it is set.
SET_HANDLER = """
    import os, pathlib, signal, sys, threading
    stop = threading.Event()
    signal.signal(signal.SIGTERM, {handler})
    pathlib.Path(os.environ["READY_FILE"]).write_text("ready")
"""
MODULES = {
    # Still importing: no handler of its own yet, so SIGTERM ends it with the default action.
    "starting_worker": "import time\ntime.sleep(60)\n",
    # Serving: its handler turns SIGTERM into a clean exit once its (here empty) drain is done.
    "serving_worker": SET_HANDLER.format(handler="lambda number, frame: stop.set()") + "    stop.wait(60)\n",
    # Failing on its own: it stops when told, with a status of its own.
    "failing_worker": SET_HANDLER.format(handler="lambda number, frame: stop.set()")
    + "    stop.wait(60)\n    sys.exit(3)\n",
    # Stuck: it never finishes its drain.
    "stuck_worker": SET_HANDLER.format(handler="signal.SIG_IGN") + "    stop.wait(60)\n",
}


@pytest.fixture
def start_siblings(tmp_path, monkeypatch):
    for name, source in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("READY_FILE", str(tmp_path / "ready"))
    started: list[Siblings] = []

    def start(module: str, wait_for_handler: bool) -> Siblings:
        (tmp_path / "group").mkdir(exist_ok=True)
        siblings = Siblings(WorkerGroup(0, 2, tmp_path / "group"), module, [])
        siblings.start()
        started.append(siblings)
        deadline = time.monotonic() + 30
        while wait_for_handler and not (tmp_path / "ready").exists():
            assert siblings.workers[1].process.poll() is None and time.monotonic() < deadline, (
                "the worker never started"
            )
            time.sleep(0.02)
        return siblings

    yield start
    for siblings in started:
        for worker in siblings.workers.values():
            if worker.process.poll() is None:
                worker.process.kill()
                worker.process.wait()


def test_a_worker_stopped_while_it_starts_is_a_clean_stop(start_siblings):
    siblings = start_siblings("starting_worker", wait_for_handler=False)
    siblings.signal_all(signal.SIGTERM)
    assert siblings.wait(30)
    assert siblings.workers[1].process.returncode == -signal.SIGTERM


@pytest.mark.parametrize("module, clean", [("serving_worker", True), ("failing_worker", False)])
def test_a_serving_worker_stops_clean_only_with_status_zero(start_siblings, module, clean):
    siblings = start_siblings(module, wait_for_handler=True)
    siblings.signal_all(signal.SIGTERM)
    assert siblings.wait(30) is clean


def test_a_worker_that_outlives_the_grace_period_is_killed_and_not_clean(start_siblings):
    siblings = start_siblings("stuck_worker", wait_for_handler=True)
    siblings.signal_all(signal.SIGTERM)
    assert siblings.wait(0.5) is False
    assert siblings.workers[1].process.returncode == -signal.SIGKILL
