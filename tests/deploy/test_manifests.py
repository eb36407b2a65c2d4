"""Every manifest under deploy/ passes the Kubernetes API schemas (kubernetes-validate, one pinned version) and the
KServe / Kubeflow schemas in deploy/crds/; a broken one is reported with its file, the path inside it and why."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from deploy import crd_schemas, validate

ROOT = Path(__file__).resolve().parents[2]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.mark.parametrize("path", validate.manifest_files(), ids=_name)
def test_manifest_file_is_valid(path):
    problems = validate.check_file(path)
    assert not problems, "\n".join(map(str, problems))


def test_every_kind_of_manifest_is_covered():
    kinds = {
        document["kind"]
        for path in validate.manifest_files()
        for document in yaml.safe_load_all(path.read_text())
        if document
    }
    expected = {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim", "InferenceService"}
    assert expected | {"PyTorchJob", "TFJob"} <= kinds


@pytest.mark.parametrize("folder", validate.kustomizations(), ids=_name)
def test_kustomization_renders_to_valid_manifests(folder):
    if validate.kubectl() is None:
        # The overlays' own files are still checked one by one above; only their rendered union needs kustomize.
        pytest.skip("kubectl is not installed: its built-in kustomize renders the overlays (no PyPI package does)")
    problems = validate.check_kustomization(folder)
    assert not problems, "\n".join(map(str, problems))


def _write(tmp_path: Path, document: dict) -> Path:
    path = tmp_path / "broken.yaml"
    path.write_text(
        yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "ok"}}, document])
    )
    return path


def _load(relative: str, index: int = 0) -> dict:
    return [document for document in yaml.safe_load_all((ROOT / relative).read_text()) if document][index]


BROKEN = [
    pytest.param(
        "deploy/kubernetes/base/flask.yaml",
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["ports"][0].update(containerPort="5000"),
        "spec.template.spec.containers[0].ports[0].containerPort",
        "'5000' is not of type 'integer'",
        id="Deployment: a port as a string",
    ),
    pytest.param(
        "deploy/kubernetes/base/tf-serving.yaml",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}),
        "spec.template.spec.containers[0]",
        "'readinesProbe' was unexpected",
        id="Deployment: a misspelt field",
    ),
    pytest.param(
        "deploy/kserve/tensorflow.yaml",
        lambda d: d["spec"]["predictor"]["model"].update(storageURI=d["spec"]["predictor"]["model"].pop("storageUri")),
        "spec.predictor.model",
        "'storageURI' was unexpected",
        id="InferenceService: a misspelt field",
    ),
    pytest.param(
        "deploy/kserve/torchserve.yaml",
        lambda d: d["spec"]["predictor"]["model"].pop("modelFormat"),
        "spec.predictor.model",
        "'modelFormat' is a required property",
        id="InferenceService: a required field missing",
    ),
    pytest.param(
        "deploy/training/pytorchjob.yaml",
        lambda d: d["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0].update(image=3),
        "spec.pytorchReplicaSpecs.Worker.template.spec.containers[0].image",
        "3 is not of type 'string'",
        id="PyTorchJob: a wrong type inside the pod template",
    ),
    pytest.param(
        "deploy/training/tfjob.yaml",
        lambda d: d["spec"].update(tfReplicaSpec=d["spec"].pop("tfReplicaSpecs")),
        "spec",
        "'tfReplicaSpecs' is a required property",
        id="TFJob: a misspelt required field",
    ),
]


@pytest.mark.parametrize(("source", "break_it", "path", "reason"), BROKEN)
def test_a_broken_manifest_is_reported_with_file_path_and_reason(tmp_path, source, break_it, path, reason):
    document = _load(source)
    break_it(document)
    problems = validate.check_file(_write(tmp_path, document))
    assert problems, "the broken manifest passed"
    kind, name = document["kind"], document["metadata"]["name"]
    matching = [problem for problem in problems if problem.path == path and reason in problem.reason]
    assert matching, "\n".join(map(str, problems))
    assert str(matching[0]) == f"{tmp_path / 'broken.yaml'}: document 2 ({kind} {name}): {path}: {matching[0].reason}"


def test_unknown_kinds_and_bad_yaml_are_reported(tmp_path):
    unknown = validate.check_text("x.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n")
    assert len(unknown) == 1 and "Widget" in unknown[0].reason and "deploy/crds has no schema" in unknown[0].reason
    broken = validate.check_text("y.yaml", "kind: [unclosed\n")
    assert len(broken) == 1 and broken[0].document == "YAML"


def test_validate_command_passes_on_the_repository(capsys):
    assert validate.main([]) == 0
    assert f"against Kubernetes {validate.KUBERNETES_VERSION}" in capsys.readouterr().out


def test_kubernetes_version_is_pinned_in_one_place():
    # requirements.lock pins kubernetes-validate, which ships the schemas of the pinned Kubernetes version.
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    assert "kubernetes-validate==1.37.0" in lock
    assert crd_schemas.kubernetes_definitions(validate.KUBERNETES_VERSION)


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "crds").glob("*.json")), ids=_name)
def test_vendored_schemas_say_where_they_come_from(path):
    schema = json.loads(path.read_text())
    source = schema["x-generated-from"]
    assert source["package"] in {"kserve", "kubeflow-training"} and "Apache" in source["license"]
    assert source["version"] in (ROOT / "deploy" / "crds" / "README.md").read_text()
    assert source["kubernetes-definitions"] == validate.KUBERNETES_VERSION
    assert "Apache License" in (ROOT / "deploy" / "crds" / "LICENSE").read_text()


FAKE_MODELS = """
class V1DemoJob(object):
    openapi_types = {"api_version": "str", "kind": "str", "metadata": "V1ObjectMeta", "spec": "V1DemoSpec",
                     "status": "object"}
    attribute_map = {"api_version": "apiVersion", "kind": "kind", "metadata": "metadata", "spec": "spec",
                     "status": "status"}


