"""`python -m serving.stack start|stop|status|logs` (what `make serve/stop/status/logs` run): its commands and messages.

The stack's supervision itself is tested in tests/serving/runtime/test_stack.py; these run the command line over
stub servers, so they take seconds.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from serving import stack as stack_module
from serving.runtime import Ports, Stack, free_port
from tests.serving.stubs import gone, tree

ROOT = Path(__file__).resolve().parents[2]


def run_stack_command(*argv: str) -> subprocess.CompletedProcess:
    """`python -m serving.stack ...` as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "serving.stack", *argv], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def port_flags(ports: Ports) -> list[str]:
    """--tf-grpc-port=... for every port."""
    return [f"--{name.replace('_', '-')}-port={port}" for name, port in ports.as_dict().items()]


def test_stop_from_a_new_process_finds_the_stack_through_its_run_dir(tmp_path, make_stub):
    run_dir = tmp_path / "run"
    stack = Stack(run_dir=run_dir, specs=[make_stub("tfserving"), make_stub("flask")])
    stack.start(timeout=30, report=lambda line: None)
    processes = [member for name in ("tfserving", "flask") for member in tree(int(stack.pid_path(name).read_text()))]

    # What `make stop` does: a separate command that knows only the run folder.
    result = run_stack_command("stop", "--run-dir", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "Stopped tfserving, flask." in result.stdout
    psutil.wait_procs(processes, timeout=5)  # also reaps the stubs, which are this test's children
    assert gone(processes)
    assert "Nothing was running." in run_stack_command("stop", "--run-dir", str(run_dir)).stdout


def test_port_taken_on_the_command_line_is_one_sentence_and_exit_2(tmp_path):
    ports = Ports.free()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", ports.tf_rest))
        holder.listen()
        result = run_stack_command(
            "start",
            "--run-dir",
            str(tmp_path / "run"),
            "--models-dir",
            str(tmp_path / "models"),
            "--no-train",
            *port_flags(ports),
        )
    assert result.returncode == 2
    assert result.stderr.startswith(f"python -m serving.stack: error: Port {ports.tf_rest} (tfserving REST)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_missing_export_without_training_says_which_make_target(tmp_path):
    result = run_stack_command(
        "start",
        "--run-dir",
        str(tmp_path / "run"),
        "--models-dir",
        str(tmp_path / "models"),
        "--no-train",
        *port_flags(Ports.free()),
    )
    assert result.returncode == 2
    assert "No tf export of 'digits'" in result.stderr and "make train-tf" in result.stderr
    assert "Traceback" not in result.stderr


FOREGROUND_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from serving.runtime import Stack
    from tests.serving.stubs import stub_spec

    stub, run_dir = Path(sys.argv[1]), Path(sys.argv[2])
    stack = Stack(run_dir=run_dir, specs=[stub_spec(stub, "flask", port=int(sys.argv[3]))])
    stack.start(timeout=30, report=lambda line: None)
    sys.exit(stack.run_in_foreground(report=lambda line: print(line, flush=True)))
    """
)


@pytest.mark.parametrize("signal_number", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_foreground_run_stops_every_server_on_ctrl_c(tmp_path, stub_script, signal_number):
    run_dir = tmp_path / "run"
    runner = subprocess.Popen(
        [sys.executable, "-c", FOREGROUND_SCRIPT, str(stub_script), str(run_dir), str(free_port())],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # Its first line comes once Ctrl-C and SIGTERM are its own to handle.
        assert runner.stdout.readline().startswith("Serving in the foreground")
        processes = tree(int((run_dir / "pids" / "flask.pid").read_text()))
        runner.send_signal(signal_number)
        output, _ = runner.communicate(timeout=60)
    finally:
        if runner.poll() is None:
            runner.kill()
    assert runner.returncode == 0, output
    assert "Stopped flask." in output
    assert gone(processes)


def test_unknown_server_and_empty_logs_are_one_sentence(tmp_path):
    for argv, expected in (
        (["start", "--only", "triton", "--run-dir", str(tmp_path)], "Unknown server 'triton'"),
        (["logs", "--run-dir", str(tmp_path)], "No logs under"),
    ):
        result = run_stack_command(*argv)
        assert result.returncode == 2, result.stderr
        assert expected in result.stderr and "Traceback" not in result.stderr


def test_logs_prints_the_end_of_each_log(tmp_path, capsys):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "flask.log").write_text("".join(f"line {number}\n" for number in range(100)))
    assert stack_module.main(["logs", "flask", "--lines", "3", "--run-dir", str(tmp_path)]) == 0
    output = capsys.readouterr().out
    assert "line 99" in output and "line 97" in output and "line 96" not in output


def test_status_of_a_stack_that_is_not_running_says_stopped_and_exits_0(tmp_path):
    result = run_stack_command("status", "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert [line.split()[:2] for line in result.stdout.splitlines()] == [
        ["tfserving", "stopped"],
        ["flask", "stopped"],
        ["torchserve", "stopped"],
    ]
