"""TorchServeGrpcClient against an in-test gRPC server built from the same generated stubs: keys, renewal, and how
TorchServe's gRPC answers become the one error family. The real TorchServe answers it in test_torch_servers.py and
tests/integration/."""

from __future__ import annotations

import json
from concurrent import futures

import grpc
import numpy as np
import pytest

from serving.clients import ServerUnavailableError, ServingError, TorchServeGrpcClient, torchserve_protos
from serving.runtime import free_port
from tests.serving.clients.test_clients import FakeTorchServe, one_hot

STUBS = torchserve_protos.load()


class FakeGrpcTorchServe:
    """TorchServe 0.12's gRPC answers as measured: INTERNAL naming the Java exception, the handler's errors as OK."""

    def __init__(self, rest: FakeTorchServe) -> None:
        self.rest = rest  # its keys, and its token API for renewals
        self.versions_asked: list[str] = []
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        STUBS.inference_pb2_grpc.add_InferenceAPIsServiceServicer_to_server(self._inference(), self.server)
        STUBS.management_pb2_grpc.add_ManagementAPIsServiceServicer_to_server(self._management(), self.server)
        # One server answers both services, as if inference and management shared a port.
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"
        self.server.start()

    def _authorize(self, context, api: str) -> None:
        if dict(context.invocation_metadata()).get("authorization") != f"Bearer {self.rest.keys[api]}":
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "Token Authorization failed. Token either incorrect, expired, or not provided correctly",
            )

    def _inference(self):
        fake = self

        class Inference(STUBS.inference_pb2_grpc.InferenceAPIsServiceServicer):
            def Predictions(self, request, context):
                fake._authorize(context, "inference")
                if request.model_name != "digits":
                    context.abort(
                        grpc.StatusCode.INTERNAL,
                        f"Model not found: {request.model_name}\n"
                        "org.pytorch.serve.archive.model.ModelNotFoundException",
                    )
                fake.versions_asked.append(request.model_version)
                images = json.loads(request.input["body"])["instances"]
                if np.asarray(images).shape[1:] != (8, 8):
                    answer = {"error": "Input 'images' has shape [1, 2] but the model expects float32 [N, 8, 8]."}
                else:
                    answer = {"predictions": one_hot(images)}
                return STUBS.inference_pb2.PredictionResponse(prediction=json.dumps(answer).encode())

        return Inference()

    def _management(self):
        fake = self

        class Management(STUBS.management_pb2_grpc.ManagementAPIsServiceServicer):
            def DescribeModel(self, request, context):
                fake._authorize(context, "management")
                workers = [{"id": str(n), "status": "READY"} for n in range(2)]
                description = {
                    "modelName": "digits",
                    "modelVersion": "4",
                    "minWorkers": 2,
                    "batchSize": 8,
                    "workers": workers,
                }
                return STUBS.management_pb2.ManagementResponse(msg=json.dumps([description]))

        return Management()


@pytest.fixture
def fakes(tmp_path):
    rest = FakeTorchServe(tmp_path / "key_file.json")
    grpc_fake = FakeGrpcTorchServe(rest)
    yield rest, grpc_fake
    grpc_fake.server.stop(None)
    rest.server.close()


def grpc_client(fakes, **options) -> TorchServeGrpcClient:
    rest, grpc_fake = fakes
    return TorchServeGrpcClient(
        grpc_fake.address,
        key_file=rest.key_file,
        management_address=grpc_fake.address,
        token_url=rest.server.url,
        timeout=5,
        **options,
    )


def test_grpc_client_sends_the_key_and_reads_the_predictions(fakes):
    with grpc_client(fakes) as client:
        probabilities, classes = client.predict(np.zeros((8, 8), np.float32))
        assert probabilities.shape == (1, 10) and probabilities.dtype == np.float32
        assert classes.tolist() == [3] and classes.dtype == np.int64
        assert client.is_available()
        metadata = client.get_metadata()
    assert (metadata["model_version"], metadata["batch_size"]) == ("4", 8)
    assert fakes[1].versions_asked == [""]  # no version: TorchServe's default one


def test_grpc_client_asks_a_version_by_name(fakes):
    with grpc_client(fakes, version=2) as client:
        client.predict(np.zeros((1, 8, 8), np.float32))
    assert fakes[1].versions_asked == ["2"]


def test_grpc_client_renews_an_expired_key_once_through_the_token_api(fakes):
    rest, _ = fakes
    with grpc_client(fakes) as client:
        client.predict(np.zeros((1, 8, 8), np.float32))
        rest.keys["inference"] = "rotated-by-the-server"
        _, classes = client.predict(np.zeros((1, 8, 8), np.float32))
    assert classes.tolist() == [3] and rest.renewals == 1


def test_grpc_client_without_the_key_is_refused_permission_denied(fakes):
    _, grpc_fake = fakes
    with TorchServeGrpcClient(grpc_fake.address, timeout=5) as client, pytest.raises(ServingError) as raised:
        client.predict(np.zeros((1, 8, 8), np.float32))
    assert raised.value.status == "PERMISSION_DENIED" and "Token Authorization failed" in raised.value.message
    assert raised.value.message.startswith(
        f"TorchServe (gRPC) at {grpc_fake.address} refused the key (PERMISSION_DENIED)"
    )
    assert raised.value.message.endswith(
        "; pass TorchServe's key file with --key-file (a `make serve` stack keeps it "
        "in .run/torchserve/key_file.json, which the client finds by itself)."
    )


def test_an_unknown_model_is_not_found_although_torchserve_says_internal(fakes):
    with grpc_client(fakes) as client, pytest.raises(ServingError) as raised:
        client.model_name = "no-such-model"
        client.predict(np.zeros((1, 8, 8), np.float32))
    assert raised.value.status == "NOT_FOUND"
    assert raised.value.message.endswith("has no model 'no-such-model' (NOT_FOUND): Model not found: no-such-model.")


def test_a_request_the_handler_refuses_is_invalid_argument_with_its_sentence(fakes):
    with grpc_client(fakes) as client, pytest.raises(ServingError) as raised:
        client.predict(np.zeros((1, 2), np.float32))
    assert raised.value.status == "INVALID_ARGUMENT"
    assert raised.value.message.endswith("Input 'images' has shape [1, 2] but the model expects float32 [N, 8, 8].")


def test_unreachable_torchserve_grpc_is_server_unavailable():
    with TorchServeGrpcClient(f"127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(ServerUnavailableError) as raised:
            client.predict(np.zeros((1, 8, 8), np.float32))
        assert not client.is_available()
    assert raised.value.status == "UNAVAILABLE"


def test_the_stubs_come_from_the_protos_inside_the_installed_torchserve():
    protos = torchserve_protos.read_protos(torchserve_protos.jar_path())
    assert b"service InferenceAPIsService" in protos["inference.proto"]
    assert STUBS.inference_pb2.__name__.startswith(torchserve_protos.package_name(protos) + ".")
