"""Small stand-ins for the servers: a plain HTTP server with a child "worker", and process-tree checks.

They let the runtime's supervision (ready probes, pid files, stopping every process) be tested in seconds.
"""

from __future__ import annotations

import sys
import textwrap
import urllib.request
from pathlib import Path

import psutil

from serving.runtime import Endpoint, Example, ServerSpec, free_port

STUB_SERVER = textwrap.dedent(
    """
    import http.server, signal, subprocess, sys, time

    port, mode, delay = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    if mode == "crash":
        print("boom: no model under /nowhere", flush=True)
        sys.exit(3)
    if mode == "stubborn":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the worker below
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    ready_at = time.monotonic() + delay

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            ready = mode != "never" and time.monotonic() >= ready_at
            self.send_response(200 if ready else 503)
            self.end_headers()

        def log_message(self, *args):
            pass

    print(f"stub {mode} listening on {port}, worker {worker.pid}", flush=True)
    http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def http_ok(url: str) -> bool:
    """Whether GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def stub_spec(script: Path, name: str, mode: str = "ok", delay: float = 0.0, port: int | None = None) -> ServerSpec:
    """A spec for the stub server: mode ok | crash | never (never ready) | stubborn (ignores SIGTERM)."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}/"
    return ServerSpec(
        name=name,
        title=f"stub server ({mode})",
        command=[sys.executable, str(script), str(port), mode, str(delay)],
        ports={"HTTP": port},
        is_ready=lambda: http_ok(url),
        endpoints=[Endpoint(f"{name}-http", name, "stub", "none", "REST", url, "digits", lambda model, timeout: None)],
        examples=[Example(f"{name} HTTP", "REST", url, f"curl {url}")],
    )


def tree(pid: int) -> list[psutil.Process]:
    """A process and its descendants."""
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def gone(processes: list[psutil.Process]) -> bool:
    """Whether every process has exited (a zombie counts as exited)."""
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def leftovers(script: Path) -> list[int]:
    """Processes still running the stub script."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(script) in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found
