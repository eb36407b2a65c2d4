"""TensorBoard logging for the torch run with torch.utils.tensorboard, using the Keras callback's layout and tags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sys
import types

import numpy as np
import torch

if "tensorflow" not in sys.modules:
    # torch.utils.tensorboard asks tensorboard.compat for a TensorFlow API at import time, and tensorboard imports
    # the real TensorFlow when it is installed (seconds of start-up and hundreds of MiB for nothing). This marker
    # module is TensorBoard's own no-TensorFlow switch: it makes tensorboard use its bundled stub instead.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

from torch.utils.tensorboard import SummaryWriter  # noqa: E402  (after the switch above)
from torch.utils.tensorboard.summary import hparams as hparams_summary

from experiment import metrics


class RunWriters:
    """Writers for <run>/train, <run>/validation (per-epoch scalars) and <run> itself (end-of-run summaries)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.train = SummaryWriter(str(self.run_dir / metrics.TRAIN_SUBDIR))
        self.validation = SummaryWriter(str(self.run_dir / metrics.VALIDATION_SUBDIR))

    def add_graph(self, model: torch.nn.Module, example_images: torch.Tensor) -> None:
        """The model graph, traced from one example batch, on the train writer as Keras does."""
        was_training = model.training
        self.train.add_graph(model.eval(), example_images)
        model.train(was_training)

    def log_epoch(
        self,
        epoch: int,
        train_loss: float,
        train_accuracy: float,
        validation_loss: float,
        validation_accuracy: float,
        model: torch.nn.Module,
    ) -> None:
        """Scalars under Keras's tag names, and weight histograms named like Keras's (layer/kernel, layer/bias)."""
        self.train.add_scalar(metrics.EPOCH_LOSS, train_loss, epoch)
        self.train.add_scalar(metrics.EPOCH_ACCURACY, train_accuracy, epoch)
        self.validation.add_scalar(metrics.EPOCH_LOSS, validation_loss, epoch)
        self.validation.add_scalar(metrics.EPOCH_ACCURACY, validation_accuracy, epoch)
        for name, layer in model.dense_layers().items():
            self.train.add_histogram(f"{name}/kernel/histogram", layer.weight.detach().T, epoch)  # Keras's (in, out)
            self.train.add_histogram(f"{name}/bias/histogram", layer.bias.detach(), epoch)

    def write_final_summaries(
        self, *, hparams: dict[str, Any], test_accuracy: float, test_loss: float, confusion: np.ndarray, step: int
    ) -> None:
        """HParams with the final metrics, and the test confusion matrix, into the run's root folder."""
        root = SummaryWriter(str(self.run_dir))
        final_metrics = {metrics.TEST_ACCURACY: test_accuracy, metrics.TEST_LOSS: test_loss}
        # add_hparams would open a new sub-run; writing its three summaries here keeps one run per framework.
        for summary in hparams_summary(hparams, final_metrics):
            root.file_writer.add_summary(summary)
        for tag, value in final_metrics.items():
            root.add_scalar(tag, value, step)
        image = metrics.confusion_matrix_image(confusion, f"PyTorch: test accuracy {test_accuracy:.3f}")
        root.add_image(metrics.CONFUSION_MATRIX, image, step, dataformats="HWC")
        root.close()

    def close(self) -> None:
        """Flush and close the per-epoch writers."""
        self.train.close()
        self.validation.close()
