"""serving.stack: port checks, pid files, readiness waits, and stopping without leaving a process behind.

Most tests run the orchestration against small stub servers (plain Python HTTP servers with a child "worker"),
so they take seconds; the end-to-end test at the bottom starts the three real servers on free ports.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from serving import stack as stack_module
from serving.stack import Endpoint, Ports, ServerDefinition, Stack, StackError

ROOT = Path(__file__).resolve().parents[2]

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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture
def stub_script(tmp_path: Path) -> Path:
    path = tmp_path / "stub_server.py"
    path.write_text(STUB_SERVER)
    return path


@pytest.fixture
def make_stub(stub_script: Path):
    """Build a ServerDefinition for the stub server: mode ok | crash | never | stubborn."""

    def build(name: str, mode: str = "ok", delay: float = 0.0, port: int | None = None) -> ServerDefinition:
        port = port or free_port()
        return ServerDefinition(
            name=name,
            title=f"stub server ({mode})",
            command=[sys.executable, str(stub_script), str(port), mode, str(delay)],
            ports={"HTTP": port},
            is_ready=lambda: http_ok(f"http://127.0.0.1:{port}/"),
            endpoints=[Endpoint(f"{name} HTTP", "REST", f"http://127.0.0.1:{port}/", f"curl http://127.0.0.1:{port}/")],
        )

    return build


def tree(pid: int) -> list[psutil.Process]:
    leader = psutil.Process(pid)
    return [leader, *leader.children(recursive=True)]


def gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_start_writes_pid_files_and_logs_then_stop_leaves_nothing(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", definitions=[make_stub("tfserving", delay=0.5), make_stub("flask")])
    lines: list[str] = []
    seconds = stack.start(timeout=30, report=lines.append)

    assert set(seconds) == {"tfserving", "flask"}
    assert seconds["tfserving"] >= 0.5
    assert any(line.startswith("Ready    tfserving") for line in lines)
    processes = []
    for name in ("tfserving", "flask"):
        pid = int(stack.pid_path(name).read_text())
        members = tree(pid)
        assert len(members) == 2, "the stub and its worker"
        processes += members
        assert "listening on" in stack.log_path(name).read_text()
    assert [status.ready for status in stack.status()] == [True, True]

    assert sorted(stack.stop(report=lines.append)) == ["flask", "tfserving"]
    assert gone(processes)
    assert not list((tmp_path / "run" / "pids").iterdir())
    assert [status.running for status in stack.status()] == [False, False]


def test_stop_from_a_new_process_finds_the_stack_through_its_run_dir(tmp_path, make_stub):
    run_dir = tmp_path / "run"
    stack = Stack(run_dir=run_dir, definitions=[make_stub("tfserving"), make_stub("flask")])
    stack.start(timeout=30, report=lambda line: None)
    processes = [member for name in ("tfserving", "flask") for member in tree(int(stack.pid_path(name).read_text()))]

    # What `make stop` does: a separate command that knows only the run folder.
    result = subprocess.run(
        [sys.executable, "-m", "serving.stack", "stop", "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "Stopped tfserving, flask." in result.stdout
    psutil.wait_procs(processes, timeout=5)  # also reaps the stubs, which are this test's children
    assert gone(processes)
    assert "Nothing was running." in subprocess.run(
        [sys.executable, "-m", "serving.stack", "stop", "--run-dir", str(run_dir)],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    ).stdout


def test_port_already_taken_names_the_port_and_the_process(tmp_path, make_stub):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        stack = Stack(run_dir=tmp_path / "run", definitions=[make_stub("flask", port=port)])
        with pytest.raises(StackError) as raised:
            stack.start(timeout=10, report=lambda line: None)
    message = str(raised.value)
    assert f"Port {port} (flask HTTP) is already in use by process {os.getpid()}" in message
    assert "\n" not in message
    assert not (tmp_path / "run" / "pids" / "flask.pid").exists()


def test_port_taken_on_the_command_line_is_one_sentence_and_exit_2(tmp_path):
    ports = Ports.free()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.tf_rest))
        holder.listen()
        flags = [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.as_dict().items()]
        result = subprocess.run(
            [sys.executable, "-m", "serving.stack", "start", "--run-dir", str(tmp_path / "run"),
             "--models-dir", str(tmp_path / "models"), "--no-train", *flags],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode == 2
    assert result.stderr.startswith(f"python -m serving.stack: error: Port {ports.tf_rest} (tfserving REST)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_export_without_training_says_which_make_target(tmp_path):
    ports = Ports.free()
    flags = [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.as_dict().items()]
    result = subprocess.run(
        [sys.executable, "-m", "serving.stack", "start", "--run-dir", str(tmp_path / "run"),
         "--models-dir", str(tmp_path / "models"), "--no-train", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "No tf export of 'digits'" in result.stderr and "make train-tf" in result.stderr
    assert "Traceback" not in result.stderr


def test_server_that_exits_while_starting_is_named_with_its_log_and_the_rest_stopped(tmp_path, make_stub, stub_script):
    definitions = [make_stub("flask", mode="never"), make_stub("tfserving", mode="crash")]
    stack = Stack(run_dir=tmp_path / "run", definitions=definitions)
    with pytest.raises(StackError) as raised:
        stack.start(timeout=30, report=lambda line: None)
    message = str(raised.value)
    assert message.startswith("tfserving exited with status 3 before its model was ready")
    assert "boom: no model under /nowhere" in message
    assert not list((tmp_path / "run" / "pids").iterdir())
    assert leftovers(stub_script) == []


def leftovers(script: Path) -> list[int]:
    """Processes still running the stub script of this test."""
    found = []
    for process in psutil.process_iter():
        try:
            if str(script) in process.cmdline() and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process.pid)
        except psutil.Error:
            continue
    return found


def test_timeout_names_the_server_that_did_not_come_up_and_shows_its_log(tmp_path, make_stub):
    never = make_stub("torchserve", mode="never")
    stack = Stack(run_dir=tmp_path / "run", definitions=[make_stub("flask"), never])
    started = time.monotonic()
    with pytest.raises(StackError) as raised:
        stack.start(timeout=2, report=lambda line: None)
    assert time.monotonic() - started < 15
    message = str(raised.value)
    assert message.startswith("torchserve did not report its model ready within 2 s; last lines of")
    assert "stub never listening on" in message
    assert not list((tmp_path / "run" / "pids").iterdir())


def test_a_server_that_ignores_sigterm_is_killed_with_its_worker(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", definitions=[make_stub("flask", mode="stubborn")])
    stack.start(timeout=30, report=lambda line: None)
    processes = tree(int(stack.pid_path("flask").read_text()))
    lines: list[str] = []
    began = time.monotonic()
    stack.stop(report=lines.append, grace=0.5)
    assert time.monotonic() - began < 15
    assert gone(processes)
    assert any(line.startswith("Killing process") for line in lines)


def test_stale_pid_files_are_ignored_and_removed(tmp_path, make_stub):
    stack = Stack(run_dir=tmp_path / "run", definitions=[make_stub("tfserving"), make_stub("flask")])
    stack.pid_path("tfserving").parent.mkdir(parents=True)
    # A pid that no longer exists, and a live pid (this test) that is newer than the pid file naming it.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stack.pid_path("tfserving").write_text(f"{dead.pid}\n")
    stack.pid_path("flask").write_text(f"{os.getpid()}\n")
    os.utime(stack.pid_path("flask"), (0, 0))
    assert stack.stop(report=lambda line: None) == []
    assert psutil.pid_exists(os.getpid())
    assert not stack.pid_path("tfserving").exists() and not stack.pid_path("flask").exists()


def test_second_start_on_a_running_run_dir_is_refused(tmp_path, make_stub):
    definitions = [make_stub("flask")]
    with Stack(run_dir=tmp_path / "run", definitions=definitions) as stack:
        stack.start(timeout=30, report=lambda line: None)
        with pytest.raises(StackError, match="is already running"):
            Stack(run_dir=tmp_path / "run", definitions=definitions).start(timeout=5, report=lambda line: None)
        assert stack.status()[0].ready


FOREGROUND_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from serving.stack import ServerDefinition, Stack
    import urllib.request

    stub, run_dir, port = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])

    def ready():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).status == 200
        except OSError:
            return False

    definition = ServerDefinition(
        name="flask", title="stub", command=[sys.executable, stub, str(port), "ok", "0"],
        ports={"HTTP": port}, is_ready=ready,
    )
    stack = Stack(run_dir=run_dir, definitions=[definition])
    stack.start(timeout=30, report=lambda line: None)
    print("READY", flush=True)
    sys.exit(stack.run_in_foreground(report=lambda line: print(line, flush=True)))
    """
)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_foreground_run_stops_every_server_on_ctrl_c(tmp_path, stub_script, signal_number):
    run_dir = tmp_path / "run"
    runner = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND_SCRIPT, str(stub_script), str(run_dir), str(free_port())],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert runner.stdout.readline().strip() == "READY"
        processes = tree(int((run_dir / "pids" / "flask.pid").read_text()))
        runner.send_signal(signal_number)
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, output
    assert "Stopped flask." in output
    assert gone(processes)


