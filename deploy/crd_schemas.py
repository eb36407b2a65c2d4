"""Build JSON schemas for the KServe and Kubeflow training-operator resources from their Python SDKs' models.

    pip download --no-deps -d /tmp/sdks kserve==0.21.0 kubeflow-training==1.9.4
    python -m deploy.crd_schemas /tmp/sdks/kserve-0.21.0-py3-none-any.whl \\
        /tmp/sdks/kubeflow_training-1.9.4-py3-none-any.whl

The SDKs are generated from each project's OpenAPI definitions: every model class lists its fields
(`openapi_types`, `attribute_map`) and refuses a missing required field in its setter. This reads those classes
from the wheel's source with `ast`, without importing or installing the SDK (the KServe SDK pulls in a model server
and pins protobuf), and writes one schema per resource into deploy/crds/. Fields typed with a Kubernetes API type
(V1PodSpec's containers, V1ObjectMeta, ...) refer to kubernetes-validate's definitions for the Kubernetes version
deploy.validate pins, so a PyTorchJob's pod template is checked exactly like a Deployment's. Every object is closed
(additionalProperties false), so a misspelt field is an error, as `kubectl apply --validate=strict` would make it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import email.parser
import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiment.cli import run_main
from experiment.errors import UsageError

PROG = "python -m deploy.crd_schemas"
CRD_DIRECTORY = Path(__file__).resolve().parent / "crds"
DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"


@dataclasses.dataclass(frozen=True)
class Resource:
    """One custom resource kind and the SDK class that models it."""

    api_version: str
    kind: str
    model: str
    package: str  # the distribution whose wheel holds the model

    @property
    def file_name(self) -> str:
        group, version = self.api_version.split("/")
        return f"{group}_{version}_{self.kind.lower()}.json"


RESOURCES = (
    Resource("serving.kserve.io/v1beta1", "InferenceService", "V1beta1InferenceService", "kserve"),
    Resource("kubeflow.org/v1", "PyTorchJob", "KubeflowOrgV1PyTorchJob", "kubeflow-training"),
    Resource("kubeflow.org/v1", "TFJob", "KubeflowOrgV1TFJob", "kubeflow-training"),
)

PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "datetime": {"type": "string"},
    "date": {"type": "string"},
    "object": {},
}
# SDK names for Kubernetes types whose definition name does not follow from the SDK name.
KUBERNETES_ALIASES = {
    "ResourceQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "Quantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",
    "V1beta1MetricQuantity": "io.k8s.apimachinery.pkg.api.resource.Quantity",  # KServe's alias, no model class
    "V1Time": "io.k8s.apimachinery.pkg.apis.meta.v1.Time",
}
# Where a short SDK name (V1Container) matches several API groups, the first of these prefixes wins.
GROUP_PREFERENCE = ("io.k8s.api.core.", "io.k8s.apimachinery.pkg.apis.meta.", "io.k8s.api.")


@dataclasses.dataclass(frozen=True)
class Model:
    """An SDK model class: JSON field name → SDK type, and the required JSON field names."""

    fields: dict[str, str]
    required: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Wheel:
    """The model classes of one SDK wheel, and the wheel's name, version and licence."""

    package: str
    version: str
    license: str
    models: dict[str, Model]


def read_wheel(path: Path) -> Wheel:
    """Parse every `models/*.py` of an SDK wheel into Model entries."""
    models: dict[str, Model] = {}
    with zipfile.ZipFile(path) as archive:
        metadata_name = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
        for name in archive.namelist():
            if re.search(r"/models/[a-z0-9_]+\.py$", name) and not name.endswith("__init__.py"):
                models.update(_models_in(archive.read(name).decode()))
    return Wheel(metadata["Name"], metadata["Version"], metadata.get("License", "") or "", models)


def _models_in(source: str) -> dict[str, Model]:
    found = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        assignments = {
            target.id: statement.value
            for statement in node.body
            if isinstance(statement, ast.Assign)
            for target in statement.targets
            if isinstance(target, ast.Name)
        }
        if "openapi_types" not in assignments or "attribute_map" not in assignments:
            continue
        types = ast.literal_eval(assignments["openapi_types"])
        json_names = ast.literal_eval(assignments["attribute_map"])
        class_source = ast.get_source_segment(source, node) or ""
        # The generator's setters refuse None for exactly the required fields.
        required = tuple(
            json_names[attribute]
            for attribute in types
            if f"Invalid value for `{attribute}`, must not be `None`" in class_source
        )
        found[node.name] = Model({json_names[attribute]: types[attribute] for attribute in types}, required)
    return found


