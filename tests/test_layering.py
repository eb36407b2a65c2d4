"""DESIGN.md's layering: the shared package is framework-free, the pipelines ignore each other, serving reads artifacts."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package → top-level modules it must never import
FORBIDDEN = {
    "experiment": {"tensorflow", "keras", "torch", "tf_pipeline", "torch_pipeline", "serving", "benchmarks"},
    "tf_pipeline": {"torch", "torch_pipeline", "serving", "benchmarks"},
    "torch_pipeline": {"tensorflow", "keras", "tf_pipeline", "serving", "benchmarks"},
    "serving": {"tf_pipeline", "torch_pipeline", "benchmarks"},
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_layering(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"{package} has no Python files"
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imported_top_levels(path) & FORBIDDEN[package])
    ]
    assert not violations, "\n".join(violations)


def test_shared_package_loads_no_framework_at_run_time():
    code = (
        "import sys, experiment.data, experiment.config, experiment.artifacts, experiment.metrics, experiment.spec;"
        "experiment.data.load_dataset();"
        "print(sorted(name for name in ('tensorflow', 'keras', 'torch') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
