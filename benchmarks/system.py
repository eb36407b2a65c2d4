"""What a measurement ran on: CPU model, cores, memory, library versions, thread settings and the date."""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import os
import platform
from pathlib import Path
from typing import Any

LIBRARIES = (
    "tensorflow",
    "keras",
    "torch",
    "tensorboard",
    "numpy",
    "grpcio",
    "tensorflow-serving-api",
    "flask",
    "uvicorn",
    "torchserve",
    "torch-model-archiver",
)
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or what platform knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@dataclasses.dataclass(frozen=True)
class Machine:
    """What the measurements ran on."""

    cpu_model: str
    logical_cores: int
    usable_cores: int
    physical_cores: int
    memory_gib: float
    os: str
    python: str
    load_average_1min: float


def machine() -> Machine:
    """CPU model, logical cores (total and usable by this process), memory, OS, Python and the load average."""
    import psutil

    from benchmarks.load import available_cores

    return Machine(
        cpu_model=cpu_model(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=available_cores(),
        physical_cores=psutil.cpu_count(logical=False) or 0,
        memory_gib=psutil.virtual_memory().total / 2**30,
        os=f"{platform.system()} {platform.release()}",
        python=platform.python_version(),
        load_average_1min=os.getloadavg()[0],
    )


def library_versions() -> dict[str, str]:
    """Installed version of each library the comparison uses ('not installed' when absent)."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def thread_settings() -> dict[str, Any]:
    """Thread-related environment variables and the thread pools each framework uses in this process."""
    import tensorflow as tf
    import torch

    settings: dict[str, Any] = {name: os.environ.get(name, "unset") for name in THREAD_VARIABLES}
    settings["torch.get_num_threads()"] = torch.get_num_threads()
    settings["torch.get_num_interop_threads()"] = torch.get_num_interop_threads()
    # 0 means "let TensorFlow choose" (one thread per core).
    settings["tf intra_op_parallelism_threads"] = tf.config.threading.get_intra_op_parallelism_threads()
    settings["tf inter_op_parallelism_threads"] = tf.config.threading.get_inter_op_parallelism_threads()
    return settings


def now() -> str:
    """The current local date and time, ISO format with time zone."""
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")
