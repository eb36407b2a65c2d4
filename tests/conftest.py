"""Shared fixtures: training runs of each pipeline into temporary folders, made once per test session.

`tf_smoke_run` / `torch_smoke_run`: one epoch, to check artifacts quickly.
`tf_trained` / `torch_trained`: the default settings (reach ≥ 0.95 test accuracy), for serving and parity tests.
`torch_every_format`: one epoch exported as model.onnx, model.pt2 (where a C++ compiler exists) and model.pt, for the
tests of the formats beyond the default ONNX one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The shared checks are plain functions; rewritten like test code, their failures show the values compared.
pytest.register_assert_rewrite("tests.pipeline_checks")


# Fixtures that train a model or start a server (or a browser). A test that uses one, directly or through another
# fixture, gets the marker `training` or `server`, and `slow`: `make test-fast` (-m "not slow") leaves it out.
TRAINING_FIXTURES = frozenset({"tf_smoke_run", "torch_smoke_run", "tf_trained", "torch_trained"})
SERVER_FIXTURES = frozenset(
    {"shared_stack", "stack", "robust_stack", "fresh_server", "served", "flask_server", "torchserve_server", "browser"}
)


# A real server's command line: a module run with -m, or TorchServe's executable (a stub server is a script).
SERVER_MODULES = ("serving.tfserving", "serving.flask_app")
SERVER_EXECUTABLES = ("torchserve",)


def pytest_collection_modifyitems(config, items):
    """Mark every test that trains or starts a server through its fixtures (item.fixturenames is their closure)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        for name, fixtures in (("training", TRAINING_FIXTURES), ("server", SERVER_FIXTURES)):
            if used & fixtures:
                item.add_marker(name)
        if item.get_closest_marker("training") or item.get_closest_marker("server"):
            item.add_marker("slow")


@pytest.fixture(scope="session")
def digits():
    """The default dataset, split with seed 0."""
    from experiment.data import load_dataset

    return load_dataset(seed=0)


def _tf_train(root, digits, **overrides):
    from tf_pipeline.train import TFTrainConfig, train

    config = TFTrainConfig(output_dir=root / "models", log_dir=root / "runs", verbose=0, **overrides)
    return train(config, digits)


def _torch_train(root, digits, **overrides):
    # torch_pipeline.summaries points TensorBoard at its TensorFlow stub when TensorFlow is not loaded yet (the torch
    # CLI then starts without it), and TensorBoard keeps that choice for the process. A test session that trains
    # Keras after torch needs the real API, so it is loaded first.
    import tensorflow  # noqa: F401

    from torch_pipeline.train import TorchTrainConfig, train

    config = TorchTrainConfig(output_dir=root / "models", log_dir=root / "runs", progress=False, **overrides)
    return train(config, digits)


@pytest.fixture(scope="session")
def tf_smoke_run(tmp_path_factory, digits):
    """One Keras epoch exported into a temporary models/ and runs/."""
    return _tf_train(tmp_path_factory.mktemp("tf_smoke"), digits, epochs=1, run_name="smoke")


@pytest.fixture(scope="session")
def torch_smoke_run(tmp_path_factory, digits):
    """One torch epoch exported into a temporary models/ and runs/."""
    return _torch_train(tmp_path_factory.mktemp("torch_smoke"), digits, epochs=1, run_name="smoke")


@pytest.fixture(scope="session")
def tf_trained(tmp_path_factory, digits):
    """A Keras model trained with the default settings, exported as models/tf/digits/1."""
    return _tf_train(tmp_path_factory.mktemp("tf_trained"), digits, run_name="trained")


@pytest.fixture(scope="session")
def torch_trained(tmp_path_factory, digits):
    """A torch model trained with the default settings, exported as models/torch/digits/1 and digits.mar."""
    return _torch_train(tmp_path_factory.mktemp("torch_trained"), digits, run_name="trained")


@pytest.fixture(scope="session")
def torch_every_format(tmp_path_factory, digits):
    """One epoch of torch training exported in every format (the .pt2 compile is the slow part)."""
    return _torch_train(
        tmp_path_factory.mktemp("torch_formats"),
        digits,
        epochs=1,
        run_name="formats",
        formats=("onnx", "pt2", "torchscript"),
    )


@pytest.fixture(scope="session")
def shared_stack(tf_trained, torch_trained, tmp_path_factory):
    """The three servers on free ports over tf_trained and torch_trained, started once for the whole session.

    For the tests that only send requests (integration, robustness): they share one TorchServe JVM and one of each
    Python server instead of starting a stack each. A test that stops, restarts or changes a server starts its own
    (the playground's browser test stops TorchServe at its end).
    """
    from tests.local_stack import local_stack

    with local_stack(tf_trained, torch_trained, tmp_path_factory.mktemp("shared_stack")) as running:
        yield running


@pytest.fixture(autouse=True)
def _real_servers_only_in_slow_tests(request, monkeypatch):
    """A test that is not marked slow (so make test-fast runs it) fails when it starts a real server."""
    if request.node.get_closest_marker("slow"):
        return
    from serving.runtime.process import ServerProcess

    launch = ServerProcess.launch

    def launch_only_stubs(spec, *arguments, **keywords):
        words = [str(word) for word in spec.command]
        if set(words) & set(SERVER_MODULES) or any(Path(word).name in SERVER_EXECUTABLES for word in words):
            pytest.fail(
                f"{request.node.nodeid} starts {spec.name}: mark it @pytest.mark.server (test-fast skips those)"
            )
        return launch(spec, *arguments, **keywords)

    monkeypatch.setattr(ServerProcess, "launch", launch_only_stubs)
