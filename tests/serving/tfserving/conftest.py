"""The server under test for TensorFlow Serving's own cases: ours on free ports by default, or a real one.

By default the reference models (tests.serving.tfserving.models) are written into a temporary folder and one
`python -m serving.tfserving` serves all of them, started once for the session with the flags TensorFlow Serving's
own test harness passes. To run the same cases against the real TensorFlow Serving instead:

    python -m tests.serving.tfserving.models /tmp/tfs-models
    docker run --rm -p 8500:8500 -p 8501:8501 -v /tmp/tfs-models:/tmp/tfs-models tensorflow/serving \\
        --model_config_file=/tmp/tfs-models/models.config --allow_version_labels_for_unavailable_models
    TFSERVING_TEST_MODELS=/tmp/tfs-models TFSERVING_GRPC=127.0.0.1:8500 TFSERVING_REST=http://127.0.0.1:8501 \\
        .venv/bin/python -m pytest tests/serving/tfserving

TFSERVING_TEST_MODELS is what switches to the external server (TFSERVING_GRPC and TFSERVING_REST alone belong to
the integration suite's digits stack). Cases that need a server of their own, or look inside ours, are skipped then.
"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from serving import runtime
from serving.runtime import tfserving
from tests.serving.tfserving import models
from tests.serving.tfserving.support import ServerUnderTest

START_TIMEOUT_S = 180  # importing TensorFlow and loading nine models on a busy 2-core machine
EXTERNAL_VARIABLE = "TFSERVING_TEST_MODELS"


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    """The reference models and models.config: written now, or the folder an external server serves."""
    external = os.environ.get(EXTERNAL_VARIABLE)
    if external:
        return Path(external)
    root = tmp_path_factory.mktemp("reference_models")
    models.write_models(root)
    return root


@pytest.fixture(scope="session")
def served(models_dir, tmp_path_factory):
    """The server answering the reference cases (ours, started once, unless TFSERVING_TEST_MODELS names another)."""
    if os.environ.get(EXTERNAL_VARIABLE):
        grpc_address, rest_url = os.environ.get("TFSERVING_GRPC"), os.environ.get("TFSERVING_REST")
        if not grpc_address or not rest_url:
            pytest.fail(
                f"{EXTERNAL_VARIABLE} is set: set TFSERVING_GRPC and TFSERVING_REST to the server's addresses too"
            )
        yield ServerUnderTest(grpc_address, rest_url.rstrip("/"), models_dir)
        return
    work_dir = tmp_path_factory.mktemp("reference_server")
    socket_path = work_dir / "tf-serving.sock"
    monitoring = work_dir / "monitoring.config"
    monitoring.write_text("prometheus_config { enable: true path: '/monitoring/prometheus/metrics' }\n")
    flags = [
        f"--model_config_file={models_dir / models.CONFIG_FILE}",
        "--allow_version_labels_for_unavailable_models",
        "--rest_api_timeout_in_ms=5000",
        f"--grpc_socket_path={socket_path}",
        "--grpc_channel_arguments=grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb",
        f"--monitoring_config_file={monitoring}",
        "--file_system_poll_wait_seconds=0",
        "--workers=1",  # one copy of the nine models is enough here; one process also answers every reload
    ]
    ports = tfserving.TFServingPorts.free()
    spec = tfserving.spec(ports, "default", None, flags)
    with runtime.start(spec, work_dir / "tfserving.log", START_TIMEOUT_S) as process:
        yield ServerUnderTest(
            spec.endpoint("tf-grpc").address, spec.endpoint("tf-rest").address, models_dir, process, socket_path
        )


@pytest.fixture(scope="session")
def channel(served):
    """One gRPC channel to the server for the session."""
    with grpc.insecure_channel(served.grpc_address) as opened:
        yield opened


@pytest.fixture(scope="session")
def prediction(channel):
    """tensorflow.serving.PredictionService stub."""
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="session")
def model_service(channel):
    """tensorflow.serving.ModelService stub."""
    from tensorflow_serving.apis import model_service_pb2_grpc

    return model_service_pb2_grpc.ModelServiceStub(channel)
