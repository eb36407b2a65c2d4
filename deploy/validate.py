"""Check every manifest under deploy/ against the Kubernetes API schemas and the KServe / Kubeflow CRD schemas.

    python -m deploy.validate            # every file, and every kustomize overlay rendered with kubectl kustomize

Built-in kinds (Deployment, Service, HorizontalPodAutoscaler, ...) are checked with kubernetes-validate's strict
schemas for KUBERNETES_VERSION; InferenceService, PyTorchJob and TFJob with the schemas in deploy/crds/ (built from
the projects' SDK models by deploy.crd_schemas). Each problem is reported as one line: the file, the document in
it, the path inside the document and the reason.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

PROG = "python -m deploy.validate"
# The one Kubernetes version the manifests are written for and checked against.
KUBERNETES_VERSION = "1.34"
DEPLOY = Path(__file__).resolve().parent
REPOSITORY_ROOT = DEPLOY.parent
CRD_DIRECTORY = DEPLOY / "crds"


@dataclasses.dataclass(frozen=True)
class ManifestError:
    """One schema violation: where (file, document, path in the document) and why."""

    file: str
    document: str  # "document 2 (Deployment flask)"
    path: str  # "spec.template.spec.containers[0].ports[0].containerPort", or "(document root)"
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.document}: {self.path}: {self.reason}"


def manifest_files() -> list[Path]:
    """Every manifest file under deploy/: the resources the kustomizations list (their patches are checked in the
    rendered output), and every YAML file of the KServe and training folders."""
    files = []
    for kustomization in sorted((DEPLOY / "kubernetes").rglob("kustomization.yaml")):
        for entry in (yaml.safe_load(kustomization.read_text()) or {}).get("resources", []):
            path = (kustomization.parent / entry).resolve()
            if path.is_file():
                files.append(path)
    for folder in ("kserve", "training"):
        files += sorted((DEPLOY / folder).rglob("*.yaml"))
    return files


def kustomizations() -> list[Path]:
    """Every folder kustomize can build (the base and each overlay)."""
    return sorted(path.parent for path in (DEPLOY / "kubernetes").rglob("kustomization.yaml"))


def kubectl() -> str | None:
    """The kubectl executable (its built-in kustomize renders the overlays), or None."""
    return shutil.which("kubectl")


def render_kustomization(folder: Path) -> str:
    """`kubectl kustomize folder`'s output; a kustomize error raises ValueError with its message."""
    executable = kubectl()
    if executable is None:
        raise FileNotFoundError("kubectl is not installed")
    completed = subprocess.run([executable, "kustomize", str(folder)], capture_output=True, text=True, timeout=60)
    if completed.returncode != 0:
        raise ValueError(completed.stderr.strip() or f"kubectl kustomize exited with {completed.returncode}")
    return completed.stdout


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the vendored schema of that custom resource."""
    schemas = {}
    for path in sorted(CRD_DIRECTORY.glob("*.json")):
        schema = json.loads(path.read_text())
        kind = schema["x-kubernetes-group-version-kind"]
        schemas[(kind["apiVersion"], kind["kind"])] = schema
    return schemas


@functools.cache
def _crd_validator(api_version: str, kind: str) -> Any:
    from importlib import resources

    import jsonschema
    import referencing

    folder = resources.files("kubernetes_validate").joinpath(
        "kubernetes-json-schema", f"v{KUBERNETES_VERSION}.0-local-strict"
    )
    definitions = json.loads(folder.joinpath("_definitions.json").read_text())
    registry = referencing.Registry().with_resource(definitions["$id"], referencing.Resource.from_contents(definitions))
    return jsonschema.Draft202012Validator(crd_schemas()[(api_version, kind)], registry=registry)


def document_path(parts: Sequence[Any]) -> str:
    """['spec', 'containers', 0, 'image'] → 'spec.containers[0].image'."""
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(document root)"


def check_document(document: Any) -> list[tuple[str, str]]:
    """(path, reason) for each problem of one parsed document; empty when it is valid."""
    import kubernetes_validate

    if not isinstance(document, dict) or not isinstance(document.get("apiVersion"), str) or not document.get("kind"):
        return [("(document root)", "not a Kubernetes object: apiVersion and kind are missing")]
    key = (document["apiVersion"], document["kind"])
    if key in crd_schemas():
        errors = sorted(_crd_validator(*key).iter_errors(document), key=lambda error: list(error.absolute_path))
        return [(document_path(error.absolute_path), error.message) for error in errors]
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [(document_path(error.absolute_path), error.message)]
    except kubernetes_validate.SchemaNotFoundError as error:
        return [("(document root)", f"{error.message}, and deploy/crds has no schema for it")]
    return []


def _describe(index: int, document: Any) -> str:
    if isinstance(document, dict):
        name = (document.get("metadata") or {}).get("name", "?")
        return f"document {index + 1} ({document.get('kind', '?')} {name})"
    return f"document {index + 1}"


def check_text(source: str, text: str) -> list[ManifestError]:
    """Every problem in a multi-document YAML text; source names it in the messages."""
    try:
        documents = [document for document in yaml.safe_load_all(text) if document is not None]
    except yaml.YAMLError as error:
        return [ManifestError(source, "YAML", "(file)", str(error).replace("\n", " "))]
    if not documents:
        return [ManifestError(source, "YAML", "(file)", "no Kubernetes object in the file")]
    return [
        ManifestError(source, _describe(index, document), path, reason)
        for index, document in enumerate(documents)
        for path, reason in check_document(document)
    ]


def check_file(path: Path) -> list[ManifestError]:
    """Every problem in one manifest file."""
    return check_text(_relative(path), Path(path).read_text())


def check_kustomization(folder: Path) -> list[ManifestError]:
    """Render a kustomization and check what it produces."""
    source = f"{_relative(folder)} (kubectl kustomize)"
    try:
        rendered = render_kustomization(folder)
    except ValueError as error:
        return [ManifestError(source, "kustomize", "(build)", str(error).splitlines()[0])]
    return check_text(source, rendered)


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPOSITORY_ROOT)) if path.is_relative_to(REPOSITORY_ROOT) else str(path)


def check_all() -> Iterator[ManifestError]:
    """Every problem in every manifest file and, when kubectl is installed, every rendered kustomization."""
    for path in manifest_files():
        yield from check_file(path)
    if kubectl() is not None:
        for folder in kustomizations():
            yield from check_kustomization(folder)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: exit 0 when every manifest is valid, 1 with one line per problem otherwise."""
    if argv:
        print(f"{PROG}: error: no arguments expected, got {' '.join(argv)}", file=sys.stderr)
        return 2
    problems = list(check_all())
    for problem in problems:
        print(problem, file=sys.stderr)
    checked = len(manifest_files())
    overlays = "kustomizations rendered" if kubectl() else "kustomizations NOT rendered (kubectl is not installed)"
    print(
        f"{checked} manifest files checked against Kubernetes {KUBERNETES_VERSION}, {overlays}: "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
