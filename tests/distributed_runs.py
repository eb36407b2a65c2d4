"""Helpers for the two-process tests: run a launcher, find one of its workers, hold a port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

REPOSITORY_ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, arguments: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run `python -m module arguments` from the repository root and capture its output."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=REPOSITORY_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def start_module(module: str, arguments: list[str]) -> subprocess.Popen:
    """Start `python -m module arguments` from the repository root, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *arguments],
        cwd=REPOSITORY_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


def wait_for_descendant(
    parent: subprocess.Popen, matches: Callable[[psutil.Process], bool], timeout: float
) -> psutil.Process:
    """The first descendant process of parent for which matches() holds, polled until timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if parent.poll() is not None:
            stderr = parent.communicate()[1]
            raise AssertionError(f"the launcher exited early with {parent.returncode}: {stderr[-2000:]}")
        for child in psutil.Process(parent.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if matches(child):
                    return child
        time.sleep(0.2)
    raise AssertionError("the worker process never appeared")


def wait_for_file(directory: Path, pattern: str, timeout: float) -> None:
    """Poll until a file matching pattern exists under directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(directory.glob(pattern)):
            return
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} under {directory} after {timeout} s")


@contextlib.contextmanager
def port_in_use() -> Iterator[int]:
    """A port some other program is listening on for the duration of the block."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def version_folders(models: Path) -> list[Path]:
    """Every folder under models/ that a server could take for a version or a half-written export."""
    if not models.exists():
        return []
    return [path for path in models.rglob("*") if path.is_dir() and (path.name.isdigit() or path.name.startswith("."))]
