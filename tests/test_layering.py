"""The layers of docs/architecture.md: a framework-free shared package, pipelines apart, serving reads artifacts."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PACKAGES = ("experiment", "tf_pipeline", "torch_pipeline", "serving", "benchmarks", "deploy")


def test_the_import_contracts_hold():
    """The contracts of pyproject.toml's [tool.importlinter]: layers, forbidden imports, independence, no cycles."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def _import_cycles() -> list[list[str]]:
    """Groups of modules that import one another in a circle (Tarjan's strongly connected components)."""
    import grimp

    graph = grimp.build_graph(*PACKAGES, cache_dir=None)  # imports under `if TYPE_CHECKING:` included
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        index[module] = lowest[module] = len(index)
        stack.append(module)
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if imported not in index:
                visit(imported)
                lowest[module] = min(lowest[module], lowest[imported])
            elif imported in stack:
                lowest[module] = min(lowest[module], index[imported])
        if lowest[module] == index[module]:
            component = stack[stack.index(module) :]
            del stack[stack.index(module) :]
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_module_imports_itself_through_others(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    cycles = _import_cycles()
    assert not cycles, "\n".join(" <-> ".join(cycle) for cycle in cycles)


def test_serving_protocol_takes_only_tensorflows_generated_message_modules(monkeypatch):
    """The one import the protocol's contract lets through: protobuf messages (*_pb2), not TensorFlow's runtime."""
    import grimp

    monkeypatch.syspath_prepend(str(ROOT))
    graph = grimp.build_graph("serving", include_external_packages=True, cache_dir=None)
    lines = [
        detail["line_contents"]
        for module in sorted(graph.find_descendants("serving.protocol"))
        for detail in graph.get_import_details(importer=module, imported="tensorflow")
    ]
    pattern = re.compile(r"from tensorflow\.core\.(framework|protobuf) import \w+_pb2(, \w+_pb2)*")
    assert lines, "serving.protocol.tensors converts TensorProto messages"
    assert all(pattern.fullmatch(line) for line in lines), lines


def test_shared_package_loads_no_framework_at_run_time():
    code = (
        "import sys, experiment.data, experiment.config, experiment.artifacts, experiment.metrics, experiment.spec;"
        "experiment.data.load_dataset();"
        "print(sorted(name for name in ('tensorflow', 'keras', 'torch') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def _python_files(*places: str) -> list[Path]:
    paths = [ROOT / place for place in places]
    return sorted(file for path in paths for file in ([path] if path.is_file() else path.rglob("*.py")))


def test_protocol_rest_loads_no_framework_so_the_torchserve_archive_can_carry_it():
    code = (
        "import sys, serving.protocol.rest, serving.protocol.errors, serving.protocol.signatures;"
        "print(sorted(name for name in ('tensorflow', 'torch', 'flask', 'grpc', 'google.protobuf') if name in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# Only serving/runtime starts server processes; everything else (the stack's and the TorchServe launcher's command
# lines, the demo, the tests, the benchmarks) asks it. A call starts a server when it names one of these commands.
SERVER_COMMANDS = ("serving.tfserving", "serving.flask_app", "torchserve")
SPAWNERS = ("Popen", "run", "call", "check_call", "check_output", "spawnv", "spawnl", "execv", "execl", "fork")
# Modules of serving/ outside the runtime that start a process that is not a server of its own, and why.
OTHER_PROCESSES = {
    "serving/demo.py": "runs the two training entry points",
    "serving/frontend/workers.py": "a server's own worker processes, as gunicorn's master starts its workers",
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
