"""The stack under test: started here on free ports by default, or an already running one named by environment.

To test a running stack (for instance `docker compose up`), set any of
    TFSERVING_GRPC=127.0.0.1:8500  TFSERVING_REST=http://127.0.0.1:8501
    FLASK_URL=http://127.0.0.1:5000  TORCHSERVE_URL=http://127.0.0.1:8080
    [TORCHSERVE_MANAGEMENT_URL=http://127.0.0.1:8081]  [TORCHSERVE_KEY_FILE=path/to/key_file.json]
and MODELS_DIR (default: models) to the folder the servers load, for the in-process comparison.
Endpoints whose variable is unset are then skipped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ENDPOINT_VARIABLES = ("TFSERVING_GRPC", "TFSERVING_REST", "FLASK_URL", "TORCHSERVE_URL")


@dataclasses.dataclass
class StackUnderTest:
    """Addresses of the running servers and the models folder they serve."""

    models_dir: Path
    tf_grpc: str | None
    tf_rest: str | None
    flask: str | None
    torchserve: str | None
    torchserve_management: str | None
    torchserve_key_file: Path | None
    startup_seconds: dict[str, float]


def _external_stack() -> StackUnderTest | None:
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return None
    torchserve = os.environ.get("TORCHSERVE_URL")
    management = os.environ.get("TORCHSERVE_MANAGEMENT_URL")
    if torchserve and not management:
        management = torchserve.rsplit(":", 1)[0] + ":8081"
    key_file = os.environ.get("TORCHSERVE_KEY_FILE")
    return StackUnderTest(
        models_dir=Path(os.environ.get("MODELS_DIR", "models")),
        tf_grpc=os.environ.get("TFSERVING_GRPC"),
        tf_rest=os.environ.get("TFSERVING_REST"),
        flask=os.environ.get("FLASK_URL"),
        torchserve=torchserve,
        torchserve_management=management,
        torchserve_key_file=Path(key_file) if key_file else None,
        startup_seconds={},
    )


@pytest.fixture(scope="session")
def stack(request, tmp_path_factory):
    """Every server of DESIGN.md, ready, serving the models the two pipelines just trained."""
    external = _external_stack()
    if external is not None:
        yield external
        return
    from serving.stack import Ports, Stack

    tf_trained = request.getfixturevalue("tf_trained")
    torch_trained = request.getfixturevalue("torch_trained")
    root = tmp_path_factory.mktemp("stack")
    models_dir = root / "models"
    models_dir.mkdir()
    # One models/ folder holding both pipelines' exports, as `make serve` sees it.
    (models_dir / "tf").symlink_to(tf_trained.export_path.parent.parent, target_is_directory=True)
    (models_dir / "torch").symlink_to(torch_trained.export_path.parent.parent, target_is_directory=True)
    ports = Ports.free()
    running = Stack(ports=ports, run_dir=root / "run", models_dir=models_dir)
    seconds = running.start(train=False, report=lambda line: None)
    try:
        yield StackUnderTest(
            models_dir=models_dir,
            tf_grpc=f"127.0.0.1:{ports.tf_grpc}",
            tf_rest=f"http://127.0.0.1:{ports.tf_rest}",
            flask=f"http://127.0.0.1:{ports.flask}",
            torchserve=f"http://127.0.0.1:{ports.torchserve_inference}",
            torchserve_management=f"http://127.0.0.1:{ports.torchserve_management}",
            torchserve_key_file=running.torchserve_key_file,
            startup_seconds=seconds,
        )
    finally:
        running.stop(report=lambda line: None)


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One endpoint of the suite: which framework's model it serves and how to get a client for a model name."""

    name: str
    framework: str  # "tf" or "torch": whose export it serves
    protocol: str  # "grpc" or "rest"
    address: str
    make_client: Callable[[str], object]  # model name → a serving.client.PredictionClient


def endpoint_for(stack: StackUnderTest, name: str) -> Endpoint:
    """Build the named endpoint of the stack, or skip when an external stack did not name it."""
    from serving.client import RestClient, TFServingGrpcClient

    if name == "tf-grpc" and stack.tf_grpc:
        return Endpoint(name, "tf", "grpc", stack.tf_grpc, lambda model: TFServingGrpcClient(stack.tf_grpc, model))
    if name == "tf-rest" and stack.tf_rest:
        return Endpoint(name, "tf", "rest", stack.tf_rest, lambda model: RestClient(stack.tf_rest, model))
    if name == "flask-rest" and stack.flask:
        return Endpoint(name, "torch", "rest", stack.flask, lambda model: RestClient(stack.flask, model))
    if name == "torchserve-rest" and stack.torchserve:
        from serving.torchserve.client import TorchServeClient

        return Endpoint(
            name,
            "torch",
            "rest",
            stack.torchserve,
            lambda model: TorchServeClient(
                stack.torchserve, model, key_file=stack.torchserve_key_file, management_url=stack.torchserve_management
            ),
        )
    pytest.skip(f"{name} is not part of the stack under test (its address variable is unset)")


@pytest.fixture(scope="session")
def in_process_predictions(stack, digits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Probabilities and classes of the test split from each framework's newest export, called in-process."""
    import tensorflow as tf
    import torch

    from experiment.artifacts import TORCHSCRIPT_FILE, latest_version

    tf_base = stack.models_dir / "tf" / "digits"
    signature = tf.saved_model.load(str(tf_base / str(latest_version(tf_base)))).signatures["serving_default"]
    tf_outputs = signature(images=tf.constant(digits.test.images))
    torch_base = stack.models_dir / "torch" / "digits"
    module = torch.jit.load(str(torch_base / str(latest_version(torch_base)) / TORCHSCRIPT_FILE))
    with torch.inference_mode():
        torch_outputs = module(torch.from_numpy(digits.test.images))
    return {
        "tf": (tf_outputs["probabilities"].numpy(), tf_outputs["classes"].numpy()),
        "torch": (torch_outputs["probabilities"].numpy(), torch_outputs["classes"].numpy()),
    }