def test_endpoints_and_client_environment_follow_the_ports(tmp_path):
    ports = Ports(tf_grpc=1, tf_rest=2, flask=3, torchserve_inference=4, torchserve_management=5,
                  torchserve_metrics=6, torchserve_grpc_inference=7, torchserve_grpc_management=8)
    stack = Stack(ports=ports, run_dir=tmp_path / "run", models_dir=tmp_path / "models")
    assert stack.endpoints() == {
        "tf_grpc": "127.0.0.1:1",
        "tf_rest": "http://127.0.0.1:2",
        "flask": "http://127.0.0.1:3",
        "torchserve": "http://127.0.0.1:4",
        "torchserve_management": "http://127.0.0.1:5",
        "torchserve_metrics": "http://127.0.0.1:6",
        "torchserve_grpc": "127.0.0.1:7",
    }
    environment = stack.environment_for_clients()
    assert environment["TFSERVING_GRPC"] == "127.0.0.1:1" and environment["TORCHSERVE_URL"] == "http://127.0.0.1:4"
    assert environment["TORCHSERVE_KEY_FILE"] == str(tmp_path / "run" / "torchserve" / "key_file.json")
    text = stack.describe_endpoints()
    assert "curl -s -H 'Content-Type: application/json' -d '{\"instances\":[[[0,0,5,13" in text
    assert "http://127.0.0.1:2/v1/models/digits:predict" in text
    assert "http://127.0.0.1:3/v1/models/digits:predict" in text
    assert "Authorization: Bearer" in text and "http://127.0.0.1:4/predictions/digits" in text
    assert "serving.client tf --grpc 127.0.0.1:1" in text


