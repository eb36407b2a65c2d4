"""TensorBoard tag names shared by both pipelines, and the framework-free summaries and pictures they log."""

from __future__ import annotations

import io
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from experiment.json_types import JSONScalar

if TYPE_CHECKING:
    from tensorboard.compat.proto import summary_pb2

# Keras's TensorBoard callback writes these tags into <run>/train and <run>/validation;
# the torch pipeline writes the same tags into the same sub-folders, so TensorBoard overlays them.
TRAIN_SUBDIR = "train"
VALIDATION_SUBDIR = "validation"
EPOCH_LOSS = "epoch_loss"
EPOCH_ACCURACY = "epoch_accuracy"
SCALAR_TAGS = (EPOCH_LOSS, EPOCH_ACCURACY)
# No learning-rate chart: the rate is constant (no schedule) and is an hparam; a flat line would also sort between
# epoch_accuracy and epoch_loss, and TensorBoard expands only the first two tag groups, hiding the loss.

# Weight histograms, named `<layer>/kernel/histogram` and `<layer>/bias/histogram` (Keras's names) in <run>/train,
# in equal-width buckets between the smallest and largest weight: tf.summary.histogram's default count.
HISTOGRAM_BUCKETS = 30
# The conceptual graph (the model's layers, drawn by TensorBoard from a Keras-style model config) in <run>/train.
CONCEPTUAL_GRAPH = "model"

# Written once at the end of a run, into the run's root folder.
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
CONFUSION_MATRIX = "test_confusion_matrix"


def trial_id(framework: str, run_name: str) -> str:
    """The HParams trial id: the run's folder under the log directory, which is also TensorBoard's name for it."""
    return f"{framework}/{run_name}"


def hparams_summaries(
    hparams: Mapping[str, JSONScalar], trial: str, start_time_secs: float
) -> list[summary_pb2.Summary]:
    """A finished HParams trial: its hyperparameter values (session start) and status SUCCESS (session end).

    No experiment summary is written. Given one, TensorBoard takes every hyperparameter's domain, whether it differs
    between trials, and the metric list from whichever run it reads first; without one it derives them from the runs
    present: `framework` is marked as differing and shown first, and the metrics are every scalar of the trial's run
    and its train/ and validation/ folders, the same list for either framework's runs.
    """
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2, summary_v2

    start = summary_v2.hparams_pb(hparams, trial_id=trial, start_time_secs=start_time_secs)
    end_info = plugin_data_pb2.SessionEndInfo(status=api_pb2.STATUS_SUCCESS, end_time_secs=time.time())
    end = summary_pb2.Summary()
    end.value.add(
        tag=metadata.SESSION_END_INFO_TAG,
        metadata=metadata.create_summary_metadata(plugin_data_pb2.HParamsPluginData(session_end_info=end_info)),
        tensor=metadata.NULL_TENSOR,
    )
    return [start, end]


def confusion_matrix(labels: npt.ArrayLike, predictions: npt.ArrayLike, num_classes: int) -> npt.NDArray[np.int64]:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion_matrix_image(matrix: npt.NDArray[np.int64], title: str) -> npt.NDArray[np.uint8]:
    """Render a confusion matrix as an RGB uint8 image (H, W, 3) for TensorBoard's image dashboard."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import image as matplotlib_image
    from matplotlib import pyplot

    num_classes = matrix.shape[0]
    figure, axes = pyplot.subplots(figsize=(5, 5), dpi=80)
    axes.imshow(matrix, cmap="Blues")
    axes.set_title(title)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_xticks(range(num_classes))
    axes.set_yticks(range(num_classes))
    threshold = matrix.max() / 2 if matrix.size else 0
    for row in range(num_classes):
        for column in range(num_classes):
            color = "white" if matrix[row, column] > threshold else "black"
            axes.text(column, row, str(matrix[row, column]), ha="center", va="center", color=color, fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    pyplot.close(figure)
    buffer.seek(0)
    image = matplotlib_image.imread(buffer, format="png")  # (H, W, 4) floats in [0, 1]
    return (image[..., :3] * 255).astype(np.uint8)