class SchemaBuilder:
    """Turns SDK types into JSON Schema, collecting SDK models in $defs and referring to Kubernetes definitions."""

    def __init__(self, models: dict[str, Model], kubernetes_definitions: dict[str, Any], kubernetes_version: str):
        self.models = models
        self.kubernetes_definitions = kubernetes_definitions
        self.kubernetes_version = kubernetes_version
        self.definitions: dict[str, Any] = {}

    def schema_for(self, sdk_type: str) -> dict[str, Any]:
        """The schema of one SDK type string: 'str', 'list[V1Container]', 'dict(str, str)', a model name."""
        if sdk_type in PRIMITIVES:
            return dict(PRIMITIVES[sdk_type])
        if match := re.fullmatch(r"list\[(.+)\]", sdk_type):
            return {"type": "array", "items": self.schema_for(match.group(1))}
        if match := re.fullmatch(r"dict\(str, (.+)\)", sdk_type):
            return {"type": "object", "additionalProperties": self.schema_for(match.group(1))}
        if sdk_type in self.models:
            if sdk_type not in self.definitions:
                self.definitions[sdk_type] = {}  # placeholder: a model may refer to itself
                self.definitions[sdk_type] = self.object_schema(self.models[sdk_type])
            return {"$ref": f"#/$defs/{sdk_type}"}
        return self.kubernetes_reference(sdk_type)

    def object_schema(self, model: Model, leave_out: Sequence[str] = ()) -> dict[str, Any]:
        """A closed object with the model's fields (minus leave_out) and its required ones."""
        properties = {
            name: self.schema_for(sdk_type) for name, sdk_type in model.fields.items() if name not in leave_out
        }
        schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
        required = [name for name in model.required if name not in leave_out]
        if required:
            schema["required"] = required
        return schema

    def kubernetes_reference(self, sdk_type: str) -> dict[str, Any]:
        """A $ref to the Kubernetes definition an SDK name such as V1Container or K8sIoApiAppsV1DeploymentStrategy
        stands for; a type this Kubernetes version lacks matches nothing."""
        name = KUBERNETES_ALIASES.get(sdk_type) or self._definition_name(sdk_type)
        if name is None:
            return {"not": {}, "description": f"{sdk_type} is not part of Kubernetes {self.kubernetes_version}"}
        return {"$ref": f"{DEFINITIONS_ID}#/$defs/{name}"}

    def _definition_name(self, sdk_type: str) -> str | None:
        if sdk_type.startswith("K8sIo"):  # the Go import path, camel-cased: K8sIoApiAppsV1DeploymentStrategy
            wanted = "iok8s" + sdk_type.removeprefix("K8sIo").lower()  # io.k8s.api.apps.v1.DeploymentStrategy
            return next((key for key in self.kubernetes_definitions if key.replace(".", "").lower() == wanted), None)
        match = re.fullmatch(r"(V\d+(?:alpha\d+|beta\d+)?)([A-Z]\w*)", sdk_type)
        if not match:
            raise UsageError(f"The SDK type {sdk_type} is neither a model of the wheels given nor a Kubernetes type.")
        suffix = f".{match.group(1).lower()}.{match.group(2)}"
        candidates = [key for key in self.kubernetes_definitions if key.endswith(suffix)]
        for prefix in GROUP_PREFERENCE:
            preferred = [key for key in candidates if key.startswith(prefix)]
            if len(preferred) == 1:
                return preferred[0]
            if len(preferred) > 1:
                raise UsageError(f"The SDK type {sdk_type} matches several Kubernetes types: {', '.join(preferred)}.")
        return None


def build_schema(resource: Resource, wheel: Wheel, definitions: dict[str, Any], kubernetes_version: str) -> dict:
    """The JSON schema of one resource (apiVersion and kind fixed, status left out: manifests do not set it)."""
    builder = SchemaBuilder(wheel.models, definitions, kubernetes_version)
    root = builder.object_schema(wheel.models[resource.model], leave_out=("status",))
    root["properties"]["apiVersion"] = {"const": resource.api_version}
    root["properties"]["kind"] = {"const": resource.kind}
    root["required"] = sorted({"apiVersion", "kind", "metadata", *root.get("required", [])})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://kubernetes.io/crds/{resource.file_name}",
        "x-generated-from": {
            "package": wheel.package,
            "version": wheel.version,
            "license": wheel.license,
            "model": resource.model,
            "kubernetes-definitions": kubernetes_version,
            "generator": PROG,
        },
        "x-kubernetes-group-version-kind": {"apiVersion": resource.api_version, "kind": resource.kind},
        **root,
        "$defs": dict(sorted(builder.definitions.items())),
    }


def kubernetes_definitions(kubernetes_version: str) -> dict[str, Any]:
    """kubernetes-validate's strict definitions for one Kubernetes version ('1.34')."""
    from importlib import resources

    folder = resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{kubernetes_version}.0-local-strict"
    )
    return json.loads(folder.joinpath("_definitions.json").read_text())["$defs"]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    from deploy.validate import KUBERNETES_VERSION

    parser = argparse.ArgumentParser(prog=PROG, description="Build deploy/crds/*.json from SDK wheels.")
    parser.add_argument("wheels", nargs="+", type=Path, help="the kserve and kubeflow-training wheels")
    parser.add_argument(
        "--output", type=Path, default=CRD_DIRECTORY, help="where the schemas go (default: deploy/crds)"
    )
    arguments = parser.parse_args(argv)

    def body() -> int:
        wheels = {}
        for path in arguments.wheels:
            if not path.is_file():
                raise UsageError(f"{path} is not a file; download the SDK wheels with pip download first.")
            wheel = read_wheel(path)
            wheels[wheel.package] = wheel
        definitions = kubernetes_definitions(KUBERNETES_VERSION)
        arguments.output.mkdir(parents=True, exist_ok=True)
        for resource in RESOURCES:
            if resource.package not in wheels:
                raise UsageError(f"No {resource.package} wheel given; it models {resource.kind}.")
            schema = build_schema(resource, wheels[resource.package], definitions, KUBERNETES_VERSION)
            target = arguments.output / resource.file_name
            target.write_text(json.dumps(schema, indent=1, sort_keys=False) + "\n")
            print(f"{target}: {resource.kind} from {resource.package} {wheels[resource.package].version}")
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
