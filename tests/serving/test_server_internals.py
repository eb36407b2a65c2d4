"""The servers use their HTTP libraries through public settings only: no subclass of a server library's class, no
private attribute (`obj._name`) in a file that imports one, no private name imported from one, no reading of /proc.

No file is excused (KNOWN is empty): the front end's limits and deadlines live in the project's own ASGI bridge
(serving/frontend/asgi.py), and what uvicorn cannot do is documented as its behaviour.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SERVER_LIBRARIES = (
    "gunicorn",
    "uvicorn",
    "gevent",
    "granian",
    "hypercorn",
    "httptools",
    "uvloop",
    "h11",
    "werkzeug.serving",
)
KNOWN: set[str] = set()  # files allowed to break the rule: none


def _from_server_library(module: str) -> bool:
    return any(module == library or module.startswith(library + ".") for library in SERVER_LIBRARIES)


def violations(source: str) -> list[str]:
    """What a module's source does against the rule, one line each."""
    tree = ast.parse(source)
    imported: set[str] = set()  # local names bound to a server library or something from one
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _from_server_library(alias.name):
                    imported.add((alias.asname or alias.name).split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and _from_server_library(node.module):
            for alias in node.names:
                imported.add(alias.asname or alias.name)
                if alias.name.startswith("_"):
                    found.append(f"line {node.lineno}: imports the private {node.module}.{alias.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in imported:
                    found.append(f"line {node.lineno}: class {node.name} subclasses {ast.unparse(base)}")
        elif isinstance(node, ast.Attribute) and imported:
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if private and owner not in ("self", "cls"):
                found.append(f"line {node.lineno}: uses the private attribute {ast.unparse(node)}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and "/proc/" in node.value:
            found.append(f"line {node.lineno}: reads /proc ({node.value[:40]!r})")
    return found


def test_the_checker_finds_each_kind_of_violation():
    source = (
        "import uvicorn\nfrom gunicorn.workers import ggevent as g\nfrom gunicorn.http import _private\n"
        "class P(uvicorn.protocols.http.httptools_impl.HttpToolsProtocol): pass\nclass W(g.GeventWorker): pass\n"
        "def f(server):\n    server._sockets.clear()\n    return open('/proc/self/fd/3')\n"
    )
    found = violations(source)
    assert sorted(line.split(": ", 1)[1] for line in found) == [
        "class P subclasses uvicorn.protocols.http.httptools_impl.HttpToolsProtocol",
        "class W subclasses g.GeventWorker",
        "imports the private gunicorn.http._private",
        "reads /proc ('/proc/self/fd/3')",
        "uses the private attribute server._sockets",
    ]
    assert violations("import uvicorn\nclass Config:\n    def f(self):\n        return self._x\n") == []


def test_no_server_file_uses_a_server_librarys_internals():
    found = {}
    for path in sorted((ROOT / "serving").rglob("*.py")):
        relative = path.relative_to(ROOT).as_posix()
        problems = violations(path.read_text(encoding="utf-8"))
        if problems:
            found[relative] = problems
    unexpected = {path: problems for path, problems in found.items() if path not in KNOWN}
    assert not unexpected, "\n".join(
        f"{path}: {problem}" for path, problems in unexpected.items() for problem in problems
    )
    resolved = sorted(path for path in KNOWN if path not in found)
    assert not resolved, f"{resolved} no longer use a server library's internals: take them out of KNOWN"
