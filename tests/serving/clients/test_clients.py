"""serving.clients against small in-test HTTP servers: requests, key renewal, and the one error family.

The real servers answer the same clients in tests/serving/test_tfserving.py, test_torch_servers.py and
tests/integration/.
"""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest

from serving.client import main as client_main
from serving.clients import RestClient, ServerUnavailableError, ServingError, TorchServeClient, TorchServeError
from serving.runtime import free_port


class FakeServer(http.server.ThreadingHTTPServer):
    """An HTTP server on a free port whose answers come from `respond(method, path, query, headers, body)`."""

    def __init__(self, respond) -> None:
        self.respond = respond

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                url = urlparse(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, document = respond(self.command, url.path, parse_qs(url.query), self.headers, body)
                payload = document if isinstance(document, bytes) else json.dumps(document).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

            def log_message(self, *args) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving and release the port."""
        self.shutdown()
        self.server_close()


def one_hot(images: list) -> list[dict]:
    """Predictions of class 3 for every image, as TF Serving's row format answers."""
    return [{"probabilities": [1.0 if index == 3 else 0.0 for index in range(10)], "classes": 3} for _ in images]


class FakeTorchServe:
    """Just enough of TorchServe 0.12: token authorization, the token API, predictions and the model description."""

    def __init__(self, key_file: Path, ready_workers: int = 2) -> None:
        self.key_file = key_file
        self.keys = {"inference": "i-1", "management": "m-1", "API": "a-1"}
        self.ready_workers = ready_workers
        self.renewals = 0
        self._write_keys()
        self.server = FakeServer(self.respond)

    def _write_keys(self) -> None:
        self.key_file.write_text(json.dumps({name: {"key": key} for name, key in self.keys.items()}))

    def respond(self, method, path, query, headers, body):
        api = "management" if path.startswith(("/models", "/token")) else "inference"
        api = "API" if path == "/token" else api
        if headers.get("Authorization") != f"Bearer {self.keys[api]}":
            return 400, {"code": 400, "type": "InvalidKeyException", "message": "Token Authorization failed."}
        if path == "/token":
            self.renewals += 1
            self.keys[query["type"][0]] = f"renewed-{self.renewals}"
            self._write_keys()
            return 200, {}
        if path == "/models/digits":
            workers = [{"id": str(n), "status": "READY" if n < self.ready_workers else "LOADING"} for n in range(2)]
            return 200, [{"modelName": "digits", "modelVersion": "1", "minWorkers": 2, "workers": workers}]
        images = json.loads(body)["instances"]
        if np.asarray(images).shape[1:] != (8, 8):
            return 400, {"error": "Input 'images' has shape [1, 2]; the model expects [N, 8, 8]."}
        return 200, {"predictions": one_hot(images)}


@pytest.fixture
def torchserve(tmp_path):
    fake = FakeTorchServe(tmp_path / "key_file.json")
    yield fake
    fake.server.close()


def torchserve_client(fake: FakeTorchServe) -> TorchServeClient:
    return TorchServeClient(fake.server.url, key_file=fake.key_file, management_url=fake.server.url, timeout=5)


def test_torchserve_client_sends_the_key_and_reads_the_predictions(torchserve):
    with torchserve_client(torchserve) as client:
        probabilities, classes = client.predict(np.zeros((8, 8), np.float32))  # one image → a batch of one
        assert probabilities.shape == (1, 10) and probabilities.dtype == np.float32
        assert classes.tolist() == [3] and classes.dtype == np.int64
        assert client.is_available()


def test_torchserve_client_renews_an_expired_key_once(torchserve):
    with torchserve_client(torchserve) as client:
        client.predict(np.zeros((1, 8, 8), np.float32))
        torchserve.keys["inference"] = "rotated-by-the-server"  # the client's key is now out of date
        _, classes = client.predict(np.zeros((1, 8, 8), np.float32))
    assert classes.tolist() == [3] and torchserve.renewals == 1
    assert json.loads(torchserve.key_file.read_text())["inference"]["key"] == "renewed-1"


def test_torchserve_refusal_is_a_serving_error_with_the_servers_sentence(torchserve):
    with torchserve_client(torchserve) as client, pytest.raises(TorchServeError) as raised:
        client.predict(np.zeros((1, 2), np.float32))
    assert isinstance(raised.value, ServingError)
    assert raised.value.status == 400 and str(raised.value) == raised.value.message
    assert str(raised.value) == (
        f"TorchServe (REST) at {torchserve.server.url} refused the request (HTTP 400): "
        "Input 'images' has shape [1, 2]; the model expects [N, 8, 8]."
    )


def test_torchserve_is_available_only_with_min_workers_ready(torchserve):
    torchserve.ready_workers = 1
    with torchserve_client(torchserve) as client:
        assert not client.is_available()
        with pytest.raises(TimeoutError, match=f"workers were not READY at {torchserve.server.url} within 0.3 s"):
            client.wait_until_available(0.3)


def test_unreachable_torchserve_is_server_unavailable_naming_its_url():
    url = f"http://127.0.0.1:{free_port()}"
    with TorchServeClient(url, management_url=url, timeout=2) as client:
        with pytest.raises(ServerUnavailableError) as raised:
            client.predict(np.zeros((1, 8, 8), np.float32))
        assert str(raised.value) == f"Cannot reach TorchServe (REST) at {url}: the connection was refused or dropped."
        assert not client.is_available()


@pytest.fixture
def rest_server():
    def respond(method, path, query, headers, body):
        if path == "/v1/models/digits:predict":
            images = json.loads(body)["inputs"]["images"]
            return 200, {
                "outputs": {
                    "probabilities": [row["probabilities"] for row in one_hot(images)],
                    "classes": [3] * len(images),
                }
            }
        if path == "/v1/models/warming:predict":
            return 503, {"error": "No version of model 'warming' is loaded yet."}
        if path == "/v1/models/text:predict":
            return 200, b"not json"
        return 404, {"error": f"Servable not found for request: Latest({path.split('/')[3].split(':')[0]})"}

    server = FakeServer(respond)
    yield server
    server.close()


def test_rest_client_predicts_in_the_columnar_format(rest_server):
    client = RestClient(rest_server.url)
    probabilities, classes = client.predict(np.zeros((2, 8, 8), np.float32))
    client.close()
    assert probabilities.shape == (2, 10) and classes.tolist() == [3, 3]


@pytest.mark.parametrize(
    ("model", "error_type", "status", "message"),
    [
        ("cats", ServingError, 404, "has no model 'cats' (HTTP 404): Servable not found for request: Latest(cats)."),
        (
            "warming",
            ServerUnavailableError,
            503,
            "refused the request (HTTP 503): No version of model 'warming' is loaded yet.",
        ),
        ("text", ServingError, 200, "answered with a body that is not JSON."),
    ],
)
def test_rest_errors_carry_the_http_status_and_the_servers_sentence(rest_server, model, error_type, status, message):
    client = RestClient(rest_server.url, model)
    with pytest.raises(error_type) as raised:
        client.predict(np.zeros((1, 8, 8), np.float32))
    client.close()
    assert raised.value.status == status
    assert str(raised.value) == f"REST server at {rest_server.url} {message}"


def test_client_command_against_torchserve(torchserve, capsys, tmp_path):
    images = tmp_path / "images.npy"
    np.save(images, np.zeros((3, 8, 8)))
    argv = [
        "torchserve",
        "--rest",
        torchserve.server.url,
        "--key-file",
        str(torchserve.key_file),
        "--images",
        str(images),
        "--batch-size",
        "2",
    ]
    assert client_main(argv) == 0
    output = capsys.readouterr().out.splitlines()
    assert output[0] == f"TorchServe (REST) at {torchserve.server.url}, model 'digits'"
    assert [line.split()[:3] for line in output[2:5]] == [["0", "3", "-"], ["1", "3", "-"], ["2", "3", "-"]]
    assert output[-1].startswith("2 calls, median")


def test_client_command_with_torchserve_unreachable_is_one_sentence_and_exit_1(capsys):
    url = f"http://127.0.0.1:{free_port()}"
    assert client_main(["torchserve", "--rest", url, "--sample", "1"]) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [
        f"python -m serving.client: error: Cannot reach TorchServe (REST) at {url}: the connection was "
        "refused or dropped."
    ]


def _clients_of_every_kind(address: str, model_name: str = "digits", timeout: float = 2.0) -> list:
    """The four clients (TF Serving gRPC and REST, Flask REST, TorchServe REST and gRPC) aimed at one address."""
    from serving.clients import TFServingGrpcClient, TorchServeGrpcClient

    url = f"http://{address}"
    return [
        TFServingGrpcClient(address, model_name, timeout_s=timeout),
        RestClient(url, model_name, timeout, "TensorFlow Serving (REST)"),
        RestClient(url, model_name, timeout, "Flask (REST)"),
        TorchServeClient(url, model_name, management_url=url, timeout=timeout),
        TorchServeGrpcClient(address, model_name, timeout=timeout),
    ]


def test_every_client_words_an_unreachable_server_the_same_way():
    address = f"127.0.0.1:{free_port()}"
    for client in _clients_of_every_kind(address):
        with pytest.raises(ServerUnavailableError) as raised:
            client.predict(np.zeros((1, 8, 8), np.float32))
        client.close()
        assert str(raised.value) == f"Cannot reach {client.description}: the connection was refused or dropped."
        assert client.description.endswith(f" at {address}") or client.description.endswith(f" at http://{address}")


def test_every_rest_client_words_a_timeout_the_same_way():
    # A server that accepts the connection and never answers.
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        for client in _clients_of_every_kind(address, timeout=0.5)[1:4]:
            with pytest.raises(ServerUnavailableError) as raised:
                client.predict(np.zeros((1, 8, 8), np.float32))
            client.close()
            assert str(raised.value) == f"{client.description} did not answer within 0.5 s."


def test_torchserve_without_its_key_is_refused_with_the_flag_that_passes_it(torchserve):
    with (
        TorchServeClient(torchserve.server.url, management_url=torchserve.server.url, timeout=5) as client,
        pytest.raises(TorchServeError) as raised,
    ):
        client.predict(np.zeros((1, 8, 8), np.float32))
    assert str(raised.value) == (
        f"TorchServe (REST) at {torchserve.server.url} refused the key (HTTP 400): Token Authorization failed; pass "
        "TorchServe's key file with --key-file (a `make serve` stack keeps it in .run/torchserve/key_file.json, which "
        "the client finds by itself)."
    )
