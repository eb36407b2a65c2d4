"""Training checkpoints of the Keras loop with tf.train.CheckpointManager: weights, Adam's state, the loop's position.

Under MultiWorkerMirroredStrategy every worker takes part in a save (reading distributed variables may need the
others), but only the chief writes into the checkpoint folder: the other workers write into a private temporary
folder (keeping one checkpoint, removed when training ends), as TensorFlow's multi-worker guide prescribes. On a
restart every worker restores the chief's latest checkpoint, so across machines the folder must be shared storage.

The Keras model's variables (beyond its weights) include the dropout layers' seed-generator states, so a resumed
run draws the same dropout masks an uninterrupted run would.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import tensorflow as tf

if TYPE_CHECKING:
    import keras

KEEP = 2


@dataclasses.dataclass(frozen=True)
class LoopState:
    """Where the training loop stands: global step, the epoch's running totals over every replica, time spent."""

    step: int
    epoch_totals: tuple[float, float, float]  # loss sum, correct, examples of the epoch under way, all replicas
    training_seconds: float


class TrainingCheckpoints:
    """Save and restore one run's model, optimizer and loop position in a folder."""

    def __init__(self, directory: Path, model: keras.Model, optimizer: keras.optimizers.Optimizer, is_chief: bool):
        self.directory = Path(directory)
        self.is_chief = is_chief
        # Plain variables for the loop's position; Keras variables are saved through their tf.Variable (.value):
        # a Keras 3 model is not itself a tf.train.Checkpoint dependency.
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False)
        self._epoch_totals = tf.Variable(tf.zeros([3], tf.float64), trainable=False)
        self._training_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False)
        self._checkpoint = tf.train.Checkpoint(
            variables=[variable.value for variable in model.variables],  # weights and the dropout seed generators
            optimizer=[variable.value for variable in optimizer.variables],  # iterations, Adam's moments
            step=self._step,
            epoch_totals=self._epoch_totals,
            training_seconds=self._training_seconds,
        )
        self._write_directory = self.directory if is_chief else Path(tempfile.mkdtemp(prefix="tf-checkpoint-"))
        self._manager = tf.train.CheckpointManager(
            self._checkpoint, str(self._write_directory), max_to_keep=KEEP if is_chief else 1
        )

    def latest(self) -> str | None:
        """The prefix of the chief's newest checkpoint, or None."""
        return tf.train.latest_checkpoint(str(self.directory))

    def restore_latest(self) -> LoopState | None:
        """Load the newest checkpoint into the model and optimizer; None (nothing changed) when there is none."""
        latest = self.latest()
        if latest is None:
            return None
        # Every saved value must find its variable: a checkpoint of another network is refused, not half-loaded.
        self._checkpoint.restore(latest).assert_consumed()
        totals = tuple(float(value) for value in self._epoch_totals.numpy())
        seconds = float(self._training_seconds.numpy())
        return LoopState(int(self._step.numpy()), totals, seconds)  # type: ignore[arg-type]

    def save(self, state: LoopState) -> None:
        """Save state with the current weights; every worker calls this, only the chief's copy is kept."""
        self._step.assign(state.step)
        self._epoch_totals.assign(tf.constant(state.epoch_totals, tf.float64))
        self._training_seconds.assign(state.training_seconds)
        self._manager.save(checkpoint_number=state.step)

    def close(self) -> None:
        """Remove a non-chief worker's temporary folder."""
        if not self.is_chief:
            shutil.rmtree(self._write_directory, ignore_errors=True)
