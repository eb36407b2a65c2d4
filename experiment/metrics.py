"""TensorBoard tag names shared by both pipelines, and the framework-free pictures they log."""

from __future__ import annotations

import io

import numpy as np

# Keras's TensorBoard callback writes these tags into <run>/train and <run>/validation;
# the torch pipeline writes the same tags into the same sub-folders, so TensorBoard overlays them.
TRAIN_SUBDIR = "train"
VALIDATION_SUBDIR = "validation"
EPOCH_LOSS = "epoch_loss"
EPOCH_ACCURACY = "epoch_accuracy"
SCALAR_TAGS = (EPOCH_LOSS, EPOCH_ACCURACY)

# Written once at the end of a run, into the run's root folder.
TEST_ACCURACY = "test_accuracy"
TEST_LOSS = "test_loss"
CONFUSION_MATRIX = "test_confusion_matrix"


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes): row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion_matrix_image(matrix: np.ndarray, title: str) -> np.ndarray:
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
