"""TorchServe's gRPC stubs, generated with grpcio-tools from the proto files that the installed torchserve ships.

The protos (`inference.proto`, `management.proto`) travel inside torchserve's front-end jar,
`ts/frontend/model-server.jar`, under `proto/`. They are compiled on first use into a git-ignored cache folder,
`build/torchserve_grpc/`, as one package per set of proto files, named after their digest (an upgraded torchserve
gets new stubs, never stale ones), and imported from there. Nothing generated is committed.

    python -m serving.clients.torchserve_protos     # generate now (make setup does); prints the package's folder
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from experiment.errors import UsageError

PROTO_FILES = ("inference.proto", "management.proto")
JAR_PROTO_FOLDER = "proto/"
CACHE_DIR = Path(__file__).resolve().parents[2] / "build" / "torchserve_grpc"
PACKAGE_PREFIX = "torchserve_grpc_"


@dataclasses.dataclass(frozen=True)
class Stubs:
    """The generated message and service modules of TorchServe's two gRPC APIs."""

    inference_pb2: ModuleType
    inference_pb2_grpc: ModuleType
    management_pb2: ModuleType
    management_pb2_grpc: ModuleType


def jar_path() -> Path:
    """TorchServe's front-end jar inside the installed torchserve package; UsageError when it is not installed."""
    found = importlib.util.find_spec("ts")  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise UsageError(
            "TorchServe's gRPC client needs the torchserve package (its protos ship inside it); run `make setup`."
        )
    jar = Path(next(iter(found.submodule_search_locations))) / "frontend" / "model-server.jar"
    if not jar.is_file():
        raise UsageError(f"The torchserve package has no front-end jar at {jar}; reinstall it with `make setup`.")
    return jar


def read_protos(jar: Path) -> dict[str, bytes]:
    """The proto files' contents, by file name, from the jar."""
    try:
        with zipfile.ZipFile(jar) as bundle:
            return {name: bundle.read(JAR_PROTO_FOLDER + name) for name in PROTO_FILES}
    except (OSError, KeyError, zipfile.BadZipFile) as error:
        raise UsageError(f"Cannot read TorchServe's proto files from {jar}: {error}.") from None


def package_name(protos: dict[str, bytes]) -> str:
    """torchserve_grpc_<digest>: the same protos always give the same package, other protos another."""
    digest = hashlib.sha256()
    for name in sorted(protos):
        digest.update(name.encode() + b"\0" + protos[name] + b"\0")
    return PACKAGE_PREFIX + digest.hexdigest()[:12]


def _include_folder(module: str) -> str:
    """The folder that holds a module's package tree, which is also where its .proto files lie."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise UsageError(f"{module} is not installed; run `make setup`.")
    return str(Path(spec.origin).parents[module.count(".")])


def generate(cache_dir: Path, protos: dict[str, bytes]) -> Path:
    """Compile protos into cache_dir/<package>/ unless it is there; the package's folder.

    The stubs are built in a staging folder and renamed into place, so concurrent first uses (the stack's servers
    and clients start together) each see a whole package or none.
    """
    name = package_name(protos)
    target = Path(cache_dir) / name
    if (target / "__init__.py").is_file():
        return target
    # Imported only to compile: grpc_tools' protoc loaded into a process that already holds TensorFlow crashed it
    # (two segfaults in the version-churn soak), and a cached package needs no compiler.
    from grpc_tools import protoc

    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_dir))
    try:
        package = staging / name
        package.mkdir()
        for file_name, content in protos.items():
            (package / file_name).write_bytes(content)
        # The package's path inside the include root becomes the generated modules' import path.
        arguments = [
            "grpc_tools.protoc",
            f"-I{staging}",
            f"-I{_include_folder('grpc_tools')}/_proto",  # google/protobuf/empty.proto
            f"-I{_include_folder('google.rpc.status_pb2')}",  # google/rpc/status.proto (googleapis-common-protos)
            f"--python_out={staging}",
            f"--grpc_python_out={staging}",
            *(f"{name}/{file_name}" for file_name in PROTO_FILES),
        ]
        if protoc.main(arguments) != 0:
            raise UsageError(f"grpcio-tools could not compile TorchServe's proto files ({', '.join(PROTO_FILES)}).")
        (package / "__init__.py").write_text('"""Generated by serving.clients.torchserve_protos."""\n')
        try:
            os.rename(package, target)
        except OSError:
            if not (target / "__init__.py").is_file():  # not another process that got there first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _writable_cache_dir() -> Path:
    """CACHE_DIR, or a per-user temporary folder when the checkout cannot be written to."""
    try:
        CACHE_DIR.mkdir(parents=True, exist_ok=True)
        if os.access(CACHE_DIR, os.W_OK):
            return CACHE_DIR
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"torchserve_grpc-{os.getuid()}"


@functools.cache
def load() -> Stubs:
    """The stubs for the installed torchserve, generated first if the cache lacks them."""
    protos = read_protos(jar_path())
    name = package_name(protos)
    cache_dir = CACHE_DIR if (CACHE_DIR / name / "__init__.py").is_file() else _writable_cache_dir()
    generate(cache_dir, protos)  # nothing to do when the package is there
    # The generated *_pb2_grpc modules import their *_pb2 siblings as `<package>.<module>`, so the cache folder
    # goes on the import path.
    if str(cache_dir) not in sys.path:
        sys.path.append(str(cache_dir))
    modules = {field.name: importlib.import_module(f"{name}.{field.name}") for field in dataclasses.fields(Stubs)}
    return Stubs(**modules)


def main(argv: Sequence[str] | None = None) -> int:
    """Generate the stubs now (if needed) and print where they are."""
    from experiment.cli import run_main

    prog = "python -m serving.clients.torchserve_protos"
    if argv:
        print(f"{prog}: error: takes no arguments.", file=sys.stderr)
        return 2

    def body() -> int:
        module_file = load().inference_pb2.__file__  # generated modules are loaded from their files: never None
        print(Path(str(module_file)).parent)
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    raise SystemExit(main())