class V1DemoSpec(object):
    openapi_types = {"replicas": "int", "labels": "dict(str, str)", "template": "V1PodTemplateSpec",
                     "steps": "list[V1DemoSpec]"}
    attribute_map = {"replicas": "replicas", "labels": "labels", "template": "template", "steps": "steps"}

    @property
    def template(self):
        return self._template

    @template.setter
    def template(self, template):
        if self.local_vars_configuration.client_side_validation and template is None:  # noqa: E501
            raise ValueError("Invalid value for `template`, must not be `None`")  # noqa: E501
        self._template = template
"""


def test_schemas_are_built_from_sdk_model_classes(tmp_path):
    wheel_path = tmp_path / "demo-1.2.3-py3-none-any.whl"
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.writestr("demo/models/v1_demo_job.py", FAKE_MODELS)
        wheel.writestr("demo-1.2.3.dist-info/METADATA", "Name: demo\nVersion: 1.2.3\nLicense: Apache-2.0\n")
    wheel = crd_schemas.read_wheel(wheel_path)
    assert (wheel.package, wheel.version) == ("demo", "1.2.3")
    assert wheel.models["V1DemoSpec"].required == ("template",)
    resource = crd_schemas.Resource("demo.example.com/v1", "DemoJob", "V1DemoJob", "demo")
    definitions = crd_schemas.kubernetes_definitions(validate.KUBERNETES_VERSION)
    schema = crd_schemas.build_schema(resource, wheel, definitions, validate.KUBERNETES_VERSION)
    assert "status" not in schema["properties"]
    assert schema["properties"]["kind"] == {"const": "DemoJob"}
    spec = schema["$defs"]["V1DemoSpec"]
    assert spec["required"] == ["template"] and spec["additionalProperties"] is False
    assert spec["properties"]["template"] == {
        "$ref": "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.api.core.v1.PodTemplateSpec"
    }
    assert spec["properties"]["steps"] == {"type": "array", "items": {"$ref": "#/$defs/V1DemoSpec"}}
    assert spec["properties"]["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
