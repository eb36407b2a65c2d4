"""A managed server process: its own process group, a log file, a pid file, a ready probe and a graceful stop.

Every server the project starts (the stack, a lone TorchServe, the demo, the tests, the benchmarks) runs through
`ServerProcess`. A process started by one command can be found and stopped by another through its pid file.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from serving.runtime.spec import PROJECT_ROOT, ServerError, ServerSpec, display_path

# The Flask server's --graceful-seconds is 20 s; an idle server exits in well under a second.
STOP_GRACE_SECONDS = 20.0
LOG_TAIL_LINES = 20
POLL_INTERVAL_SECONDS = 0.25
# Exceptions a ready probe may raise while its server is still coming up (not listening, routes not yet there).
NOT_YET = (OSError, ValueError, KeyError, TypeError, AttributeError)

Report = Callable[[str], None]


def _quiet(line: str) -> None:
    """A report that prints nothing."""


class ServerProcess:
    """One running server: the leader of its own process group, its log file and (optionally) its pid file."""

    def __init__(
        self,
        spec: ServerSpec,
        leader: psutil.Process,
        log_path: Path,
        pid_path: Path | None = None,
        popen: subprocess.Popen | None = None,
    ) -> None:
        self.spec = spec
        self.leader = leader
        self.log_path = Path(log_path)
        self.pid_path = Path(pid_path) if pid_path is not None else None
        self.popen = popen  # set when this process started it: the only way to learn its exit status
        self.launched_at = time.monotonic()  # for a found server: when it was found

    # -- start and find ---------------------------------------------------------------------------------------

    @classmethod
    def launch(cls, spec: ServerSpec, log_path: Path, pid_path: Path | None = None) -> ServerProcess:
        """Start spec's command in a new session, its output appended to log_path; do not wait for readiness."""
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(spec.command)}\n".encode())
            log.flush()
            try:
                popen = subprocess.Popen(
                    spec.command,
                    cwd=spec.working_directory,
                    env=process_environment(spec.environment),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Its own session and process group: Ctrl-C in the terminal reaches only the orchestrator,
                    # which stops the servers in order, and a stop can signal the whole group at once.
                    start_new_session=True,
                )
            except OSError as error:
                raise ServerError(f"Cannot start {spec.name} ({spec.command[0]}): {error.strerror}.") from None
        if pid_path is not None:
            Path(pid_path).parent.mkdir(parents=True, exist_ok=True)
            Path(pid_path).write_text(f"{popen.pid}\n")
        return cls(spec, psutil.Process(popen.pid), log_path, pid_path, popen)

    @classmethod
    def find(cls, spec: ServerSpec, pid_path: Path, log_path: Path) -> ServerProcess | None:
        """The server a pid file names, when that process still runs (None for a stale or missing file)."""
        leader = read_pid_file(Path(pid_path))
        return cls(spec, leader, log_path, pid_path) if leader is not None else None

    # -- state ------------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The spec's name: tfserving, flask, torchserve."""
        return self.spec.name

    @property
    def pid(self) -> int:
        """The process group leader's pid."""
        pid: int = self.leader.pid
        return pid

    def exit_status(self) -> int | None:
        """The exit status once a server this process started has exited; None while it runs (or if not ours)."""
        return self.popen.poll() if self.popen is not None else None

    def is_running(self) -> bool:
        """Whether the leader still runs."""
        if self.popen is not None and self.popen.poll() is not None:
            return False
        return is_alive(self.leader)

    def is_ready(self) -> bool:
        """The spec's ready probe; a probe that fails because the server is still starting counts as not ready."""
        try:
            return bool(self.spec.is_ready())
        except NOT_YET:
            return False

    def log(self) -> str:
        """Everything the server wrote to its log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines of the server's log."""
        return tail(self.log_path, lines)

    # -- waiting ----------------------------------------------------------------------------------------------

    def wait_until_ready(self, timeout: float) -> float:
        """Block until the ready probe passes; the seconds it took. ServerError if it exits or times out first."""
        return wait_until_ready([self], timeout)[self.name]

    def send_signal(self, number: int) -> None:
        """Send a signal to the leader alone (the server's own handling decides what its children do)."""
        self.leader.send_signal(number)

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the leader to exit; its exit status when this process started it. TimeoutExpired otherwise."""
        if self.popen is not None:
            return self.popen.wait(timeout)
        limit = timeout if timeout is not None else 1e9
        if wait_until_gone([self.leader], limit):
            raise subprocess.TimeoutExpired(self.spec.command, limit)
        return None

    # -- stopping ---------------------------------------------------------------------------------------------

    def stop(self, grace: float = STOP_GRACE_SECONDS, report: Report = _quiet) -> int | None:
        """Stop the server and everything it started (see `stop_all`); its exit status when this process started it."""
        stop_all([self], grace, report)
        return self.exit_status()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()


def start(spec: ServerSpec, log_path: Path, timeout: float, pid_path: Path | None = None) -> ServerProcess:
    """Prepare, launch and wait until ready; on any failure the server is stopped again before the error is raised."""
    if spec.prepare is not None:
        spec.prepare()
    server = ServerProcess.launch(spec, log_path, pid_path)
    try:
        server.wait_until_ready(timeout)
    except BaseException:
        server.stop()
        raise
    return server


def process_environment(extra: Mapping[str, str | None]) -> dict[str, str]:
    """This process's environment for a server: the checkout importable, output unbuffered, extra on top.

    An extra value of None removes the variable.
    """
    environment = dict(os.environ)
    # The servers import `serving` and `experiment` from this checkout, whatever folder they run in.
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), environment.get("PYTHONPATH")]))
    environment["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they happen
    for name, value in extra.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    return environment


def wait_until_ready(
    servers: Sequence[ServerProcess], timeout: float, on_ready: Callable[[ServerProcess, float], None] | None = None
) -> dict[str, float]:
    """Poll every server's ready probe until all pass; the seconds each took since it was launched.

    ServerError naming the server and showing its log's last lines when one exits or is not ready in time.
    """
    began = time.monotonic()
    pending = list(servers)
    seconds: dict[str, float] = {}
    while pending:
        for server in list(pending):
            exit_status = server.exit_status()
            if exit_status is not None:
                raise ServerError(
                    f"{server.name} exited with status {exit_status} before its model was ready; "
                    f"last lines of {display_path(server.log_path)}:\n{server.log_tail()}"
                )
            if server.is_ready():
                seconds[server.name] = time.monotonic() - server.launched_at
                pending.remove(server)
                if on_ready is not None:
                    on_ready(server, seconds[server.name])
        if pending and time.monotonic() - began > timeout:
            server = pending[0]
            raise ServerError(
                f"{server.name} did not report its model ready within {timeout:.0f} s; "
                f"last lines of {display_path(server.log_path)}:\n{server.log_tail()}"
            )
        if pending:
            time.sleep(POLL_INTERVAL_SECONDS)
    return seconds


def stop_all(servers: Sequence[ServerProcess], grace: float = STOP_GRACE_SECONDS, report: Report = _quiet) -> list[str]:
    """Stop the servers together, their children included; the names of those that were running.

    Each gets its own way of stopping first (its stop command, else SIGTERM to its process group); whatever still
    runs after grace seconds gets SIGTERM, then SIGKILL. Pid files and the spec's leftover files are removed.
    """
    running = [server for server in servers if server.is_running()]
    # Collected before any signal: once a leader exits, its children are re-parented and harder to find.
    members = {server.name: process_tree(server.leader) for server in running}
    for server in running:
        report(f"Stopping {server.name} ({describe_process(server.leader)})")
        if server.spec.stop_command:
            _run_stop_command(server.spec, server.spec.stop_command)  # the server's own way first (TorchServe: --stop)
        else:
            _terminate(members[server.name], server.leader)
    everything = [member for group in members.values() for member in group]
    alive = wait_until_gone(everything, grace)
    if alive:
        # Whatever the server's own stop left running (a launcher, a worker) gets SIGTERM, then SIGKILL.
        for member in alive:
            with contextlib.suppress(psutil.Error):
                member.terminate()
        alive = wait_until_gone(alive, min(5.0, grace))
    for member in alive:
        report(f"Killing {describe_process(member)}, still running after SIGTERM")
        with contextlib.suppress(psutil.Error):
            member.kill()
    wait_until_gone(alive, 5.0)
    for server in servers:
        if server.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.popen.wait(timeout=1)  # reap our own children so no zombie outlives the server
        if server.pid_path is not None:
            server.pid_path.unlink(missing_ok=True)
        for path in server.spec.remove_after_stop:
            Path(path).unlink(missing_ok=True)
    return [server.name for server in running]


def _terminate(members: list[psutil.Process], leader: psutil.Process) -> None:
    with contextlib.suppress(OSError):
        os.killpg(leader.pid, signal.SIGTERM)
    for member in members:
        with contextlib.suppress(psutil.Error):
            member.terminate()  # members that left the group (a worker with its own session)


def _run_stop_command(spec: ServerSpec, command: list[str]) -> None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            command,
            cwd=spec.working_directory,
            env=process_environment(spec.environment),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )


# ---------------------------------------------------------------------------------------------------------------
# Processes: pid files, process groups, the holder of a port.


def read_pid_file(path: Path) -> psutil.Process | None:
    """The live process a pid file names, or None when it is gone or the pid now belongs to a newer process."""
    try:
        pid = int(path.read_text().split()[0])
        written_at = path.stat().st_mtime
        process = psutil.Process(pid)
        # A process created after the pid file was written is an unrelated one that reused the number.
        if process.create_time() > written_at + 1.0 or process.status() == psutil.STATUS_ZOMBIE:
            return None
        return process
    except (OSError, ValueError, IndexError, psutil.Error):
        return None


def process_tree(leader: psutil.Process) -> list[psutil.Process]:
    """The leader, its descendants and everything else in its process group (servers start their own group)."""
    members: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        members[leader.pid] = leader
        for child in leader.children(recursive=True):
            members[child.pid] = child
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(process.pid) == leader.pid:
                members.setdefault(process.pid, process)
    return list(members.values())


def is_alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a zombie has exited; only its parent's wait is missing)."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def wait_until_gone(processes: Sequence[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to timeout seconds for the processes to exit; return those still alive."""
    deadline = time.monotonic() + timeout
    alive = [process for process in processes if is_alive(process)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [process for process in alive if is_alive(process)]
    return alive


def describe_process(process: psutil.Process) -> str:
    """'process <pid> (<command line>)', shortened to about 100 characters."""
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return f"process {process.pid}"
    if len(command) > 100:
        command = command[:97] + "..."
    return f"process {process.pid} ({command})"


def port_holder(port: int) -> psutil.Process | None:
    """The process listening on 127.0.0.1 (or all addresses) at port, when the system lets us see it."""
    try:
        connections = psutil.net_connections(kind="inet")
    except (psutil.Error, OSError):
        return None
    for connection in connections:
        listening = connection.status == psutil.CONN_LISTEN and connection.laddr and connection.laddr.port == port
        if listening and connection.pid:
            with contextlib.suppress(psutil.Error):
                return psutil.Process(connection.pid)
    return None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a text file ('' when it does not exist)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))  # the last 64 KiB hold far more than `lines` lines
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
