"""The TensorFlow/Keras side: build, train, log to TensorBoard and export a SavedModel for TensorFlow Serving."""
