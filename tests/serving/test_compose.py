"""The container side: docker-compose.yml is valid, and it, the Makefile, TorchServe's config.properties, the Flask
settings, serving/flask_app/Dockerfile and serving.stack agree on ports, model names and paths (docs/architecture.md).

No image is pulled or built here (`make test-containers` builds and runs the stack: tests/containers/).
`docker-compose config` validates the file against the Compose schema (.ci/run installs Debian's docker-compose);
PyYAML reads it for the cross-checks.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from serving.flask_app import server
from serving.runtime import Ports, Stack
from serving.torchserve import config

ROOT = Path(__file__).resolve().parents[2]
MODEL_NAME = "digits"
# docs/architecture.md, "Ports".
TF_PORTS = {8500, 8501}
TORCHSERVE_PORTS = {8080, 8081, 8082, 7070, 7071}
FLASK_PORTS = {5000}
SERVERS = ("tf-serving", "torchserve", "flask")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


# "127.0.0.1:${FLASK_HOST_PORT:-5000}:5000": a host port that a variable can move, with its default.
PORT_ENTRY = re.compile(r"(?P<host>[^:]+):(?:\$\{\w+:-(?P<default>\d+)\}|(?P<port>\d+)):(?P<container>\d+)")


def published(service: dict) -> dict[int, int]:
    """Default host port → container port, checking that every published port is bound to the host's 127.0.0.1."""
    mapping = {}
    for entry in service.get("ports", []):
        match = PORT_ENTRY.fullmatch(str(entry))
        assert match, f"{entry} is not host:port:container_port"
        assert match["host"] == "127.0.0.1", f"{entry} must be published on 127.0.0.1 only"
        mapping[int(match["default"] or match["port"])] = int(match["container"])
    return mapping


def volumes(service: dict) -> dict[str, tuple[str, str]]:
    """Container path → (host path relative to the repository, mode)."""
    result = {}
    for entry in service.get("volumes", []):
        source, target, mode = entry.split(":")
        result[target] = (os.path.normpath(source), mode)
    return result


def _compose_plugin_installed() -> bool:
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


