"""make test-containers: docker-compose.yml built and run here end to end, with stand-ins for the official images.

    python -m tests.containers.run [--rebuild-base] [--work-dir DIR]      (root; a few minutes)

Steps: install the host packages that are missing and start dockerd if none runs; build the Debian base with
mmdebstrap (cached); fill a wheelhouse with pip download; train version 1 of both models; build the Flask image
from serving/flask_app/Dockerfile and the two stand-ins (tests/containers/images/); `up` on free host ports and wait for every
healthcheck; run tests/integration against the containers; train version 2 and check that each server serves it;
`stop` under load and count the requests; `down` and check that nothing is left. docs/docker.md explains what
this proves and what it cannot.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from experiment.cli import run_main
from experiment.processes import port_is_free
from tests.containers import checks, docker_host
from tests.containers.docker_host import ROOT, run

PROG = "python -m tests.containers.run"
PROJECT = "tf-vs-torch-containers-test"  # its own compose project: a user's `docker compose up` is never touched
OVERRIDE = Path(__file__).resolve().parent / "compose.stand-ins.yml"
WORK_DIR = Path(__file__).resolve().parent / ".work"
SERVERS = ("tf-serving", "torchserve", "flask")  # the services with a healthcheck
STAND_IN_BASES = "torchserve-official"  # built before SERVERS, never started
SERVICES = (*SERVERS, "torchserve-rollout")  # ... and TorchServe's roll-out watcher, which runs from the Flask image
# docker-compose.yml's host-port variables → the container port each one publishes.
HOST_PORT_VARIABLES = {
    "TF_SERVING_GRPC_HOST_PORT": 8500,
    "TF_SERVING_REST_HOST_PORT": 8501,
    "FLASK_HOST_PORT": 5000,
    "TORCHSERVE_INFERENCE_HOST_PORT": 8080,
    "TORCHSERVE_MANAGEMENT_HOST_PORT": 8081,
    "TORCHSERVE_METRICS_HOST_PORT": 8082,
    "TORCHSERVE_GRPC_INFERENCE_HOST_PORT": 7070,
    "TORCHSERVE_GRPC_MANAGEMENT_HOST_PORT": 7071,
}
HEALTH_TIMEOUT_S = 600  # from `up`, which creates the containers: minutes on vfs
PICK_UP_TIMEOUT_S = 120  # TorchServe's roll-out waits for the new version's workers to start
SAMPLE = 32  # test images compared against the in-process model


class Log:
    """Timestamped progress lines on stdout; step durations and findings are kept for the summary at the end."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.summary: list[str] = []
        self.findings: list[str] = []

    def __call__(self, line: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{int(elapsed // 60):02d}:{elapsed % 60:04.1f}] {line}", flush=True)

    def finding(self, line: str) -> None:
        """A progress line that the summary repeats."""
        self(line)
        self.findings.append(line)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        """Report a step's start and its duration; the duration goes into the summary."""
        self(f"== {title}")
        started = time.monotonic()
        yield
        seconds = time.monotonic() - started
        self.summary.append(f"{seconds:6.1f} s  {title}")
        self(f"   {title}: {seconds:.1f} s")


@dataclasses.dataclass
class Stack:
    """The compose project under test: how to call compose, its environment, and the host ports it publishes."""

    compose: list[str]
    environment: dict[str, str]
    ports: dict[str, int]

    def command(self, *arguments: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
        """Run compose with docker-compose.yml and the stand-ins' override."""
        files = ["-f", str(ROOT / "docker-compose.yml"), "-f", str(OVERRIDE)]
        return run(
            [*self.compose, "-p", PROJECT, *files, *arguments],
            env=self.environment,
            cwd=ROOT,
            timeout=timeout,
            check=check,
        )

    def container(self, service: str) -> str:
        """The id of the service's container."""
        container_id = self.command("ps", "-q", service).stdout.strip()
        assert container_id, f"{service} has no container"
        return container_id

    def inspect(self, service: str, template: str) -> str:
        """docker inspect --format template for the service's container."""
        return run(["docker", "inspect", "--format", template, self.container(service)]).stdout.strip()

    def image(self, service: str) -> str:
        """The image the merged compose files give a service."""
        import yaml

        return yaml.safe_load(self.command("config").stdout)["services"][service]["image"]

    def url(self, variable: str) -> str:
        """http://127.0.0.1:<host port> for a host-port variable."""
        return f"http://127.0.0.1:{self.ports[variable]}"


def train(
    models_dir: Path,
    runs_dir: Path,
    version: int,
    seed: int,
    log: Log,
    pipelines: Sequence[str] = ("tf_pipeline", "torch_pipeline"),
) -> None:
    """Train with the default settings (the integration suite's accuracy floor holds), exporting the next version."""
    for pipeline in pipelines:
        started = time.monotonic()
        run(
            [
                sys.executable,
                "-m",
                f"{pipeline}.train",
                "--output-dir",
                str(models_dir),
                "--log-dir",
                str(runs_dir),
                "--run-name",
                f"containers-v{version}",
                "--seed",
                str(seed),
            ],
            cwd=ROOT,
            timeout=900,
        )
        log(f"{pipeline}: version {version} exported in {time.monotonic() - started:.0f} s")


def in_process(models_dir: Path, framework: str, version: int, images: np.ndarray) -> np.ndarray:
    """Probabilities (N, 10) of one export ("tf" or "torch", this version) for images, called in-process."""
    if framework == "tf":
        import tensorflow as tf

        signature = tf.saved_model.load(str(models_dir / "tf" / "digits" / str(version))).signatures["serving_default"]
        return signature(images=tf.constant(images))["probabilities"].numpy()
    from tests import torch_exports

    return torch_exports.onnx_outputs(models_dir / "torch" / "digits" / str(version), images)[0]


def wait_until_healthy(stack: Stack, log: Log, started: float) -> dict[str, float]:
    """Seconds from started until each server's healthcheck passed; AssertionError naming any that did not in time."""
    seconds: dict[str, float] = {}
    while len(seconds) < len(SERVERS):
        for service in SERVERS:
            if service in seconds:
                continue
            status = stack.inspect(service, "{{.State.Health.Status}}")
            if status == "healthy":
                seconds[service] = time.monotonic() - started
                log.finding(f"{service} healthy {seconds[service]:.1f} s after `up`")
            elif stack.inspect(service, "{{.State.Status}}") != "running":
                raise AssertionError(
                    f"{service} stopped while starting: {stack.command('logs', '--tail', '40', service).stdout}"
                )
        if time.monotonic() - started > HEALTH_TIMEOUT_S:
            missing = sorted(set(SERVERS) - set(seconds))
            raise AssertionError(f"{', '.join(missing)} not healthy within {HEALTH_TIMEOUT_S} s")
        time.sleep(1)
    return seconds


def check_new_version(stack: Stack, models_dir: Path, runs_dir: Path, log: Log) -> None:
    """Train version 2 while the servers run; each must then answer with version 2's probabilities, unrestarted."""
    from experiment.data import load_dataset

    images = load_dataset(seed=0).test.images[:SAMPLE]
    grpc_client = checks.GrpcPredictor(f"127.0.0.1:{stack.ports['TF_SERVING_GRPC_HOST_PORT']}", images, timeout=10)
    tf_rest = stack.url("TF_SERVING_REST_HOST_PORT") + "/v1/models/digits:predict"
    flask = stack.url("FLASK_HOST_PORT") + "/v1/models/digits:predict"
    torchserve = stack.url("TORCHSERVE_INFERENCE_HOST_PORT") + "/predictions/digits"
    readers = {
        "tf_pipeline": [
            ("TF Serving REST", lambda: checks.rest_probabilities(tf_rest, images)),
            ("TF Serving gRPC", grpc_client.probabilities),
        ],
        "torch_pipeline": [
            ("Flask", lambda: checks.rest_probabilities(flask, images)),
            ("TorchServe", lambda: checks.rest_probabilities(torchserve, images)),
        ],
    }
    try:
        for pipeline, framework in (("tf_pipeline", "tf"), ("torch_pipeline", "torch")):
            train(models_dir, runs_dir, version=2, seed=1, log=log, pipelines=(pipeline,))
            expected = in_process(models_dir, framework, 2, images)
            before = in_process(models_dir, framework, 1, images)
            assert not np.allclose(before, expected, atol=1e-3), f"{framework} version 2 answers as version 1 does"
            for name, probabilities in readers[pipeline]:
                seconds = checks.wait_until_serving(name, probabilities, expected, PICK_UP_TIMEOUT_S)
                log.finding(f"{name} serves version 2 {seconds:.1f} s after the training command returned, no restart")
    finally:
        grpc_client.close()
    # TorchServe answers with version 2 once it is the default; the watcher unregisters version 1 a moment later.
    deadline, lines = time.monotonic() + 60, []
    while not any("Rolled out" in line or "Refused" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(1)
        lines = rollout_log_lines(stack)
    for line in lines or ["(nothing logged within 60 s)"]:
        log.finding("roll-out watcher: " + line)
    management = stack.url("TORCHSERVE_MANAGEMENT_HOST_PORT")
    versions = [entry["modelVersion"] for entry in checks.get_json(f"{management}/models/digits/all")]
    left = "" if versions == ["2"] else " (the watcher did not unregister the old version: see its lines above)"
    log.finding(f"TorchServe lists versions {versions} of digits{left}")


def rollout_log_lines(stack: Stack) -> list[str]:
    """The roll-out watcher's log lines that end a roll-out or say what went wrong, without compose's prefix."""
    lines = stack.command("logs", "--no-color", "torchserve-rollout").stdout.splitlines()
    markers = ("Rolled out", "Refused", "Could not")
    return [line.split("|", 1)[-1].strip() for line in lines if any(marker in line for marker in markers)]


def stop_under_load(stack: Stack, log: Log) -> None:
    """`stop` while clients send to every server; no accepted request may be lost, every server must exit 0."""
    from experiment.data import load_dataset

    images = load_dataset(seed=0).test.images[:4]
    body = json.dumps({"instances": images.tolist()}).encode()
    flask = stack.url("FLASK_HOST_PORT") + "/v1/models/digits:predict"
    expected = checks.rest_probabilities(flask, images).argmax(axis=1).tolist()
    # The containers' own addresses on the compose network, not the published ports: docker-proxy accepts every
    # connection itself, which would hide whether the server behind it accepted or refused a request.
    address = {
        service: stack.inspect(service, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}")
        for service in SERVERS
    }
    targets = []
    for name, service, port, path in (
        ("TF Serving REST", "tf-serving", 8501, "/v1/models/digits:predict"),
        ("Flask", "flask", 5000, "/v1/models/digits:predict"),
        ("TorchServe REST", "torchserve", 8080, "/predictions/digits"),
    ):
        send = functools.partial(checks.send_rest, address[service], port, path, body, expected, 30)
        targets.append((checks.LoadTarget(name, send), 2))
    for _ in range(2):
        predictor = checks.GrpcPredictor(f"{address['tf-serving']}:8500", images, timeout=30)
        targets.append(
            (checks.LoadTarget("TF Serving gRPC", lambda p=predictor: p.outcome(expected), predictor.close), 1)
        )

    def stop() -> None:
        started = time.monotonic()
        stack.command("stop")
        log.finding(f"`stop` under load returned after {time.monotonic() - started:.1f} s")

    result = checks.load_during(targets, stop)
    for line in result.table().splitlines():
        log.finding(line)
    exit_codes = {service: stack.inspect(service, "{{.State.ExitCode}}") for service in SERVICES}
    log.finding(f"exit status after stop: {exit_codes}")
    assert not any(result.lost().values()), f"requests lost while stopping: {result.lost()} {result.examples}"
    assert all(code == "0" for code in exit_codes.values()), f"a server did not stop cleanly: {exit_codes}"


def check_nothing_left(stack: Stack, log: Log) -> None:
    """After `down`: no container, network or volume of the project, and every published host port free again."""
    label = f"label=com.docker.compose.project={PROJECT}"
    leftovers = {
        kind: run(
            ["docker", kind, "ls", "--all", "--quiet", "--filter", label]
            if kind == "container"
            else ["docker", kind, "ls", "--quiet", "--filter", label]
        ).stdout.split()
        for kind in ("container", "network", "volume")
    }
    # SO_REUSEADDR: the test's own closed connections may linger in TIME_WAIT on these ports; nothing may listen.
    busy = [port for port in stack.ports.values() if not port_is_free(port, "127.0.0.1", reuse_address=True)]
    assert not any(leftovers.values()) and not busy, f"left after down: {leftovers}, ports still bound: {busy}"
    log.finding("after down: no container, network or volume of the project is left; every published port is free")


def check_stack(compose: list[str], work_dir: Path, log: Log, rebuild_base: bool) -> None:
    """Everything from the base image to `down`; raises AssertionError or CommandFailed on the first failure."""
    models_dir, runs_dir = work_dir / "models", work_dir / "runs"
    with log.step("base image"):
        base = docker_host.ensure_base_image(work_dir, log, rebuild=rebuild_base)
    with log.step("wheelhouse (pip download on the host)"):
        docker_host.fill_wheelhouse(work_dir / "wheelhouse", log)
    with log.step("train version 1 of both models"):
        for folder in (models_dir, runs_dir):
            shutil.rmtree(folder, ignore_errors=True)
        train(models_dir, runs_dir, version=1, seed=0, log=log)
    ports = dict(zip(HOST_PORT_VARIABLES, docker_host.free_ports(len(HOST_PORT_VARIABLES)), strict=True))
    environment = {
        **os.environ,
        **{name: str(port) for name, port in ports.items()},
        "STAND_IN_BASE_IMAGE": base,
        "STAND_IN_MODELS_DIR": str(models_dir.resolve()),
        "DOCKER_BUILDKIT": "0",
        "COMPOSE_DOCKER_CLI_BUILD": "0",
    }
    stack = Stack(compose, environment, ports)
    with log.step("build the Flask image and the two stand-ins"):
        with docker_host.serve_wheelhouse(work_dir / "wheelhouse") as pip_options:
            stack.environment["STAND_IN_PIP_INSTALL_OPTIONS"] = pip_options
            stack.command("build", STAND_IN_BASES, timeout=3600)  # the image serving/torchserve/Dockerfile extends
            stack.command("build", *SERVERS, timeout=3600)
        for service in SERVERS:
            image = stack.image(service)
            log.finding(f"image {image}: {docker_host.image_size_bytes(image) / 1e6:.0f} MB")
    try:
        with log.step("up, and wait for every healthcheck"):
            started = time.monotonic()
            stack.command("up", "--detach", "--no-build", *SERVICES)
            wait_until_healthy(stack, log, started)
            log(stack.command("run", "--rm", "ready").stdout.strip())
        with log.step("integration suite against the containers"):
            suite = {
                "TFSERVING_GRPC": f"127.0.0.1:{ports['TF_SERVING_GRPC_HOST_PORT']}",
                "TFSERVING_REST": stack.url("TF_SERVING_REST_HOST_PORT"),
                "FLASK_URL": stack.url("FLASK_HOST_PORT"),
                "TORCHSERVE_URL": stack.url("TORCHSERVE_INFERENCE_HOST_PORT"),
                "TORCHSERVE_MANAGEMENT_URL": stack.url("TORCHSERVE_MANAGEMENT_HOST_PORT"),
                "TORCHSERVE_GRPC": f"127.0.0.1:{ports['TORCHSERVE_GRPC_INFERENCE_HOST_PORT']}",
                "TORCHSERVE_GRPC_MANAGEMENT": f"127.0.0.1:{ports['TORCHSERVE_GRPC_MANAGEMENT_HOST_PORT']}",
                "MODELS_DIR": str(models_dir.resolve()),
            }
            result = run(
                [sys.executable, "-m", "pytest", "tests/integration", "-q", "-p", "no:cacheprovider"],
                cwd=ROOT,
                env={**os.environ, **suite},
                check=False,
                timeout=900,
            )
            log.finding("integration suite: " + (result.stdout.strip().splitlines() or ["(no output)"])[-1])
            assert result.returncode == 0, (
                f"the integration suite exited {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-2000:]}"
            )
        with log.step("train version 2 while serving; every server picks it up"):
            check_new_version(stack, models_dir, runs_dir, log)
        with log.step("stop under load"):
            stop_under_load(stack, log)
    except BaseException:
        logs = work_dir / "compose.log"
        logs.write_text(stack.command("logs", "--no-color", "--timestamps", check=False).stdout)
        log(f"the containers' logs are in {logs}")
        raise
    finally:
        with log.step("down"):
            stack.command("down", "--volumes", "--remove-orphans", "--timeout", "60")
    check_nothing_left(stack, log)


def build_parser() -> argparse.ArgumentParser:
    """--rebuild-base, --work-dir."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--rebuild-base", action="store_true", help="build the Debian base image again with mmdebstrap")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK_DIR,
        help=f"wheelhouse, models and logs (default {WORK_DIR.relative_to(ROOT)})",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every step; 0 when all passed, 1 with the failing step's message otherwise."""
    arguments = build_parser().parse_args(argv)

    def body() -> int:
        log = Log()
        compose = docker_host.ensure_host_packages(log)
        failure = None
        with docker_host.docker_daemon(arguments.work_dir / "dockerd.log", log.finding):
            version = run(["docker", "version", "--format", "{{.Server.Version}}"]).stdout.strip()
            driver = run(["docker", "info", "--format", "{{.Driver}}"]).stdout.strip()
            log.finding(f"Docker {version}, storage driver {driver}, compose: {' '.join(compose)}")
            try:
                check_stack(compose, arguments.work_dir, log, arguments.rebuild_base)
            except (AssertionError, docker_host.CommandFailed) as error:
                failure = error
        print(
            "\nmake test-containers "
            + ("FAILED" if failure else "passed")
            + f" in {time.monotonic() - log.started:.0f} s:"
        )
        print("\n".join(log.summary))
        print("\n".join(["", *log.findings]))
        if failure:
            print(f"\n{failure}", file=sys.stderr)
            return 1
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
