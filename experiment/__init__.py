"""Framework-free definition of the experiment: dataset, network spec, config, artifact layout, metric names.

Neither TensorFlow nor PyTorch is imported here; both pipelines and the servers build on this package.
"""
