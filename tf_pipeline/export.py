"""Export a trained Keras model as a SavedModel with TensorFlow Serving's signature (docs/architecture.md).

Beside the model goes TensorFlow Serving's warm-up file, assets.extra/tf_serving_warmup_requests: a TFRecord of
PredictionLog messages that a server replays before it serves the version (the real server with
--enable_model_warmup, its default, and this project's server alike), so the first client pays no first-call cost.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from experiment.spec import CLASSES, INPUT_NAME, PROBABILITIES, SIGNATURE_NAME, NetworkSpec


def serving_function(model: keras.Model, spec: NetworkSpec) -> tf.types.experimental.GenericFunction:
    """images float32 (N, H, W) → {probabilities float32 (N, C), classes int64 (N,)}, inference mode."""

    @tf.function(input_signature=[tf.TensorSpec([None, *spec.input_shape], tf.float32, name=INPUT_NAME)])
    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        logits = model(images, training=False)  # (N, C)
        return {
            PROBABILITIES: tf.nn.softmax(logits, axis=-1),
            CLASSES: tf.argmax(logits, axis=-1, output_type=tf.int64),
        }

    return serve


def write_saved_model(model: keras.Model, spec: NetworkSpec, directory: Path) -> None:
    """Write the SavedModel into directory (which the caller later publishes as a version folder)."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(name=SIGNATURE_NAME, fn=serving_function(model, spec))
    archive.write_out(str(directory), verbose=False)
    write_warmup_requests(directory, spec)


WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"


def write_warmup_requests(directory: Path, spec: NetworkSpec) -> Path:
    """Write the warm-up file: one Predict of a single blank image on the serving signature."""
    log = prediction_log_pb2.PredictionLog()
    request = log.predict_log.request
    request.model_spec.signature_name = SIGNATURE_NAME
    request.inputs[INPUT_NAME].CopyFrom(tf.make_tensor_proto(np.zeros((1, *spec.input_shape), np.float32)))  # (1, H, W)
    path = Path(directory) / WARMUP_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())
    return path
