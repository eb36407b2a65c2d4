"""A TensorFlow Serving–compatible model server (gRPC and REST) for machines where tensorflow/serving cannot run."""