def test_server_commands_follow_design_md(tmp_path):
    stack = Stack(run_dir=tmp_path / "run", models_dir=tmp_path / "models")
    definitions = {definition.name: definition for definition in stack.definitions()}
    assert list(definitions) == ["tfserving", "flask", "torchserve"]
    tf_command = definitions["tfserving"].command
    assert tf_command[1:3] == ["-m", "serving.tfserving"]
    assert "--port=8500" in tf_command and "--rest_api_port=8501" in tf_command and "--model_name=digits" in tf_command
    assert f"--model_base_path={tmp_path / 'models' / 'tf' / 'digits'}" in tf_command
    flask = definitions["flask"]
    assert "127.0.0.1:5000" in flask.command and "serving.flask_app:create_app()" in flask.command
    assert flask.environment["FLASK_MODEL_BASE_PATH"] == str(tmp_path / "models" / "torch" / "digits")
    torchserve = definitions["torchserve"]
    assert "--foreground" in torchserve.command and torchserve.stop_command[-1] == "--stop"
    assert torchserve.environment["TMPDIR"] == str(tmp_path / "run" / "torchserve" / "tmp")
    assert set(torchserve.ports.values()) == {8080, 8081, 8082, 7070, 7071}


def test_unknown_server_and_empty_logs_are_one_sentence(tmp_path):
    for argv, expected in (
        (["start", "--only", "triton", "--run-dir", str(tmp_path)], "Unknown server 'triton'"),
        (["logs", "--run-dir", str(tmp_path)], "No logs under"),
    ):
        result = subprocess.run([sys.executable, "-m", "serving.stack", *argv], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_logs_prints_the_end_of_each_log(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "flask.log").write_text("".join(f"line {number}\n" for number in range(100)))
    assert stack_module.main(["logs", "flask", "--lines", "3", "--run-dir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "line 99" in output and "line 97" in output and "line 96" not in output


# ---------------------------------------------------------------------------------------------------------------
# The real servers, on free ports, over models trained into a temporary folder.


def _servers_available() -> str | None:
    for module in ("serving/tfserving/__main__.py", "serving/flask_app/__init__.py", "serving/gunicorn_conf.py",
                   "serving/torchserve/launch.py"):
        if not (ROOT / module).exists():
            return f"{module} is not there yet"
    return None


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.skipif(_servers_available() is not None, reason=str(_servers_available()))
def test_real_stack_starts_answers_and_stops_cleanly(tmp_path, tf_trained, torch_trained):
    models = tmp_path / "models"
    models.mkdir()
    (models / "tf").symlink_to(Path(tf_trained.export_path).parents[1])
    (models / "torch").symlink_to(Path(torch_trained.export_path).parents[1])
    stack = Stack(ports=Ports.free(), run_dir=tmp_path / "run", models_dir=models)
    lines: list[str] = []
    try:
        seconds = stack.start(timeout=240, report=lines.append, train=False)
        print("start-up seconds until ready:", {name: round(value, 1) for name, value in seconds.items()})
        processes = [
            member for name in seconds for member in tree(int(stack.pid_path(name).read_text()))
        ]
        assert set(seconds) == {"tfserving", "flask", "torchserve"}
        assert all(status.ready for status in stack.status())
        assert stack.torchserve_key_file.exists()
    finally:
        stopped = stack.stop(report=lines.append)
    assert sorted(stopped) == ["flask", "tfserving", "torchserve"]
    assert gone(processes), "\n".join(lines)
    for port in stack.ports.as_dict().values():
        assert stack_module.port_is_free(port)