def test_compose_file_passes_docker_compose_config():
    if shutil.which("docker-compose"):
        command = ["docker-compose", "config", "--quiet"]
    elif shutil.which("docker") and _compose_plugin_installed():
        command = ["docker", "compose", "config", "--quiet"]
    elif os.environ.get("CI"):
        pytest.fail("CI must validate docker-compose.yml: .ci/run installs docker-compose before `make test`.")
    else:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed (.ci/run installs it)")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_images_are_official_and_pinned(compose):
    services = compose["services"]
    assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+", services["tf-serving"]["image"])
    # TorchServe: the official image plus ONNX Runtime, built from serving/torchserve/Dockerfile.
    assert services["torchserve"]["build"] == {"context": ".", "dockerfile": "serving/torchserve/Dockerfile"}
    torchserve_dockerfile = (ROOT / "serving" / "torchserve" / "Dockerfile").read_text()
    assert re.search(r"^ARG TORCHSERVE_IMAGE=pytorch/torchserve:0\.12\.0-cpu$", torchserve_dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{TORCHSERVE_IMAGE\}$", torchserve_dockerfile, re.MULTILINE)
    assert "onnxruntime==" in (ROOT / "serving" / "torchserve" / "requirements-image.txt").read_text()
    assert services["flask"]["build"] == {"context": ".", "dockerfile": "serving/flask_app/Dockerfile"}
    assert (ROOT / "serving" / "flask_app" / "Dockerfile").is_file()
    for name in SERVERS:
        assert ":latest" not in services[name].get("image", "") or "build" in services[name]


@pytest.mark.parametrize(
    ("service", "ports"),
    [("tf-serving", TF_PORTS), ("torchserve", TORCHSERVE_PORTS), ("flask", FLASK_PORTS)],
)
def test_ports_are_design_md_ports_on_loopback(compose, service, ports):
    mapping = published(compose["services"][service])
    assert set(mapping) == ports
    assert all(host == container for host, container in mapping.items())


@pytest.mark.parametrize("service", SERVERS)
def test_every_server_restarts_and_has_a_model_loaded_healthcheck(compose, service):
    definition = compose["services"][service]
    assert definition["restart"] == "unless-stopped"
    test = " ".join(definition["healthcheck"]["test"])
    # "Model loaded", not "process up": TF's model status, TorchServe's workers, Flask's /readyz.
    expected = {"tf-serving": "/v1/models/digits", "torchserve": "/models/digits", "flask": "/readyz"}[service]
    assert expected in test
    assert "curl" not in test  # neither official image ships curl
    if service == "tf-serving":
        # Nor does tensorflow/serving ship Python; make test-containers' stand-in does, so only this catches it.
        assert "python" not in test and "python" not in " ".join(definition["entrypoint"])
    assert definition["healthcheck"]["start_period"]


def test_ready_service_waits_for_all_three_healthy(compose):
    depends = compose["services"]["ready"]["depends_on"]
    assert {name: value["condition"] for name, value in depends.items()} == dict.fromkeys(SERVERS, "service_healthy")


def test_tf_serving_mounts_the_tf_export_read_only(compose):
    service = compose["services"]["tf-serving"]
    assert service["environment"]["MODEL_NAME"] == MODEL_NAME
    # The image serves $MODEL_BASE_PATH/$MODEL_NAME with MODEL_BASE_PATH=/models.
    assert volumes(service) == {f"/models/{MODEL_NAME}": (f"models/tf/{MODEL_NAME}", "ro")}
    assert Stack(models_dir="models").tf_base_path == ROOT / "models" / "tf" / MODEL_NAME
    # The image's own command line, exec'd under tini so that `docker compose stop`'s SIGTERM reaches the server.
    assert service["init"] is True
    script = service["entrypoint"][2]
    assert script.startswith("exec tensorflow_model_server --port=8500 --rest_api_port=8501")
    assert '--model_name="$$MODEL_NAME" --model_base_path="$$MODEL_BASE_PATH/$$MODEL_NAME" "$$@"' in script


def test_torchserve_mounts_store_and_config_and_turns_token_auth_off(compose):
    service = compose["services"]["torchserve"]
    mounts = volumes(service)
    store_source, store_mode = mounts["/home/model-server/model-store"]
    assert (store_source, store_mode) == ("models/torch/model-store", "ro")
    config_source, config_mode = mounts["/home/model-server/config/config.properties"]
    assert (config_source, config_mode) == ("serving/torchserve/config.properties", "ro")
    script = "\n".join(service["entrypoint"])
    assert "/home/model-server/config/config.properties" in script
    assert "--model-store /home/model-server/model-store" in script
    assert "--disable-token-auth" in script
    assert "--enable-model-api" in script  # a new archive is rolled out through the management API
    assert "trap 'torchserve --stop" in script


def test_torchserve_config_agrees_with_compose_stack_and_design(compose):
    properties = config.read_properties(ROOT / "serving" / "torchserve" / "config.properties")
    configured = {
        int(properties["inference_address"].rsplit(":", 1)[1]),
        int(properties["management_address"].rsplit(":", 1)[1]),
        int(properties["metrics_address"].rsplit(":", 1)[1]),
        int(properties["grpc_inference_port"]),
        int(properties["grpc_management_port"]),
    }
    assert configured == TORCHSERVE_PORTS == set(published(compose["services"]["torchserve"]))
    defaults = Ports()
    assert properties["inference_address"] == f"http://127.0.0.1:{defaults.torchserve_inference}"
    assert properties["management_address"] == f"http://127.0.0.1:{defaults.torchserve_management}"
    assert properties["metrics_address"] == f"http://127.0.0.1:{defaults.torchserve_metrics}"
    assert int(properties["grpc_inference_port"]) == defaults.torchserve_grpc_inference
    assert int(properties["grpc_management_port"]) == defaults.torchserve_grpc_management
    assert properties["model_store"] == "models/torch/model-store"
    assert properties["load_models"] == f"{MODEL_NAME}.mar"
    # Workers and batching travel inside each archive (model-config.yaml), so no setting is keyed to one version.
    assert "models" not in properties
    assert Stack(models_dir="models").model_store == ROOT / "models" / "torch" / "model-store"


def test_torchserve_rollout_watches_the_store_torchserve_serves(compose):
    services = compose["services"]
    rollout, torchserve = services["torchserve-rollout"], services["torchserve"]
    # The Flask image holds the serving package; its own healthcheck (the Flask app's /readyz) must not apply.
    assert rollout["image"] == services["flask"]["image"] and rollout["build"] == services["flask"]["build"]
    assert rollout["healthcheck"] == {"disable": True}
    command = rollout["command"]
    assert command[:3] == ["python", "-m", "serving.torchserve.rollout"]
    store = volumes(torchserve)["/home/model-server/model-store"]
    mounted_at = [target for target, source in volumes(rollout).items() if source == store]
    assert mounted_at and f"--model-store={mounted_at[0]}" in command
    assert "--management-url=http://torchserve:8081" in command
    assert rollout["depends_on"] == {"torchserve": {"condition": "service_healthy"}}
    assert rollout["restart"] == "unless-stopped"


def _literal_assignments(path: Path, name: str) -> ast.expr:
    for node in ast.parse(path.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(target, ast.Name) and target.id == name for target in targets):
            return node.value
    raise AssertionError(f"{path} assigns no {name}")


def flask_defaults() -> dict[str, object]:
    """serving.flask_app.DEFAULTS's literal entries, read without importing torch."""
    node = _literal_assignments(ROOT / "serving" / "flask_app" / "__init__.py", "DEFAULTS")
    defaults = {}
    for key, value in zip(node.keys, node.values, strict=True):
        try:
            defaults[ast.literal_eval(key)] = ast.literal_eval(value)
        except ValueError:
            continue  # an expression such as 8 * 1024 * 1024
    return defaults


def test_flask_settings_agree_with_compose_dockerfile_and_stack(compose):
    service = compose["services"]["flask"]
    defaults = flask_defaults()
    assert defaults["MODEL_NAME"] == MODEL_NAME == service["environment"]["FLASK_MODEL_NAME"]
    assert defaults["MODEL_BASE_PATH"] == f"models/torch/{MODEL_NAME}"
    mount_target = service["environment"]["FLASK_MODEL_BASE_PATH"]
    assert volumes(service) == {mount_target: (defaults["MODEL_BASE_PATH"], "ro")}
    # The server's default address is the default port on 127.0.0.1; the container binds 0.0.0.0 on the same one.
    assert server.DEFAULT_HOST == "127.0.0.1"
    assert Ports().flask == server.DEFAULT_PORT
    dockerfile = (ROOT / "serving" / "flask_app" / "Dockerfile").read_text()
    command = f'"python", "-m", "serving.flask_app", "--host", "0.0.0.0", "--port", "{Ports().flask}"'
    assert f"CMD [{command}]" in dockerfile
    assert f"FLASK_MODEL_BASE_PATH={mount_target}" in dockerfile
    flask = {spec.name: spec for spec in Stack(models_dir="models").specs()}["flask"]
    assert flask.environment["FLASK_MODEL_BASE_PATH"] == str(ROOT / defaults["MODEL_BASE_PATH"])
    assert flask.command[1:3] == ["-m", "serving.flask_app"]


def test_stack_defaults_are_design_md_ports():
    assert set(Ports().as_dict().values()) == TF_PORTS | TORCHSERVE_PORTS | FLASK_PORTS


def test_makefile_serves_stops_and_shows_logs_through_the_stack():
    makefile = (ROOT / "Makefile").read_text()
    phony = re.search(r"^\.PHONY:(.*)$", makefile, re.MULTILINE).group(1).split()
    for target, command in (("serve", "start"), ("stop", "stop"), ("logs", "logs")):
        assert target in phony
        recipe = re.search(rf"^{target}: setup\n\t(.+)$", makefile, re.MULTILINE)
        assert recipe, f"make {target} must depend on setup"
        assert f"-m serving.stack {command}" in recipe.group(1)


def test_flask_image_installs_only_what_serving_needs_at_the_locked_versions():
    dockerfile = (ROOT / "serving" / "flask_app" / "Dockerfile").read_text()
    # python:3.11-slim unless the build names another base (make test-containers builds on a local Debian one).
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*/readyz", dockerfile, re.MULTILINE | re.DOTALL)
    user = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert user and user[-1] not in {"root", "0"}
    for source in re.findall(r"^COPY (?!--)(.+) \S+$", dockerfile, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"

    def pins(path: Path) -> dict[str, str]:
        result = {}
        for line in path.read_text().splitlines():
            line = line.split("#")[0].strip()
            if line:
                name, version = line.split("==")
                result[name.lower().replace("_", "-")] = version
        return result

    wanted = pins(ROOT / "serving" / "flask_app" / "requirements.txt")
    locked = pins(ROOT / "requirements.lock")
    for package in ("flask", "uvicorn", "httptools", "uvloop", "prometheus-client", "numpy", "onnxruntime"):
        assert package in wanted
    # The image serves model.onnx: no framework at all.
    assert not {"tensorflow", "keras", "tensorflow-serving-api", "torchserve", "torch"} & set(wanted)
    for package, version in wanted.items():
        assert locked.get(package) == version, f"{package} differs from requirements.lock"


def test_dockerignore_sends_only_the_code_the_image_copies():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "*"
    assert {"!experiment/", "!serving/"} <= set(lines)


# The child interpreter below refuses to import any top-level module whose distribution the Flask image does not
# install (the standard library and the project's own packages aside), then imports the modules the image runs:
# the Dockerfile's CMD and the compose roll-out service's command. A module-level import of a package missing from
# the image's requirements (PyYAML once) fails here instead of in a container that restarts forever.
IMAGE_IMPORT_CHECK = """
import importlib, importlib.metadata as metadata, re, sys
allowed = set(sys.argv[1].split(","))
owners = metadata.packages_distributions()

def name(distribution):
    return re.sub(r"[-_.]+", "-", distribution).lower()

class Refuse:
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.partition(".")[0]
        if top in sys.stdlib_module_names or top in ("serving", "experiment") or top not in owners:
            return None
        if not any(name(owner) in allowed for owner in owners[top]):
            raise ImportError(f"{fullname} is imported, but the image installs no distribution of it")
        return None

sys.meta_path.insert(0, Refuse())
for module in sys.argv[2:]:
    importlib.import_module(module)
"""


def test_the_modules_the_flask_image_runs_import_only_what_it_installs(compose):
    requirements = (ROOT / "serving" / "flask_app" / "requirements.txt").read_text().splitlines()
    installed = {
        re.sub(r"[-_.]+", "-", line.split("==")[0]).lower()
        for line in requirements
        if line.strip() and not line.startswith("#")
    }
    dockerfile = (ROOT / "serving" / "flask_app" / "Dockerfile").read_text()
    command = re.search(r'^CMD \["python", "-m", "([\w.]+)"', dockerfile, re.MULTILINE)
    assert command, "the Flask image's CMD must run a module with python -m"
    rollout = compose["services"]["torchserve-rollout"]["command"]
    modules = [command.group(1), rollout[rollout.index("-m") + 1]]
    result = subprocess.run(
        [sys.executable, "-c", IMAGE_IMPORT_CHECK, ",".join(sorted(installed)), *modules],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
