"""End-of-run TensorBoard summaries for the Keras run: hparams, test metrics, confusion-matrix image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from experiment import metrics


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
    """Write into the run's root folder, beside Keras's train/ and validation/ sub-runs."""
    writer = tf.summary.create_file_writer(str(run_dir))
    with writer.as_default():
        hparams_api.hparams(hparams, trial_id=run_name)
        tf.summary.scalar(metrics.TEST_ACCURACY, test_accuracy, step=step)
        tf.summary.scalar(metrics.TEST_LOSS, test_loss, step=step)
        image = metrics.confusion_matrix_image(confusion, f"TensorFlow: test accuracy {test_accuracy:.3f}")
        tf.summary.image(metrics.CONFUSION_MATRIX, image[np.newaxis], step=step)  # (1, H, W, 3)
    writer.close()
