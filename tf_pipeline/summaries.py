"""TensorBoard logging for the Keras run, with the layout and tags Keras's TensorBoard callback writes.

The training loop is a custom step under a tf.distribute strategy (see train.py), so the callback cannot be used;
RunWriters writes what it would: <run>/train and <run>/validation, `epoch_loss`, `epoch_accuracy`,
`epoch_learning_rate`, `evaluation_*_vs_iterations`, `<layer>/<weight>/histogram` and the `keras` model graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from experiment import metrics

# The plugin that draws a Keras model's conceptual graph from its JSON config (what the callback's write_graph uses).
KERAS_GRAPH_PLUGIN = "graph_keras_model"
KERAS_GRAPH_TAG = "keras"


class RunWriters:
    """Writers for <run>/train and <run>/validation (per-epoch summaries) and <run> itself (end-of-run summaries)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.train = tf.summary.create_file_writer(str(self.run_dir / metrics.TRAIN_SUBDIR))
        self.validation = tf.summary.create_file_writer(str(self.run_dir / metrics.VALIDATION_SUBDIR))

    def add_graph(self, model: keras.Model) -> None:
        """The model on the train writer, as the Keras callback draws it: its conceptual graph and its op graph."""
        metadata = tf.compat.v1.SummaryMetadata()
        metadata.plugin_data.plugin_name = KERAS_GRAPH_PLUGIN
        metadata.plugin_data.content = b"1"  # the plugin's data version
        # The op graph of the forward pass, traced on its own: the distributed train step is left untouched,
        # since retracing it on the chief alone would desynchronise the workers' collectives.
        input_spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)  # (N, H, W)
        forward = tf.function(lambda images: model(images, training=False)).get_concrete_function(input_spec)
        with self.train.as_default():
            tf.summary.write(tag=KERAS_GRAPH_TAG, tensor=model.to_json(), step=0, metadata=metadata)
            tf.summary.graph(forward.graph)

    def log_epoch(
        self,
        epoch: int,
        train_loss: float,
        train_accuracy: float,
        validation_loss: float,
        validation_accuracy: float,
        learning_rate: float,
        iterations: int,
        model: keras.Model,
    ) -> None:
        """Epoch scalars under Keras's tags, and a histogram of every weight named `<weight path>/histogram`."""
        with self.train.as_default():
            tf.summary.scalar(metrics.EPOCH_ACCURACY, train_accuracy, step=epoch)
            tf.summary.scalar(metrics.EPOCH_LOSS, train_loss, step=epoch)
            tf.summary.scalar("epoch_learning_rate", learning_rate, step=epoch)
            for layer in model.layers:
                for weight in layer.weights:  # paths like hidden_0/kernel, hidden_0/bias
                    tf.summary.histogram(f"{weight.path.replace(':', '_')}/histogram", weight.numpy(), step=epoch)
        with self.validation.as_default():
            # Keras's callback logs validation against optimizer iterations as well as against epochs.
            tf.summary.scalar("evaluation_accuracy_vs_iterations", validation_accuracy, step=iterations)
            tf.summary.scalar("evaluation_loss_vs_iterations", validation_loss, step=iterations)
            tf.summary.scalar(metrics.EPOCH_ACCURACY, validation_accuracy, step=epoch)
            tf.summary.scalar(metrics.EPOCH_LOSS, validation_loss, step=epoch)

    def close(self) -> None:
        """Flush and close the per-epoch writers."""
        self.train.close()
        self.validation.close()


def write_final_summaries(
    run_dir: Path,
    *,
    hparams: dict[str, Any],
    run_name: str,
    test_accuracy: float,
    test_loss: float,
    confusion: np.ndarray,
    step: int,
) -> None:
    """Write into the run's root folder, beside the train/ and validation/ sub-runs."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        # hparams_pb builds the protocol buffer alone; TensorFlow's own op writes it. (hparams_api.hparams would go
        # through tensorboard.compat, which a torch-only import in the same process may have pointed at a stub.)
        summary = hparams_api.hparams_pb(hparams, trial_id=run_name)
        tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
        tf.summary.scalar(metrics.TEST_ACCURACY, test_accuracy, step=step)
        tf.summary.scalar(metrics.TEST_LOSS, test_loss, step=step)
        image = metrics.confusion_matrix_image(confusion, f"TensorFlow: test accuracy {test_accuracy:.3f}")
        tf.summary.image(metrics.CONFUSION_MATRIX, image[np.newaxis], step=step)  # (1, H, W, 3)
    writer.close()
