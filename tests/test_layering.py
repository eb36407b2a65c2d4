"""The layers of docs/architecture.md: a framework-free shared package, pipelines apart, serving reads artifacts."""

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



def _imported_modules(path: Path) -> set[str]:
    """Full names of the absolute imports in path (relative ones stay inside their package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from serving import client`
    return names


def _python_files(*places: str) -> list[Path]:
    paths = [ROOT / place for place in places]
    return sorted(file for path in paths for file in ([path] if path.is_file() else path.rglob("*.py")))


def _protocol_may_import(name: str) -> bool:
    """The standard library, NumPy, orjson (a C JSON parser), protobuf and TensorFlow's generated message modules
    (*_pb2), nothing else."""
    top_level = name.split(".")[0]
    if top_level in sys.stdlib_module_names or top_level in ("numpy", "orjson", "google"):
        return top_level != "google" or name.startswith("google.protobuf")
    return name in ("tensorflow.core.framework", "tensorflow.core.protobuf") or (
        name.startswith(("tensorflow.core.framework.", "tensorflow.core.protobuf.")) and name.endswith("_pb2")
    )


def test_protocol_imports_no_server_client_or_framework():
    files = _python_files("serving/protocol")
    assert files, "serving/protocol has no Python files"
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(_imported_modules(path))
        if not _protocol_may_import(name)
    ]
    assert not violations, "\n".join(violations)


def test_protocol_rest_loads_no_framework_so_the_torchserve_archive_can_carry_it():
    code = (
        "import sys, serving.protocol.rest, serving.protocol.errors, serving.protocol.signatures;"
        "print(sorted(name for name in ('tensorflow', 'torch', 'flask', 'grpc', 'google.protobuf') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# The servers answer requests; clients (and what drives servers from outside) are another layer.
SERVERS = ("serving/tfserving", "serving/flask_app", "serving/torchserve/handler.py", "serving/versions.py")
CLIENT_MODULES = ("serving.client", "serving.clients", "serving.torchserve.client", "serving.runtime", "serving.stack")


def test_servers_import_no_client():
    violations = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in _python_files(*SERVERS)
        for name in sorted(_imported_modules(path))
        if name in CLIENT_MODULES or name.startswith(tuple(module + "." for module in CLIENT_MODULES))
        or name == "requests"
    ]
    assert not violations, "\n".join(violations)


# Only serving/runtime starts server processes; everything else (the stack's and the TorchServe launcher's command
# lines, the demo, the tests, the benchmarks) asks it. A call starts a server when it names one of these commands.
SERVER_COMMANDS = ("serving.tfserving", "gunicorn", "torchserve")
SPAWNERS = ("Popen", "run", "call", "check_call", "check_output", "spawnv", "spawnl", "execv", "execl", "fork")
# Modules of serving/ outside the runtime that start a process that is not a server of its own, and why.
OTHER_PROCESSES = {
    "serving/demo.py": "runs the two training entry points",
    "serving/tfserving/workers.py": "the server's own worker processes, as gunicorn's master starts its workers",
}


def _process_calls(path: Path) -> list[ast.Call]:
    """Calls of subprocess's and os's process starters in path."""
    calls = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.split(".")[-1] in SPAWNERS and name.split(".")[0] in ("subprocess", "os", "Popen"):
                calls.append(node)
    return calls


def test_only_the_runtime_starts_processes_in_serving():
    violations = [
        f"{path.relative_to(ROOT)}:{call.lineno} starts a process: {ast.unparse(call.func)}"
        for path in _python_files("serving")
        if "serving/runtime/" not in path.as_posix() and path.relative_to(ROOT).as_posix() not in OTHER_PROCESSES
        for call in _process_calls(path)
    ]
    assert not violations, "\n".join(violations)


def test_tests_and_benchmarks_start_servers_through_the_runtime():
    violations = [
        f"{path.relative_to(ROOT)}:{call.lineno} starts a server itself: {ast.unparse(call)[:120]}"
        for path in _python_files("tests", "benchmarks")
        for call in _process_calls(path)
        if any(command in ast.unparse(call) for command in SERVER_COMMANDS)
    ]
    assert not violations, "\n".join(violations)
