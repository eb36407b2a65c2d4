"""Train the Keras model, log to TensorBoard under runs/tf/<run>, export models/tf/<model>/<version>/.

Run with `python -m tf_pipeline.train --help`.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Sequence

from experiment import artifacts, metrics
from experiment.cli import run_main
from experiment.config import ADAM_EPSILON, TrainConfig, config_field, parse_config
from experiment.data import Dataset, load_dataset

FRAMEWORK = "tf"
PROG = "python -m tf_pipeline.train"


@dataclasses.dataclass(frozen=True)
class TFTrainConfig(TrainConfig):
    """The shared settings plus what only Keras has."""

    steps_per_execution: int = config_field(1, "training steps Keras runs per call into the compiled graph")
    verbose: int = config_field(1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch")

    framework = FRAMEWORK

    def __post_init__(self) -> None:
        super().__post_init__()
        from experiment.errors import UsageError

        if self.steps_per_execution <= 0:
            raise UsageError(f"--steps-per-execution must be a positive integer, got {self.steps_per_execution}.")


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced."""

    version: int
    export_path: Path
    run_dir: Path
    test_accuracy: float
    test_loss: float
    training_seconds: float


def train(config: TFTrainConfig, dataset: Dataset | None = None) -> TrainingResult:
    """Train, evaluate, log and export; returns where everything went."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter off the terminal
    import keras
    import tensorflow as tf

    from tf_pipeline import export, summaries
    from tf_pipeline.model import build_model

    dataset = dataset or load_dataset(config.data_dir, seed=config.seed)
    base_path = artifacts.model_base_path(config.output_dir, FRAMEWORK, dataset.name)
    artifacts.check_writable(base_path)
    run_name = config.resolved_run_name()
    run_dir = Path(config.log_dir) / FRAMEWORK / run_name
    artifacts.check_writable(run_dir)

    keras.utils.set_random_seed(config.seed)
    spec = config.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    model = build_model(spec, seed=config.seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=ADAM_EPSILON),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],  # logged as epoch_accuracy
        steps_per_execution=config.steps_per_execution,
    )

    started = time.perf_counter()
    model.fit(
        dataset.train.images,
        dataset.train.labels,
        batch_size=config.batch_size,
        epochs=config.epochs,
        validation_data=(dataset.validation.images, dataset.validation.labels),
        shuffle=True,
        callbacks=[keras.callbacks.TensorBoard(log_dir=str(run_dir), histogram_freq=1, write_graph=True)],
        verbose=config.verbose,
    )
    training_seconds = time.perf_counter() - started

    test_loss, test_accuracy = model.evaluate(
        dataset.test.images, dataset.test.labels, batch_size=256, verbose=0, return_dict=False
    )
    logits = model.predict_on_batch(dataset.test.images)  # (N, C)
    predictions = tf.argmax(logits, axis=-1).numpy()
    summaries.write_final_summaries(
        run_dir,
        hparams=config.tensorboard_hparams(),
        run_name=run_name,
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        confusion=metrics.confusion_matrix(dataset.test.labels, predictions, dataset.num_classes),
        step=config.epochs,
    )

    metadata = artifacts.build_metadata(
        framework="tensorflow",
        framework_version=tf.__version__,
        dataset=dataset.name,
        network=spec.to_dict(),
        hyperparameters={**config.hyperparameters(), "steps_per_execution": config.steps_per_execution},
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        training_seconds=training_seconds,
        run_name=run_name,
        extra={"keras_version": keras.__version__},
    )
    with artifacts.staging_directory(base_path) as staging:
        export.write_saved_model(model, spec, staging)
        artifacts.write_metadata(staging, metadata)
        version, export_path = artifacts.publish_version(staging, base_path)
    return TrainingResult(version, export_path, run_dir, float(test_accuracy), float(test_loss), training_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        config = parse_config(TFTrainConfig, argv, PROG, "Train the Keras model and export a SavedModel.")
        result = train(config)
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.training_seconds:.1f} s of training\n"
            f"TensorBoard run: {result.run_dir}\n"
            f"SavedModel:      {result.export_path} (version {result.version})"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
