"""Shared fixtures: small, fast training runs of each pipeline into temporary folders, made once per session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def digits():
    """The default dataset, split with seed 0."""
    from experiment.data import load_dataset

    return load_dataset(seed=0)


@pytest.fixture(scope="session")
def tf_run(tmp_path_factory, digits):
    """One short Keras run (2 epochs) exported into a temporary models/ and runs/ folder."""
    from tf_pipeline.train import TFTrainConfig, train

    root = tmp_path_factory.mktemp("tf_run")
    config = TFTrainConfig(
        epochs=2, output_dir=root / "models", log_dir=root / "runs", run_name="smoke", verbose=0
    )
    return train(config, digits)


@pytest.fixture(scope="session")
def torch_run(tmp_path_factory, digits):
    """One short torch run (2 epochs) exported into a temporary models/ and runs/ folder."""
    from torch_pipeline.train import TorchTrainConfig, train

    root = tmp_path_factory.mktemp("torch_run")
    config = TorchTrainConfig(
        epochs=2, output_dir=root / "models", log_dir=root / "runs", run_name="smoke", progress=False
    )
    return train(config, digits)
