"""The network of experiment.spec built with the Keras functional API; imports only Keras."""

from __future__ import annotations

import keras

from experiment.spec import INPUT_NAME, NetworkSpec


def build_model(spec: NetworkSpec, seed: int = 0) -> keras.Model:
    """A Keras model mapping raw images (N, H, W) to logits (N, num_classes)."""
    images = keras.Input(shape=spec.input_shape, dtype="float32", name=INPUT_NAME)  # (N, H, W)
    hidden = keras.layers.Rescaling(1.0 / spec.pixel_max, name="scale")(images)  # raw intensities → [0, 1]
    hidden = keras.layers.Flatten(name="flatten")(hidden)  # (N, H*W)
    for index, size in enumerate(spec.hidden_sizes):
        hidden = keras.layers.Dense(
            size,
            activation=spec.activation,
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + index),
            bias_initializer="zeros",
            name=f"hidden_{index}",
        )(hidden)
        if spec.dropout > 0:
            hidden = keras.layers.Dropout(spec.dropout, seed=seed + index, name=f"dropout_{index}")(hidden)
    logits = keras.layers.Dense(
        spec.num_classes,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed + len(spec.hidden_sizes)),
        bias_initializer="zeros",
        name="logits",
    )(hidden)  # (N, num_classes)
    return keras.Model(images, logits, name="mlp")


def dense_layer_names(spec: NetworkSpec) -> list[str]:
    """Names of the dense layers in order, the same names the torch model gives its linear layers."""
    return [f"hidden_{index}" for index in range(len(spec.hidden_sizes))] + ["logits"]
