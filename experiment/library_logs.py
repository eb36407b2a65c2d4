"""TensorFlow's and absl's C++ logging below warning level kept off the terminal; SHOW_LIBRARY_LOGS=1 brings it back.

TensorFlow honours TF_CPP_MIN_LOG_LEVEL only once its logging is set up. What its shared libraries write while
`import tensorflow` loads them (absl's "All log messages before absl::InitializeLog() is called ..." banner, the
oneDNN and CUDA-stub notes) ignores the variable, and on a machine without a GPU the first look for one logs a failed
cuInit as an error although nothing is wrong. So `quiet()`, called first thing by every entry point of the project,
sets TF_CPP_MIN_LOG_LEVEL=2 (unless the user set it) and sets aside what the first `import tensorflow` and that first
look for GPUs write to stderr; it then writes back every line except absl's info lines, the banner and the failed
cuInit. Python's own warnings and exceptions are not touched.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import tempfile
from types import ModuleType
from typing import Iterator, Sequence

SHOW_VARIABLE = "SHOW_LIBRARY_LOGS"
QUIET_LEVEL = "2"  # TF_CPP_MIN_LOG_LEVEL: 1 drops INFO, 2 also WARNING, 3 also ERROR

# absl's and TensorFlow's C++ log line: severity letter, MMDD, time, thread id, file:line], message.
_LOG_LINE = re.compile(r"^(?P<severity>[IWEF])\d{4} [\d:.]+\s+\d+\s+\S+:\d+\] (?P<message>.*)$")
_ABSL_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def showing_library_logs(environment: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """True when the user asked for the libraries' own logs (SHOW_LIBRARY_LOGS=1)."""
    return environment.get(SHOW_VARIABLE, "").strip().lower() in ("1", "true", "yes")


def quiet_environment(environment: dict[str, str]) -> dict[str, str]:
    """environment with TensorFlow's C++ log level set for a child process, unless the user chose one or asked for logs."""
    if not showing_library_logs(environment):
        environment.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    return environment


def quiet() -> None:
    """Keep the libraries' start-up logging below warning off stderr in this process (SHOW_LIBRARY_LOGS=1: do nothing).

    Call before anything imports TensorFlow; calling again, or after TensorFlow was imported, changes nothing more.
    """
    if showing_library_logs():
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", QUIET_LEVEL)
    if "tensorflow" in sys.modules or any(isinstance(finder, _QuietTensorFlowImport) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, _QuietTensorFlowImport())


def worth_showing(lines: Sequence[str]) -> list[str]:
    """The lines of a start-up's stderr a user needs: all but absl's info lines, its banner and a failed cuInit."""
    kept = []
    dropping = False  # a dropped log line's continuation lines go with it
    for line in lines:
        match = _LOG_LINE.match(line)
        if match:
            dropping = match["severity"] == "I" or (match["severity"] == "E" and "cuInit" in match["message"])
        elif line.rstrip("\n") == _ABSL_BANNER:
            dropping = True
            continue
        elif not line.strip():
            dropping = False
        if not dropping:
            kept.append(line)
    return kept


@contextlib.contextmanager
def _stderr_set_aside() -> Iterator[None]:
    """Point file descriptor 2 at a temporary file while the block runs, then write back what is worth showing."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            sys.stderr.write("".join(worth_showing(text.splitlines(keepends=True))))
            sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` with stderr set aside, and looks for GPUs once while it still is."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        # The module keeps the real loader, as if this one had never been there.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        with _stderr_set_aside():
            self._loader.exec_module(module)
            # The first look for GPUs is where a machine without one logs its failed cuInit.
            module.config.list_physical_devices("GPU")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` the usual way, once, and hands it to _QuietLoader."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec: importlib.machinery.ModuleSpec | None = find_spec(fullname, path, target) if find_spec else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None
