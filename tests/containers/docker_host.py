"""The host side of make test-containers: Debian packages, the Docker daemon, the local base image, the wheelhouse.

Nothing here knows about the servers; run.py puts the pieces together.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from experiment.errors import UsageError
from experiment.processes import port_is_free

ROOT = Path(__file__).resolve().parents[2]
IMAGES_DIR = Path(__file__).resolve().parent / "images"
# The Debian packages this test needs on the host, by the command that proves each is there.
HOST_PACKAGES = {"docker": "docker.io", "dockerd": "docker.io", "mmdebstrap": "mmdebstrap"}
COMPOSE_PACKAGE = "docker-compose"  # Debian's; `docker compose` (the plugin) is used instead where it exists
# No iptables rules and no docker0 bridge are needed: compose gives the stack its own network. overlay2 shares
# unchanged files between layers; vfs works wherever dockerd runs (inside a container too) but copies every layer
# whole: building the three images from nothing took 14 minutes with vfs against 2 with overlay2 on this project's
# 2-core test machine. So overlay2 first, vfs where it cannot start; DOCKERD_FLAGS replaces both.
DOCKERD_NETWORK_FLAGS = "--iptables=false --bridge=none"
STORAGE_DRIVERS = ("overlay2", "vfs")
BASE_IMAGE = "tf-vs-torch-stand-in/debian-base:bookworm"
DEBIAN_SUITE = "bookworm"  # python3 3.11, the version the lock was resolved for
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_LABEL = "tf-vs-torch.mmdebstrap"
# A fixed wheelhouse port keeps the builds' pip command line, and so Docker's layer cache, the same from run to run.
PREFERRED_WHEELHOUSE_PORT = 18411
REQUIREMENT_FILES = (
    ROOT / "serving" / "flask_app" / "requirements.txt",
    IMAGES_DIR / "requirements-tfserving.txt",
    IMAGES_DIR / "requirements-torchserve.txt",
)
DERIVED_TORCHSERVE_REQUIREMENTS = ROOT / "serving" / "torchserve" / "requirements-image.txt"

Report = Callable[[str], None]


def run(
    command: Sequence[str], *, check: bool = True, timeout: float = 600, **arguments
) -> subprocess.CompletedProcess:
    """Run a command, capturing its output as text; a failure raises CommandFailed with the output's tail."""
    result = subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=timeout, **arguments)
    if check and result.returncode != 0:
        raise CommandFailed(command, result)
    return result


class CommandFailed(RuntimeError):
    """A host command exited non-zero; the message names it and ends with its output."""

    def __init__(self, command: Sequence[str], result: subprocess.CompletedProcess) -> None:
        output = (result.stdout + result.stderr).strip().splitlines()[-40:]
        super().__init__(f"`{shlex.join(command)}` exited {result.returncode}:\n" + "\n".join(output))


# ---- Debian packages ----------------------------------------------------------------------------------------------


def compose_command() -> list[str] | None:
    """`docker compose` where the plugin is installed, else Debian's `docker-compose`, else None."""
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def ensure_host_packages(report: Report) -> list[str]:
    """Install docker.io, mmdebstrap and docker-compose with apt-get where missing; returns the compose command."""
    if os.geteuid() != 0:
        raise UsageError("make test-containers needs root (it installs packages, runs dockerd and mmdebstrap).")
    missing = sorted({package for command, package in HOST_PACKAGES.items() if not shutil.which(command)})
    if compose_command() is None:
        missing.append(COMPOSE_PACKAGE)
    if missing:
        if not shutil.which("apt-get"):
            raise UsageError(f"Install {', '.join(missing)} first: this machine has no apt-get to do it.")
        report(f"installing {' '.join(missing)} with apt-get")
        environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-qq"], env=environment)
        run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], env=environment, timeout=1200)
    command = compose_command()
    assert command is not None, "docker-compose was just installed"
    return command


# ---- the Docker daemon --------------------------------------------------------------------------------------------


def docker_is_up() -> bool:
    """Whether `docker info` reaches a daemon."""
    return subprocess.run(["docker", "info"], check=False, capture_output=True, timeout=60).returncode == 0


