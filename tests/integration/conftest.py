"""The stack under test: started here on free ports by default, or an already running one named by environment.

To test a running stack (for instance `docker compose up`), set any of
    TFSERVING_GRPC=127.0.0.1:8500  TFSERVING_REST=http://127.0.0.1:8501
    FLASK_URL=http://127.0.0.1:5000  TORCHSERVE_URL=http://127.0.0.1:8080  TORCHSERVE_GRPC=127.0.0.1:7070
    [TORCHSERVE_MANAGEMENT_URL=http://127.0.0.1:8081]  [TORCHSERVE_GRPC_MANAGEMENT=127.0.0.1:7071]
    [TORCHSERVE_KEY_FILE=path/to/key_file.json]
and MODELS_DIR (default: models) to the folder the servers load, for the in-process comparison.
Endpoints whose variable is unset are then skipped.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from serving.runtime import Endpoint
from serving.runtime.external import endpoints_from_environment


@dataclasses.dataclass
class StackUnderTest:
    """The endpoints of the running servers (each with its client) and the models folder they serve."""

    models_dir: Path
    endpoints: list[Endpoint]
    startup_seconds: dict[str, float]


@pytest.fixture(scope="session")
def stack(request):
    """Every server of docs/architecture.md, ready, serving the models the two pipelines just trained."""
    external = endpoints_from_environment(os.environ)
    if external is not None:
        yield StackUnderTest(Path(os.environ.get("MODELS_DIR", "models")), external, {})
        return
    running = request.getfixturevalue("shared_stack")  # started here only when no external stack is named
    yield StackUnderTest(running.models_dir, running.stack.endpoints(), running.startup_seconds)


def endpoint_for(stack: StackUnderTest, name: str) -> Endpoint:
    """The named endpoint of the stack, or skip when an external stack did not name it."""
    for endpoint in stack.endpoints:
        if endpoint.name == name:
            return endpoint
    pytest.skip(f"{name} is not part of the stack under test (its address variable is unset)")


@pytest.fixture(scope="session")
def in_process_predictions(stack, digits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Probabilities and classes of the test split from each framework's newest export, called in-process."""
    import tensorflow as tf

    from experiment.artifacts import latest_version
    from tests import torch_exports

    tf_base = stack.models_dir / "tf" / "digits"
    signature = tf.saved_model.load(str(tf_base / str(latest_version(tf_base)))).signatures["serving_default"]
    tf_outputs = signature(images=tf.constant(digits.test.images))
    torch_base = stack.models_dir / "torch" / "digits"
    torch_outputs = torch_exports.onnx_outputs(torch_base / str(latest_version(torch_base)), digits.test.images)
    return {
        "tf": (tf_outputs["probabilities"].numpy(), tf_outputs["classes"].numpy()),
        "torch": torch_outputs,
    }
