"""Soak: publish many versions of each model into a running stack while clients call every endpoint.

    .venv/bin/python -m tests.soak.version_churn --source models --versions 50 --clients 8

The three servers start on free ports over a copy of the newest TF and torch exports of --source (version 1).
Then versions 2 .. versions+1 are published one after the other, the way a training publishes them (staged,
renamed under the publication lock, a <model>-<version>.mar per torch version), each once every server serves
the one before, while --clients threads call every endpoint with a few test images. Reported: requests and failed
requests per endpoint, each server's resident memory (its whole process tree) after the 5th and the last version,
and the version each server ends on. Exits non-zero when a request failed, memory grew past 1.2x, or a server does
not end on the newest version. Long (minutes); not part of `make test`.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from experiment import artifacts
from experiment.data import load_dataset
from serving.clients import RestClient, TorchServeClient, torchserve_protos
from serving.runtime import Ports, Stack
from serving.runtime.process import process_tree, read_pid_file

MODEL = "digits"
MEMORY_LIMIT = 1.2


def copy_first_versions(source: Path, models: Path) -> None:
    """models/{tf,torch}/digits/1 and models/torch/model-store/digits-1.mar (and digits.mar) from source's newest."""
    for framework in ("tf", "torch"):
        base = artifacts.model_base_path(source, framework, MODEL)
        newest = artifacts.latest_version(base)
        if newest is None:
            raise SystemExit(f"No {framework} export under {base}; train one first.")
        shutil.copytree(base / str(newest), artifacts.model_base_path(models, framework, MODEL) / "1")
    publish_archive(models, 1)


def publish_archive(models: Path, version: int) -> None:
    from torch_pipeline import export

    store = artifacts.model_store_path(models)
    store.mkdir(parents=True, exist_ok=True)
    with artifacts.staging_directory(store) as archive_dir:
        archive = export.write_model_archive(
            artifacts.model_base_path(models, "torch", MODEL) / str(version), MODEL, version, archive_dir
        )
        export.publish_model_archive(archive, store, MODEL)


def publish(models: Path, version: int) -> None:
    """Version `version` of both models: a copy of version 1, staged and renamed under the publication lock."""
    for framework in ("tf", "torch"):
        base = artifacts.model_base_path(models, framework, MODEL)
        with artifacts.staging_directory(base) as staging, artifacts.publish_lock(base):
            shutil.copytree(base / "1", staging, dirs_exist_ok=True)
            artifacts.publish_version(staging, base, version)
            if framework == "torch":
                publish_archive(models, version)


def served_versions(stack: Stack) -> dict[str, int | None]:
    """The version each server answers with by default."""
    endpoints = {endpoint.name: endpoint for endpoint in stack.endpoints()}
    found: dict[str, int | None] = {}
    for name, server in (("tf-rest", "tfserving"), ("flask-rest", "flask")):
        client = RestClient(endpoints[name].address, MODEL, 10.0)
        try:
            available = [int(s["version"]) for s in client.get_status() if s.get("state") == "AVAILABLE"]
            found[server] = max(available, default=None)
        except Exception:  # noqa: BLE001 (a server between versions answers later)
            found[server] = None
        finally:
            client.close()
    torchserve = endpoints["torchserve-rest"].client(MODEL, 10.0)
    try:
        assert isinstance(torchserve, TorchServeClient)
        found["torchserve"] = int(torchserve.describe()["modelVersion"])
    except Exception:  # noqa: BLE001
        found["torchserve"] = None
    finally:
        torchserve.close()
    return found


def resident_memory(stack: Stack) -> dict[str, int]:
    """Each server's resident memory in bytes, its whole process tree."""
    memory = {}
    for spec in stack.specs():
        leader = read_pid_file(stack.pid_path(spec.name))
        total = 0
        for member in process_tree(leader) if leader is not None else []:
            try:
                total += member.memory_info().rss
            except psutil.Error:
                pass
        memory[spec.name] = total
    return memory


def call_endpoints(clients: list, images, stop: threading.Event, counts: collections.Counter, failures: list) -> None:
    try:
        while not stop.is_set():
            for name, client in clients:
                try:
                    client.predict(images)
                    counts[name] += 1
                except Exception as error:  # noqa: BLE001 (every failure is counted and shown)
                    counts[name] += 1
                    failures.append(f"{name}: {error}")
    finally:
        for _, client in clients:
            client.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m tests.soak.version_churn", description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("models"), help="models folder with both exports")
    parser.add_argument("--versions", type=int, default=50, help="versions to publish of each model (default 50)")
    parser.add_argument("--clients", type=int, default=8, help="client threads calling every endpoint (default 8)")
    parser.add_argument("--live-timeout", type=float, default=300.0, help="seconds a version may take to be served")
    arguments = parser.parse_args(argv)
    # TorchServe's gRPC stubs before TensorFlow is loaded (the TF gRPC client loads it): grpc_tools' protoc module,
    # imported into a process that holds TensorFlow, has crashed it (SIGSEGV in _protoc_compiler).
    torchserve_protos.load()
    images = load_dataset().test.images[:4]
    with tempfile.TemporaryDirectory(prefix="version-churn-") as folder:
        models = Path(folder) / "models"
        copy_first_versions(arguments.source, models)
        stack = Stack(ports=Ports.free(), run_dir=Path(folder) / "run", models_dir=models)
        stop, counts, failures = threading.Event(), collections.Counter(), []
        threads: list[threading.Thread] = []
        memory: dict[int, dict[str, int]] = {}
        try:
            stack.start(timeout=300, report=lambda line: None, train=False)
            # Clients are made here, one after the other: the first TorchServe gRPC client generates its stubs with
            # grpc_tools' protoc, which crashes the process when threads run it at once.
            for _ in range(arguments.clients):
                clients = [(endpoint.name, endpoint.client(MODEL, 30.0)) for endpoint in stack.endpoints()]
                threads.append(
                    threading.Thread(target=call_endpoints, args=(clients, images, stop, counts, failures), daemon=True)
                )
            for thread in threads:
                thread.start()
            last = arguments.versions + 1
            for version in range(2, last + 1):
                publish(models, version)
                deadline = time.monotonic() + arguments.live_timeout
                while (served := served_versions(stack)) and set(served.values()) != {version}:
                    if time.monotonic() > deadline:
                        print(f"version {version} not served by all within {arguments.live_timeout:g} s: {served}")
                        break
                    time.sleep(0.5)
                published = version - 1
                if published in (5, arguments.versions):
                    memory[published] = resident_memory(stack)
                print(
                    f"published version {version} ({published} of {arguments.versions}); served {served}; "
                    f"requests {sum(counts.values())}, failed {len(failures)}",
                    flush=True,
                )
            ending = served_versions(stack)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout=60)
            stack.stop(report=lambda line: None)
    print("requests per endpoint:", dict(counts), "failed:", len(failures))
    for failure in failures[:20]:
        print("  ", failure)
    ok = not failures
    for server in memory.get(5, {}):
        early, late = memory[5][server], memory.get(arguments.versions, {}).get(server, 0)
        ratio = late / early if early else float("inf")
        print(
            f"{server}: RSS {early / 2**20:.0f} MiB after version 5, {late / 2**20:.0f} MiB after the last: x{ratio:.2f}"
        )
        ok = ok and ratio <= MEMORY_LIMIT
    print("ends on:", ending, "newest:", arguments.versions + 1)
    ok = ok and set(ending.values()) == {arguments.versions + 1}
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