def _start_dockerd(flags: str, log_path: Path) -> subprocess.Popen | None:
    """Start dockerd with these flags; the process once `docker info` answers, None if it exits or hangs first."""
    with log_path.open("ab") as log:
        # Its own session: a Ctrl-C meant for this test must not reach dockerd before the stack is taken down.
        daemon = subprocess.Popen(
            ["dockerd", *shlex.split(flags)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    deadline = time.monotonic() + 60
    while not docker_is_up():
        if daemon.poll() is not None:
            return None
        if time.monotonic() > deadline:
            daemon.kill()
            daemon.wait(30)
            return None
        time.sleep(0.5)
    return daemon


@contextlib.contextmanager
def docker_daemon(log_path: Path, report: Report) -> Iterator[bool]:
    """Use the running Docker daemon, or start dockerd and stop it again on exit; yields whether it was started here."""
    if docker_is_up():
        report("using the Docker daemon that is already running")
        yield False
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if os.environ.get("DOCKERD_FLAGS"):
        candidates = [os.environ["DOCKERD_FLAGS"]]
    else:
        candidates = [f"--storage-driver={driver} {DOCKERD_NETWORK_FLAGS}" for driver in STORAGE_DRIVERS]
    daemon = None
    for flags in candidates:
        daemon = _start_dockerd(flags, log_path)
        if daemon is not None:
            report(f"started dockerd {flags} (pid {daemon.pid}, log {log_path})")
            break
        report(f"dockerd {flags} did not start (see {log_path})")
    if daemon is None:
        raise UsageError(f"dockerd did not start with {' nor with '.join(candidates)}; its log is {log_path}.")
    try:
        yield True
    finally:
        children = _children(daemon.pid)  # its own containerd, and docker-proxy for published ports
        daemon.send_signal(signal.SIGTERM)  # dockerd stops its containers and its own containerd
        try:
            daemon.wait(90)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(30)
        time.sleep(1)
        left = [pid for pid in children if _alive(pid)]
        outcome = f"processes it started still run: {left}" if left else f"none of its {len(children)} children is left"
        report(f"stopped dockerd (exit status {daemon.returncode}); {outcome}")


def _children(pid: int) -> list[int]:
    """Process ids whose parent is pid (from /proc)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            # The command name in parentheses may contain spaces: the parent id is the 2nd field after it.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def _alive(pid: int) -> bool:
    """Whether a process with this id exists (and is not a zombie)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def image_exists(name: str) -> bool:
    """Whether the local image store has this image."""
    return run(["docker", "image", "inspect", name], check=False).returncode == 0


def image_size_bytes(name: str) -> int:
    """The image's size as `docker images` reports it (all layers, uncompressed)."""
    return int(run(["docker", "image", "inspect", "--format", "{{.Size}}", name]).stdout.strip())


# ---- the base image -----------------------------------------------------------------------------------------------


def mmdebstrap_arguments(tarball: Path) -> list[str]:
    """The mmdebstrap command line that builds the base's root file system into tarball."""
    return ["mmdebstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", DEBIAN_SUITE, str(tarball)]


def ensure_base_image(work_dir: Path, report: Report, rebuild: bool = False) -> str:
    """The Debian base the images build on: mmdebstrap + docker import, reused while its recipe is unchanged."""
    recipe = " ".join(mmdebstrap_arguments(Path("rootfs.tar"))[:-1])
    if not rebuild and image_exists(BASE_IMAGE):
        labels = json.loads(
            run(["docker", "image", "inspect", "--format", "{{json .Config.Labels}}", BASE_IMAGE]).stdout
        )
        if (labels or {}).get(BASE_LABEL) == recipe:
            report(f"reusing the cached base image {BASE_IMAGE}")
            return BASE_IMAGE
    work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=work_dir, prefix="rootfs-") as scratch:
        tarball = Path(scratch) / "rootfs.tar"
        started = time.monotonic()
        run(mmdebstrap_arguments(tarball), timeout=1200)
        report(f"mmdebstrap built the root file system in {time.monotonic() - started:.0f} s")
        # An imported tarball has no configuration: give it what python:3.11-slim has (PATH, LANG, a command).
        changes = [
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "ENV LANG=C.UTF-8",
            'CMD ["python3"]',
            f"LABEL {BASE_LABEL}={json.dumps(recipe)}",
        ]
        run(
            [
                "docker",
                "import",
                *[part for change in changes for part in ("--change", change)],
                str(tarball),
                BASE_IMAGE,
            ]
        )
    report(f"imported {BASE_IMAGE}")
    return BASE_IMAGE


# ---- the wheelhouse -----------------------------------------------------------------------------------------------


def fill_wheelhouse(wheelhouse: Path, report: Report) -> None:
    """pip download every wheel the images install, at requirements.lock's versions (already there: kept)."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(wheelhouse), "--only-binary=:all:"]
    command += ["--constraint", str(ROOT / "requirements.lock")]
    for requirements in REQUIREMENT_FILES:
        command += ["--requirement", str(requirements)]
    if os.environ.get("TORCH_INDEX_URL"):
        command += ["--extra-index-url", os.environ["TORCH_INDEX_URL"]]  # the Makefile's variable, as for make setup
    started = time.monotonic()
    run(command, timeout=1800)
    # serving/torchserve/Dockerfile pins the ONNX Runtime of the official image's Python, not the lock's.
    run([*command[:8], "--requirement", str(DERIVED_TORCHSERVE_REQUIREMENTS)], timeout=1800)
    wheels = sorted(wheelhouse.glob("*.whl"))
    size = sum(wheel.stat().st_size for wheel in wheels) / 2**20
    report(f"wheelhouse: {len(wheels)} wheels, {size:.0f} MiB ({time.monotonic() - started:.0f} s)")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:
        """One line per wheel fetched would drown the report."""


@contextlib.contextmanager
def serve_wheelhouse(wheelhouse: Path) -> Iterator[str]:
    """Serve the wheelhouse on 127.0.0.1 while the images build; yields pip's options to install from it only.

    Builds run with the host's network, so their pip reaches this server; pip treats 127.0.0.1 as a secure origin.
    """
    port = PREFERRED_WHEELHOUSE_PORT if port_is_free(PREFERRED_WHEELHOUSE_PORT, "127.0.0.1") else 0
    handler = functools.partial(_QuietHandler, directory=str(wheelhouse))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, name="wheelhouse", daemon=True)
    thread.start()
    try:
        yield f"--no-index --find-links http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def free_ports(count: int) -> list[int]:
    """count distinct ports nothing listens on right now (held together while choosing, so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            sockets.append(listener)
        return [listener.getsockname()[1] for listener in sockets]
    finally:
        for listener in sockets:
            listener.close()
