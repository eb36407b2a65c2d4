"""Export a trained Keras model as a SavedModel with TensorFlow Serving's signature (DESIGN.md)."""

from __future__ import annotations

from pathlib import Path

import keras
import tensorflow as tf

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
