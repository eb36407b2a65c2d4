"""Fixtures for the robustness suite: the session's shared stack of all three servers, and fresh servers for the
tests that restart or stop one.

Counts are small here so the suite fits in `make test`; the tests marked `soak` send many more (`pytest -m soak`).
"""

from __future__ import annotations

import pytest

from tests.robustness import servers

# The fast suite's sizes, and the soak's.
SEED = 17
BODIES_PER_SERVER = 300
SOAK_BODIES_PER_SERVER = 3000
SOAK_SECONDS = 60.0


@pytest.fixture(scope="package")
def robust_stack(shared_stack):
    """The three servers (TF Serving-compatible, Flask, TorchServe) of the session's shared stack, by name."""
    return servers.stack_servers(shared_stack.stack)


@pytest.fixture(params=servers.SERVERS)
def running(request, robust_stack) -> servers.Running:
    """Each server of the shared stack in turn."""
    return robust_stack[request.param]


@pytest.fixture
def fresh_server(tf_trained, torch_trained, tmp_path):
    """Start one server of its own: fresh_server(name, prepare=None, wait=True) over a private copy of version 1.

    prepare(folder) may change the copy first (add a corrupt version). Every server started is stopped afterwards.
    """
    started: list[servers.Running] = []

    def start(name: str, prepare=None, wait: bool = True) -> servers.Running:
        folder = servers.copy_models(name, tf_trained.export_path, torch_trained.export_path, tmp_path / "models")
        if prepare is not None:
            prepare(folder)
        running = servers.launch(name, folder, tmp_path, wait)
        started.append(running)
        return running

    yield start
    for running in started:
        running.process.stop()
