"""TensorBoard logging for the Keras run, with the layout and tags Keras's TensorBoard callback writes.

The training loop is a custom step under a tf.distribute strategy (see train.py), so the callback cannot be used;
RunWriters writes what it would: <run>/train and <run>/validation with `epoch_loss` and `epoch_accuracy`,
`<layer>/<weight>/histogram`, the op graph and the conceptual graph, and in <run> itself the test metrics, the
confusion matrix and the HParams trial. torch_pipeline/summaries.py writes the same entries.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from tensorboard.plugins.graph import metadata as graph_metadata

from experiment import metrics


class RunWriters:
    """Writers for <run>/train and <run>/validation (per-epoch summaries) and <run> itself (end-of-run summaries)."""

    def __init__(self, run_dir: Path, trial_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.trial_id = trial_id
        self.started = time.time()
        self.train = tf.summary.create_file_writer(str(self.run_dir / metrics.TRAIN_SUBDIR))
        self.validation = tf.summary.create_file_writer(str(self.run_dir / metrics.VALIDATION_SUBDIR))

    def add_graph(self, model: keras.Model) -> None:
        """The model on the train writer, as the Keras callback draws it: its conceptual graph and its op graph."""
        metadata = tf.compat.v1.SummaryMetadata()
        # The plugin that draws a conceptual graph from a model's JSON config (what the callback's write_graph uses).
        metadata.plugin_data.plugin_name = graph_metadata.PLUGIN_NAME_KERAS_MODEL
        metadata.plugin_data.content = b"1"  # the plugin's data version
        # The op graph of the forward pass, traced on its own: the distributed train step is left untouched,
        # since retracing it on the chief alone would desynchronise the workers' collectives.
        input_spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32)  # (N, H, W)
        forward = tf.function(lambda images: model(images, training=False)).get_concrete_function(input_spec)
        with self.train.as_default():
            tf.summary.write(tag=metrics.CONCEPTUAL_GRAPH, tensor=model.to_json(), step=0, metadata=metadata)
            tf.summary.graph(forward.graph)

    def log_epoch(
        self,
        epoch: int,
        train_loss: float,
        train_accuracy: float,
        validation_loss: float,
        validation_accuracy: float,
        model: keras.Model,
    ) -> None:
        """Epoch scalars under Keras's tags, and a histogram of every weight named `<weight path>/histogram`."""
        with self.train.as_default():
            tf.summary.scalar(metrics.EPOCH_ACCURACY, train_accuracy, step=epoch)
            tf.summary.scalar(metrics.EPOCH_LOSS, train_loss, step=epoch)
            for layer in model.layers:
                for weight in layer.weights:  # paths like hidden_0/kernel, hidden_0/bias
                    tag = f"{weight.path.replace(':', '_')}/histogram"
                    tf.summary.histogram(tag, weight.numpy(), step=epoch, buckets=metrics.HISTOGRAM_BUCKETS)
        with self.validation.as_default():
            tf.summary.scalar(metrics.EPOCH_ACCURACY, validation_accuracy, step=epoch)
            tf.summary.scalar(metrics.EPOCH_LOSS, validation_loss, step=epoch)

    def write_final_summaries(
        self, *, hparams: dict[str, Any], test_accuracy: float, test_loss: float, confusion: np.ndarray, step: int
    ) -> None:
        """The HParams trial with its final metrics, and the test confusion matrix, into the run's root folder."""
        root = tf.summary.create_file_writer(str(self.run_dir))
        with root.as_default():
            # TensorBoard's protocol buffers written by TensorFlow's own op: the same bytes the torch side writes.
            for summary in metrics.hparams_summaries(hparams, self.trial_id, self.started):
                tf.summary.experimental.write_raw_pb(summary.SerializeToString(), step=0)
            tf.summary.scalar(metrics.TEST_ACCURACY, test_accuracy, step=step)
            tf.summary.scalar(metrics.TEST_LOSS, test_loss, step=step)
            image = metrics.confusion_matrix_image(confusion, f"TensorFlow: test accuracy {test_accuracy:.3f}")
            tf.summary.image(metrics.CONFUSION_MATRIX, image[np.newaxis], step=step)  # (1, H, W, 3)
        root.close()

    def close(self) -> None:
        """Flush and close the per-epoch writers."""
        self.train.close()
        self.validation.close()
