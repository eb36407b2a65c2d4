"""serving.runtime's specs: each server's command, ports, readiness, endpoints and the lines `make serve` prints."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from serving.clients import RestClient, TFServingGrpcClient, TorchServeClient, TorchServeGrpcClient
from serving.runtime import ServerError, flask_app, free_port, tfserving, torchserve
from serving.torchserve.config import TorchServePorts, read_properties


def test_tfserving_with_grpc_only_and_a_model_config_file(tmp_path):
    ports = tfserving.TFServingPorts.free(rest=False)
    spec = tfserving.spec(ports, "identity", flags=[f"--model_config_file={tmp_path / 'models.config'}"])
    assert spec.command[3:] == [f"--port={ports.grpc}", f"--model_config_file={tmp_path / 'models.config'}"]
    assert spec.ports == {"gRPC": ports.grpc}
    assert [endpoint.name for endpoint in spec.endpoints] == ["tf-grpc"]
    assert [example.label for example in spec.examples] == ["TF Serving gRPC"]
    client = spec.endpoint("tf-grpc").client()
    assert isinstance(client, TFServingGrpcClient) and client.model_name == "identity"
    client.close()
    with pytest.raises(KeyError, match="no endpoint 'tf-rest'"):
        spec.endpoint("tf-rest")


def test_tfserving_is_not_ready_where_nothing_listens():
    assert tfserving.is_serving(f"127.0.0.1:{free_port()}", rest_port=None) is False


def test_flask_environment_and_application_can_be_changed():
    assert flask_app.spec(5001).command[1:] == ["-m", "serving.flask_app", "--host", "127.0.0.1", "--port", "5001"]
    spec = flask_app.spec(5001, "fashion", environment={"WEB_CONCURRENCY": "2"}, application="bench:create_app")
    assert spec.command[-4:] == ["--port", "5001", "--app", "bench:create_app"]
    assert spec.environment["WEB_CONCURRENCY"] == "2" and spec.environment["FLASK_MODEL_NAME"] == "fashion"
    assert spec.environment["PROMETHEUS_MULTIPROC_DIR"] is None  # each server makes a fresh metrics folder
    assert "FLASK_MODEL_BASE_PATH" not in spec.environment  # the app's own default then applies
    [endpoint] = spec.endpoints
    assert (endpoint.name, endpoint.framework, endpoint.protocol) == ("flask-rest", "torch", "REST")
    assert isinstance(endpoint.client(), RestClient)


def test_torchserve_without_token_authorization(tmp_path):
    instance = torchserve.TorchServeInstance(tmp_path / "ts", TorchServePorts(9080, 9081, 9082, 9070, 9071), False)
    spec = torchserve.spec(instance, tmp_path / "store")
    assert spec.command[-1] == "--disable-token-auth"
    assert spec.notes == []
    assert "Authorization" not in " ".join(example.command for example in spec.examples)
    assert "--key-file" not in spec.examples[-1].command
    client = spec.endpoint("torchserve-rest").client()
    assert isinstance(client, TorchServeClient) and client.key_file is None
    assert client.management_url == "http://127.0.0.1:9081"


def test_torchserve_management_url_defaults_to_the_next_port_of_its_host():
    [endpoint] = torchserve.endpoints("http://example.test:8080")
    assert endpoint.client().management_url == "http://example.test:8081"


def test_torchserve_grpc_endpoint_defaults_follow_torchserves_layout():
    [endpoint] = torchserve.endpoints(None, grpc_address="example.test:7070", key_file=Path("keys.json"))
    assert (endpoint.name, endpoint.protocol, endpoint.address) == ("torchserve-grpc", "gRPC", "example.test:7070")
    client = endpoint.client()
    try:
        assert isinstance(client, TorchServeGrpcClient) and client.key_file == Path("keys.json")
        assert client.management_address == "example.test:7071"
        assert client.keys.management_url == "http://example.test:8081"  # TorchServe's token API is REST only
    finally:
        client.close()


def test_torchserve_spec_runs_the_rollout_beside_torchserve_unless_told_not_to(tmp_path):
    instance = torchserve.TorchServeInstance(tmp_path / "ts", TorchServePorts(9080, 9081, 9082, 9070, 9071))
    command = torchserve.spec(instance, tmp_path / "store", batch_size=1).command
    separator = command.index("--")
    assert command[1:3] == ["-m", "serving.runtime.torchserve_rollout"]
    watcher = command[:separator]
    assert watcher[watcher.index("--management-url") + 1] == "http://127.0.0.1:9081"
    assert watcher[watcher.index("--key-file") + 1] == str(instance.key_file.resolve())
    assert watcher[watcher.index("--batch-size") + 1] == "1"  # new versions get the same override
    assert command[separator + 1 :][1:3] == ["--start", "--foreground"]
    plain = torchserve.spec(instance, tmp_path / "store", rollout=False).command
    assert plain == command[separator + 1 :]


def test_torchserve_without_an_archive_is_one_sentence(tmp_path):
    spec = torchserve.spec(torchserve.TorchServeInstance(tmp_path / "ts"), tmp_path / "store")
    with pytest.raises(ServerError) as raised:
        spec.prepare()
    assert str(raised.value) == (
        f"No digits.mar in {(tmp_path / 'store').resolve()}; train one first with `make train-torch`."
    )


def test_torchserve_prepare_writes_its_config_and_removes_a_stale_key_file(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    with zipfile.ZipFile(store / "digits.mar", "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelVersion": "7"}}))
    instance = torchserve.TorchServeInstance.on_free_ports(tmp_path / "ts")
    (tmp_path / "ts").mkdir()
    instance.key_file.write_text("{}")
    spec = torchserve.spec(instance, store, batch_size=16)
    try:
        spec.prepare()
    except ServerError as error:
        pytest.skip(f"needs TorchServe's own requirements: {error}")
    properties = read_properties(tmp_path / "ts" / "config.properties")
    assert properties["inference_address"] == instance.inference_url
    assert int(properties["grpc_management_port"]) == instance.ports.grpc_management
    snapshot = json.loads(properties["model_snapshot"])  # not models=: the archive's own settings would win
    assert snapshot["models"]["digits"]["7"]["batchSize"] == 16
    assert properties["enable_model_api"] == "true"  # the roll-out registers versions
    assert not instance.key_file.exists()
    assert instance.temp_dir.is_dir() and instance.log_dir.is_dir()
