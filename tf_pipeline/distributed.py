"""Which tf.distribute strategy a training process runs under, read from TF_CONFIG and the visible devices.

TensorFlow is imported only where a strategy is built: reading TF_CONFIG needs none, so a mistake in it (or in the
training flags) is reported before TensorFlow's start-up messages.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from experiment import processes, runs
from experiment.errors import UsageError

if TYPE_CHECKING:
    import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in a TF_CONFIG cluster: its worker index, how many workers, its own address."""

    index: int
    num_workers: int
    address: str | None  # host:port this worker serves collectives on; None for a single process

    @property
    def is_chief(self) -> bool:
        """Worker 0 is the chief: it alone logs to TensorBoard and exports (the multi-worker convention)."""
        return self.index == 0


def worker_role() -> WorkerRole:
    """Read TF_CONFIG (absent: one process); a malformed TF_CONFIG is a user mistake reported in one sentence."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return WorkerRole(index=0, num_workers=1, address=None)
    try:
        tf_config = json.loads(text)
        workers = list(tf_config["cluster"]["worker"])
        task = tf_config["task"]
        task_type, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError):
        raise UsageError(
            'TF_CONFIG must be JSON like {"cluster": {"worker": ["host:port", ...]}, '
            '"task": {"type": "worker", "index": 0}}.'
        ) from None
    if "chief" in tf_config["cluster"] or task_type != "worker":
        raise UsageError('TF_CONFIG must list only "worker" tasks; worker 0 acts as chief.')
    if not 0 <= index < len(workers):
        raise UsageError(f"TF_CONFIG task index {index} is outside the {len(workers)} listed workers.")
    return WorkerRole(index=index, num_workers=len(workers), address=workers[index])


def check_port_free(address: str) -> None:
    """Raise UsageError when this host cannot listen on address's port (another process holds it)."""
    _host, _, port_text = address.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        raise UsageError(f"Worker address {address!r} must end in :<port>.") from None
    if not processes.port_is_free(port):
        raise UsageError(
            f"Port {port} (worker address {address}) is already in use; pick another port for this worker."
        )


def strategy_for(role: WorkerRole) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy across TF_CONFIG workers, MirroredStrategy over several local GPUs, else the default.

    Must run before any other TensorFlow op in the process: the multi-worker strategy configures the runtime.
    """
    import tensorflow as tf

    if role.num_workers > 1:
        check_port_free(role.address or "")
        # RING: CPU collectives over gRPC; NCCL needs GPUs on every worker.
        implementation = (
            tf.distribute.experimental.CommunicationImplementation.NCCL
            if tf.config.list_physical_devices("GPU")
            else tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(implementation=implementation)
        )
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()  # the default strategy: plain single-device execution


def strategy_name(strategy: tf.distribute.Strategy) -> str:
    """The public name of a strategy (MultiWorkerMirroredStrategy's class is called CollectiveAllReduceStrategy)."""
    import tensorflow as tf

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return "MultiWorkerMirroredStrategy"
    if isinstance(strategy, tf.distribute.MirroredStrategy):
        return "MirroredStrategy"
    return "default"


@contextlib.contextmanager
def collective_failures(role: WorkerRole) -> Iterator[None]:
    """Around a collective call: a failure of a multi-worker run's collective becomes runs.WorkerLost.

    A peer that died (or became unreachable) aborts the collectives of everyone still waiting on it, which TensorFlow
    reports as an OpError. Only collective calls sit inside this block, so a bug elsewhere keeps its own error.
    """
    import tensorflow as tf

    try:
        yield
    except tf.errors.OpError as error:
        if role.num_workers == 1:
            raise
        raise runs.WorkerLost(
            f"worker {role.index} stopped: a collective with the other workers failed ({type(error).__name__}); "
            "nothing was exported."
        ) from None
