"""TensorBoard logging for the torch run with torch.utils.tensorboard, using the Keras callback's layout and tags.

The same entries as tf_pipeline/summaries.py: <run>/train and <run>/validation with `epoch_loss` and
`epoch_accuracy`, `<layer>/kernel/histogram` and `<layer>/bias/histogram`, the op graph and the conceptual graph, and
in <run> itself the test metrics, the confusion matrix and the HParams trial.
"""

from __future__ import annotations

import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

if "tensorflow" not in sys.modules:
    # torch.utils.tensorboard asks tensorboard.compat for a TensorFlow API at import time, and tensorboard imports
    # the real TensorFlow when it is installed (seconds of start-up and hundreds of MiB for nothing). This marker
    # module is TensorBoard's own no-TensorFlow switch: it makes tensorboard use its bundled stub instead.
    sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))

# After the switch above: these imports read it.
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
from tensorboard.plugins.graph import metadata as graph_metadata
from tensorboard.plugins.histogram import summary_v2 as histogram_summary
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard._pytorch_graph import graph as traced_graph

from experiment import metrics


class RunWriters:
    """Writers for <run>/train, <run>/validation (per-epoch scalars) and <run> itself (end-of-run summaries)."""

    def __init__(self, run_dir: Path, trial_id: str) -> None:
        self.run_dir = Path(run_dir)
        self.trial_id = trial_id
        self.started = time.time()
        self.train = SummaryWriter(str(self.run_dir / metrics.TRAIN_SUBDIR))
        self.validation = SummaryWriter(str(self.run_dir / metrics.VALIDATION_SUBDIR))

    def add_graph(self, model: torch.nn.Module, example_images: torch.Tensor) -> None:
        """On the train writer, as Keras does: the op graph traced from one example batch, and the conceptual graph."""
        # SummaryWriter.add_graph would also write a "step1" profile that torch fills with no statistics (it has
        # no counterpart on the TF side); the traced GraphDef alone is the op graph.
        graph_def, _ = traced_graph(model, example_images)  # traced in eval mode, the mode restored afterwards
        self.train.file_writer.add_event(event_pb2.Event(graph_def=graph_def.SerializeToString()))
        self.train.file_writer.add_summary(_conceptual_graph_summary(model), 0)

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
        self.train.add_scalar(metrics.EPOCH_ACCURACY, train_accuracy, epoch)
        self.train.add_scalar(metrics.EPOCH_LOSS, train_loss, epoch)
        self.validation.add_scalar(metrics.EPOCH_ACCURACY, validation_accuracy, epoch)
        self.validation.add_scalar(metrics.EPOCH_LOSS, validation_loss, epoch)
        for name, layer in model.dense_layers().items():
            weights = {"kernel": layer.weight.detach().T, "bias": layer.bias.detach()}  # Keras's kernel is (in, out)
            for kind, values in weights.items():
                # TensorBoard's own histogram summary, the buckets tf.summary.histogram computes: add_histogram's
                # default bins would give hundreds of exponential buckets instead.
                summary = histogram_summary.histogram_pb(
                    f"{name}/{kind}/histogram", values.cpu().numpy(), buckets=metrics.HISTOGRAM_BUCKETS
                )
                self.train.file_writer.add_summary(summary, epoch)

    def write_final_summaries(
        self, *, hparams: dict[str, Any], test_accuracy: float, test_loss: float, confusion: np.ndarray, step: int
    ) -> None:
        """The HParams trial, the test metrics and the test confusion matrix, into the run's root folder."""
        root = SummaryWriter(str(self.run_dir))
        # Not add_hparams: it opens a sub-run of its own and declares an experiment config (see hparams_summaries).
        for summary in metrics.hparams_summaries(hparams, self.trial_id, self.started):
            root.file_writer.add_summary(summary, 0)
        root.add_scalar(metrics.TEST_ACCURACY, test_accuracy, step)
        root.add_scalar(metrics.TEST_LOSS, test_loss, step)
        image = metrics.confusion_matrix_image(confusion, f"PyTorch: test accuracy {test_accuracy:.3f}")
        root.add_image(metrics.CONFUSION_MATRIX, image, step, dataformats="HWC")
        root.close()

    def close(self) -> None:
        """Flush and close the per-epoch writers."""
        self.train.close()
        self.validation.close()


def conceptual_graph(model: torch.nn.Module) -> str:
    """The module's layers, in order, as a Keras Sequential config: what TensorBoard's conceptual-graph view reads."""
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    layers = [
        {"class_name": type(module).__name__, "config": {"name": name, "dtype": dtype}}
        for name, module in model.layers.named_children()  # scale, flatten, hidden_0, activation_0, ...
    ]
    return json.dumps({"class_name": "Sequential", "config": {"name": type(model).__name__.lower(), "layers": layers}})


def _conceptual_graph_summary(model: torch.nn.Module) -> summary_pb2.Summary:
    """The summary tf.summary.write gives the Keras model's JSON config on the TF side, built from the torch module."""
    config = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[conceptual_graph(model).encode()])
    summary_metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=graph_metadata.PLUGIN_NAME_KERAS_MODEL,
            content=b"1",  # the plugin's data version
        )
    )
    summary = summary_pb2.Summary()
    summary.value.add(tag=metrics.CONCEPTUAL_GRAPH, tensor=config, metadata=summary_metadata)
    return summary
