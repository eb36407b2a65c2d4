"""The manifests agree with the code they deploy: ports, probes, model paths and names as serving/ and
docker-compose.yml have them, the KServe storage layout as the runtimes read it, and training flags the pipelines
accept."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from deploy import kserve_storage
from experiment import artifacts
from experiment.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy" / "kubernetes" / "base"
MODEL_NAME = "digits"


def serving_ports() -> dict[str, int]:
    """Every port serving/ starts its servers on, by name (tf_grpc, tf_rest, flask, torchserve_inference, ...).

    The one place this file learns them: point it at the new module when the stack's ports move.
    """
    from serving.runtime.stack import Ports

    return Ports().as_dict()


def _documents(path: Path) -> dict[str, dict]:
    return {document["kind"]: document for document in yaml.safe_load_all(path.read_text()) if document}


def _container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def _probe_text(probe: dict) -> str:
    if "exec" in probe:
        return " ".join(probe["exec"]["command"])
    return f"GET {probe['httpGet']['path']} on {probe['httpGet']['port']}"


SERVERS = {
    # manifest → (compose service, its ports in serving_ports(), the container's model mount, the models/ subpath)
    "tf-serving": ("tf-serving", ("tf_grpc", "tf_rest"), f"/models/{MODEL_NAME}", f"tf/{MODEL_NAME}"),
    "torchserve": (
        "torchserve",
        (
            "torchserve_inference",
            "torchserve_management",
            "torchserve_metrics",
            "torchserve_grpc_inference",
            "torchserve_grpc_management",
        ),
        "/home/model-server/model-store",
        "torch/model-store",
    ),
    "flask": ("flask", ("flask",), f"/models/{MODEL_NAME}", f"torch/{MODEL_NAME}"),
}


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_container_ports_are_the_stacks_ports_and_the_service_exposes_them(server):
    _, names, _, _ = SERVERS[server]
    ports = serving_ports()
    documents = _documents(BASE / f"{server}.yaml")
    container_ports = {port["containerPort"] for port in _container(documents["Deployment"])["ports"]}
    assert container_ports == {ports[name] for name in names}
    by_name = {port["name"]: port["containerPort"] for port in _container(documents["Deployment"])["ports"]}
    for service_port in documents["Service"]["spec"]["ports"]:
        assert service_port["port"] == by_name[service_port["targetPort"]], "a Service port must keep its number"
    assert documents["Service"]["spec"]["selector"] == documents["Deployment"]["spec"]["selector"]["matchLabels"]
    assert documents["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == server


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_every_probe_means_model_loaded_as_the_compose_healthcheck_does(server):
    service, _, _, _ = SERVERS[server]
    container = _container(_documents(BASE / f"{server}.yaml")["Deployment"])
    probes = [container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")]
    texts = {_probe_text(probe) for probe in probes}
    assert len(texts) == 1, "startup, readiness and liveness ask the same question"
    [text] = texts
    healthcheck = _compose()[service]["healthcheck"]["test"]
    if server == "flask":
        # The container's /readyz on the port the stack gives Flask (503 until a version is loaded).
        port = {port["name"]: port["containerPort"] for port in container["ports"]}[probes[0]["httpGet"]["port"]]
        assert (probes[0]["httpGet"]["path"], port) == ("/readyz", serving_ports()["flask"])
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(healthcheck)
    else:
        assert text == " ".join(healthcheck[1:]), "the same command as docker-compose.yml's healthcheck"
    expected = {
        "tf-serving": (f"/dev/tcp/127.0.0.1/{serving_ports()['tf_rest']}", f"/v1/models/{MODEL_NAME}", "AVAILABLE"),
        "torchserve": (f"127.0.0.1:{serving_ports()['torchserve_management']}/models/{MODEL_NAME}", "READY"),
        "flask": ("/readyz",),
    }[server]
    assert all(part in text for part in expected)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_models_are_mounted_where_compose_mounts_them_read_only(server):
    service, _, mount_path, sub_path = SERVERS[server]
    container = _container(_documents(BASE / f"{server}.yaml")["Deployment"])
    [mount] = [mount for mount in container["volumeMounts"] if mount["name"] == "models"]
    assert (mount["mountPath"], mount["subPath"], mount["readOnly"]) == (mount_path, sub_path, True)
    compose_mounts = {entry.split(":")[1]: entry.split(":")[0] for entry in _compose()[service]["volumes"]}
    assert compose_mounts[mount_path] == f"./models/{sub_path}"
    image = _compose()[service].get("image")
    if server != "flask":  # Flask's image is built from serving/flask_app/Dockerfile and pushed by the user
        assert container["image"] == image


def test_flask_settings_are_the_compose_and_dockerfile_ones():
    container = _container(_documents(BASE / "flask.yaml")["Deployment"])
    environment = {variable["name"]: variable["value"] for variable in container["env"]}
    compose = _compose()["flask"]["environment"]
    assert {name: environment[name] for name in compose} == compose
    dockerfile = (ROOT / "serving" / "flask_app" / "Dockerfile").read_text()
    assert f"FLASK_MODEL_BASE_PATH={environment['FLASK_MODEL_BASE_PATH']}" in dockerfile


def test_torchserve_config_has_the_stacks_ports_and_loads_the_digits_archive():
    from serving.torchserve import config as torchserve_config

    ports = serving_ports()
    pod = torchserve_config.read_properties(BASE / "torchserve" / "config.properties")
    native = torchserve_config.read_properties(ROOT / "serving" / "torchserve" / "config.properties")
    assert pod["inference_address"] == f"http://0.0.0.0:{ports['torchserve_inference']}"
    assert pod["management_address"] == f"http://127.0.0.1:{ports['torchserve_management']}"
    assert pod["metrics_address"] == f"http://0.0.0.0:{ports['torchserve_metrics']}"
    assert int(pod["grpc_inference_port"]) == ports["torchserve_grpc_inference"]
    assert int(pod["grpc_management_port"]) == ports["torchserve_grpc_management"]
    hardening = ("max_response_size", "enable_envvars_config", "install_py_dep_per_model", "decode_input_request")
    for key in ("load_models", "metrics_mode", "max_request_size", *hardening):
        assert pod[key] == native[key], key
    assert pod["allowed_urls"] == f"file://{pod['model_store']}/[^/]+[.]mar", "archives from the pod's store only"
    container = _container(_documents(BASE / "torchserve.yaml")["Deployment"])
    assert "--model-store=/home/model-server/model-store" in container["args"]
    assert pod["model_store"] == "/home/model-server/model-store"


def test_kserve_resources_point_at_the_exports_layouts():
    tensorflow = _documents(ROOT / "deploy" / "kserve" / "tensorflow.yaml")["InferenceService"]
    torchserve = _documents(ROOT / "deploy" / "kserve" / "torchserve.yaml")["InferenceService"]
    # TF Serving's runtime names the model after the resource: /v1/models/digits.
    assert tensorflow["metadata"]["name"] == MODEL_NAME
    models = Path("/models-root")
    tf_uri = tensorflow["spec"]["predictor"]["model"]["storageUri"]
    assert tf_uri == "pvc://digits-models/" + str(
        artifacts.model_base_path(models, "tf", MODEL_NAME).relative_to(models)
    )
    torch_uri = torchserve["spec"]["predictor"]["model"]["storageUri"]
    layout = kserve_storage.layout_path(models, MODEL_NAME).relative_to(models)
    assert torch_uri == f"pvc://digits-models/{layout}"
    assert torchserve["spec"]["predictor"]["model"]["protocolVersion"] == "v1"
    lock = (ROOT / "requirements.lock").read_text()
    assert f"torch-model-archiver=={torchserve['spec']['predictor']['model']['runtimeVersion']}" in lock
    # The archive's handler runs model.onnx in ONNX Runtime, which the runtime's own torchserve-kfs image lacks.
    assert not torchserve["spec"]["predictor"]["model"].get("image", "pytorch/").startswith("pytorch/")


@pytest.mark.slow
def test_kserve_torchserve_layout_is_what_the_wrapper_reads(torch_smoke_run, tmp_path):
    import json
    import shutil

    from serving.torchserve import config as torchserve_config

    models = tmp_path / "models"
    shutil.copytree(torch_smoke_run.export_path.parents[2], models)
    root = kserve_storage.write_layout(models, MODEL_NAME)
    assert sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()) == [
        "config/config.properties",
        f"model-store/{MODEL_NAME}.mar",
    ], "the wrapper refuses a model store with more than one archive"
    properties = torchserve_config.read_properties(root / "config" / "config.properties")
    assert properties["model_store"] == kserve_storage.MODEL_STORE_MOUNT
    native = torchserve_config.read_properties(ROOT / "serving" / "torchserve" / "config.properties")
    for key in ("max_request_size", "max_response_size", "install_py_dep_per_model", "decode_input_request"):
        assert properties[key] == native[key], key
    assert properties["allowed_urls"] == f"file://{kserve_storage.MODEL_STORE_MOUNT}/[^/]+[.]mar"
    assert "enable_envvars_config" not in properties, "KServe's envelope would hand the handler bare instances"
    snapshot = json.loads(properties["model_snapshot"])
    archive = root / "model-store" / f"{MODEL_NAME}.mar"
    [(version, settings)] = snapshot["models"][MODEL_NAME].items()
    assert version == torchserve_config.archive_version(archive) and settings["marName"] == archive.name
    assert kserve_storage.write_layout(models, MODEL_NAME) == root, "running it again replaces the layout"


def _command(path: str, container_name: str) -> list[str]:
    [document] = [document for document in yaml.safe_load_all((ROOT / path).read_text()) if document]
    replica_specs = document["spec"]["pytorchReplicaSpecs" if "pytorch" in path else "tfReplicaSpecs"]
    [container] = replica_specs["Worker"]["template"]["spec"]["containers"]
    assert container["name"] == container_name, "the training operator finds its container by this name"
    assert [mount["mountPath"] for mount in container["volumeMounts"]] == ["/shared"]
    return container["command"]


def test_pytorchjob_runs_torch_train_with_flags_it_accepts():
    from torch.distributed import run as torchrun

    from experiment.processes import split_arguments
    from torch_pipeline.train import PROG, TorchTrainConfig

    command = _command("deploy/training/pytorchjob.yaml", "pytorch")
    assert command[:3] == ["python", "-m", "torch_pipeline.launch"], shlex.join(command)
    torchrun_argv, train_argv = split_arguments(command[3:])
    torchrun.parse_args([*torchrun_argv, "--module", "torch_pipeline.train", *train_argv])
    config = parse_config(TorchTrainConfig, train_argv, PROG, "")
    for place in (config.checkpoint_dir, config.output_dir, config.log_dir):
        assert str(place).startswith("/shared/"), "every pod must see checkpoints, exports and logs"


def test_tfjob_runs_tf_train_with_flags_it_accepts():
    from tf_pipeline.train import PROG, TFTrainConfig

    command = _command("deploy/training/tfjob.yaml", "tensorflow")
    assert command[:3] == ["python", "-m", "tf_pipeline.train"], shlex.join(command)
    config = parse_config(TFTrainConfig, command[3:], PROG, "")
    for place in (config.checkpoint_dir, config.output_dir, config.log_dir):
        assert str(place).startswith("/shared/"), "every pod must see checkpoints, exports and logs"
