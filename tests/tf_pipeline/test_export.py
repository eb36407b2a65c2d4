"""The SavedModel reproduces the in-memory Keras model, normalisation included."""

from __future__ import annotations

import numpy as np

from experiment.spec import NetworkSpec


def test_reloaded_saved_model_equals_keras_model(tmp_path, digits):
    import tensorflow as tf

    from tf_pipeline.export import write_saved_model
    from tf_pipeline.model import build_model

    spec = NetworkSpec()
    model = build_model(spec, seed=3)
    write_saved_model(model, spec, tmp_path / "1")
    signature = tf.saved_model.load(str(tmp_path / "1")).signatures["serving_default"]

    images = digits.test.images[:50]  # raw 0..16: the model must normalise them itself
    exported = signature(images=tf.constant(images))
    logits = model(images, training=False).numpy()
    expected = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(exported["probabilities"].numpy(), expected, atol=1e-6)
    assert np.array_equal(exported["classes"].numpy(), logits.argmax(axis=-1))


def test_model_normalises_inside(digits):
    from tf_pipeline.model import build_model

    model = build_model(NetworkSpec(dropout=0.0), seed=0)
    scale_layer = model.get_layer("scale")
    scaled = scale_layer(digits.test.images[:2]).numpy()
    np.testing.assert_allclose(scaled, digits.test.images[:2] / 16.0, rtol=1e-6)
