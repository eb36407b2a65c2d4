"""Train the Keras model, log to TensorBoard under runs/tf/<run>, export models/tf/<model>/<version>/.

One training loop for every process layout: a compiled step run through a tf.distribute strategy, the default
strategy in a single process, MirroredStrategy when one process sees several GPUs, MultiWorkerMirroredStrategy
when TF_CONFIG lists several workers (start them with `python -m tf_pipeline.launch`). Keras 3's model.fit cannot
run under MultiWorkerMirroredStrategy, so the loop is written out here with Keras's optimizer, loss and progress bar.

Run with `python -m tf_pipeline.train --help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np

from experiment import artifacts, library_logs, metrics, processes, runs
from experiment.cli import run_main
from experiment.config import ADAM_EPSILON, TrainConfig, config_field, parse_config, per_replica_batch_size
from experiment.data import Dataset, Split, load_dataset
from experiment.errors import UsageError
from experiment.spec import NetworkSpec

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from tf_pipeline import checkpoints, distributed, summaries

FRAMEWORK = "tf"
PROG = "python -m tf_pipeline.train"
EVALUATION_BATCH_SIZE = 1024


@dataclasses.dataclass(frozen=True)
class TFTrainConfig(TrainConfig):
    """The shared settings plus what only the Keras side has."""

    # 64 covers a whole epoch of the digits (37 steps) in one call: Python's per-call overhead is most of this
    # small network's step time. The progress bar updates once per call.
    steps_per_execution: int = config_field(
        64, "training steps run per call into the compiled graph; the progress bar updates once per call"
    )
    verbose: int = config_field(1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch")
    weight_checksums: Path | None = config_field(
        None,
        "folder where each worker writes a checksum of its weights after every step (worker-<index>.txt), "
        "to check that replicas stay identical; runs one step per call",
    )

    framework = FRAMEWORK

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps_per_execution <= 0:
            raise UsageError(f"--steps-per-execution must be a positive integer, got {self.steps_per_execution}.")
        if self.verbose not in (0, 1, 2):
            raise UsageError(f"--verbose must be 0, 1 or 2, got {self.verbose}.")


def training_dataset(split: Split, batch_size: int, seed: int) -> tf.data.Dataset:
    """Endless (images, labels, weights) global batches, reshuffled each epoch from the seed.

    weights (B,) are 1 / B for the batch each example is in, so summing weighted losses over every replica gives the
    mean over the global batch, also for an epoch's short last batch (tf.nn.compute_average_loss with a fixed global
    batch size would under-weight it). repeat() after batch keeps every epoch's last short batch, and an endless
    dataset lets the distributed iterator skip its per-step "does any worker still have data" collective.
    """
    import tensorflow as tf

    def with_weights(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        size = tf.shape(labels)[0]
        return images, labels, tf.fill([size], 1.0 / tf.cast(size, tf.float32))

    dataset = (
        tf.data.Dataset.from_tensor_slices((split.images, split.labels))  # (H, W) float32, () int64
        .shuffle(len(split), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(with_weights)
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    options = tf.data.Options()
    # Every worker builds the same shuffled stream and keeps its own slice of each global batch.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.deterministic = True
    return dataset.with_options(options)


def evaluate(
    model: keras.Model, split: Split, logits_of: Callable[[tf.Tensor], tf.Tensor] | None = None
) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predicted classes over a split, in inference mode (logits_of: a compiled forward)."""
    import keras
    import tensorflow as tf

    logits_of = logits_of or inference_function(model)
    losses, predictions = [], []
    for start in range(0, len(split), EVALUATION_BATCH_SIZE):
        images = split.images[start : start + EVALUATION_BATCH_SIZE]
        labels = split.labels[start : start + EVALUATION_BATCH_SIZE]
        logits = logits_of(tf.constant(images))  # (B, C)
        losses.append(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy())
        predictions.append(np.argmax(logits.numpy(), axis=-1))
    predicted = np.concatenate(predictions)
    return float(np.concatenate(losses).mean()), float((predicted == split.labels).mean()), predicted


def inference_function(model: keras.Model) -> Callable[[tf.Tensor], tf.Tensor]:
    """model(images, training=False) compiled once: images (N, H, W) → logits (N, C), any N without retracing."""
    import tensorflow as tf

    return tf.function(lambda images: model(images, training=False), reduce_retracing=True)


def _weights_checksum(model: keras.Model, strategy: tf.distribute.Strategy) -> list[str]:
    """A SHA-256 of every weight's bytes, one per replica held by this process (its local copies)."""
    copies = [strategy.experimental_local_results(weight.value) for weight in model.weights]
    replicas = len(copies[0])
    return [
        hashlib.sha256(b"".join(np.asarray(copy[replica]).tobytes() for copy in copies)).hexdigest()
        for replica in range(replicas)
    ]


@dataclasses.dataclass
class _Run:
    """What one worker's training works with, built by _set_up and read by every later step."""

    config: TFTrainConfig
    dataset: Dataset
    role: distributed.WorkerRole
    strategy: tf.distribute.Strategy
    run_name: str
    run_dir: Path
    base_path: Path
    spec: NetworkSpec
    model: keras.Model  # mirrored variables: one copy per replica
    optimizer: keras.optimizers.Optimizer
    totals: tf.Variable  # [loss sum, correct, examples] of the epoch so far; a read sums every replica's
    writers: summaries.RunWriters | None  # the chief alone logs and exports
    saver: checkpoints.TrainingCheckpoints | None = None
    checksum_file: TextIO | None = None


def train(config: TFTrainConfig, dataset: Dataset | None = None) -> runs.TrainingResult:
    """Train (data-parallel when TF_CONFIG lists several workers), evaluate, log and export on the chief."""
    run = _set_up(config, dataset)
    position = _resume(run)
    try:
        _train_epochs(run, position)
    finally:
        if run.checksum_file:
            run.checksum_file.close()
        if run.saver:
            run.saver.close()
    if not run.writers:  # a worker other than the chief
        return runs.TrainingResult(None, None, run.run_dir, math.nan, math.nan, position.training_seconds())
    return _evaluate_and_export(run, position.training_seconds())


def _set_up(config: TFTrainConfig, dataset: Dataset | None) -> _Run:
    """Check the user's settings and folders, then build the strategy, the model and the optimizer."""
    library_logs.quiet()  # keep TensorFlow's C++ start-up chatter off the terminal
    from tf_pipeline import distributed

    # User mistakes first, before TensorFlow is imported and prints its start-up messages.
    role = distributed.worker_role()
    per_replica_batch_size(config.batch_size, role.num_workers)  # one replica per worker on CPU
    dataset = dataset or load_dataset(config.data_dir, seed=config.seed)
    base_path = artifacts.model_base_path(config.output_dir, FRAMEWORK, dataset.name)
    run_name, run_dir = runs.start_run(config, dataset.name, role.is_chief)
    if role.is_chief:
        artifacts.check_writable(base_path)
        artifacts.check_writable(run_dir)
    if config.weight_checksums is not None:
        artifacts.check_writable(config.weight_checksums)

    strategy = distributed.strategy_for(role)  # before any TensorFlow op: the multi-worker strategy sets up the runtime
    import keras
    import tensorflow as tf

    from tf_pipeline import summaries
    from tf_pipeline.model import build_model

    per_replica_batch_size(config.batch_size, strategy.num_replicas_in_sync)  # several GPUs per worker
    keras.utils.set_random_seed(config.seed)
    spec = config.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    with strategy.scope():
        # Mirrored variables: one copy per replica, kept equal because every replica applies the same summed gradient.
        model = build_model(spec, seed=config.seed)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate, epsilon=ADAM_EPSILON)
        optimizer.build(model.trainable_variables)
        # Each replica adds its own share; an ON_READ SUM variable's read adds them up.
        totals = tf.Variable(
            tf.zeros([3]),
            trainable=False,
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.SUM,
        )
    writers = summaries.RunWriters(run_dir, metrics.trial_id(FRAMEWORK, run_name)) if role.is_chief else None
    if writers:
        writers.add_graph(model)
    return _Run(config, dataset, role, strategy, run_name, run_dir, base_path, spec, model, optimizer, totals, writers)


def _resume(run: _Run) -> runs.Position:
    """Restore the latest checkpoint if there is one and open the checksum file."""
    from tf_pipeline import checkpoints

    resumed = None
    if run.config.checkpoint_dir is not None:
        directory, is_chief = run.config.checkpoint_dir, run.role.is_chief
        run.saver = checkpoints.TrainingCheckpoints(directory, run.model, run.optimizer, is_chief)
        resumed = run.saver.restore_latest()
        if resumed and run.role.is_chief:
            print(f"resuming run {run.run_name} from the checkpoint of step {resumed.step}", flush=True)
    if run.config.weight_checksums is not None:
        # A resumed run adds to the lines its first attempt wrote.
        path = Path(run.config.weight_checksums) / f"worker-{run.role.index}.txt"
        run.checksum_file = open(path, "a" if resumed else "w")  # noqa: SIM115
    return runs.Position.resuming(resumed)


def _train_epochs(run: _Run, position: runs.Position) -> None:
    """Every epoch the checkpoint does not hold yet, each followed by its logged evaluation, then a last checkpoint."""
    import tensorflow as tf

    from tf_pipeline import distributed

    # The seeded stream is the same in every run: skipping the steps a checkpoint holds puts a resumed run on the
    # batch an uninterrupted one would train on next.
    batches = training_dataset(run.dataset.train, run.config.batch_size, run.config.seed).skip(position.step)
    iterator = iter(run.strategy.experimental_distribute_dataset(batches))  # each replica's slice of every batch
    train_steps = _compiled_train_steps(run)
    validation_logits = inference_function(run.model)  # traced once, reused every epoch
    steps_per_epoch = math.ceil(len(run.dataset.train) / run.config.batch_size)
    first_epoch, skipped = divmod(position.step, steps_per_epoch)
    for epoch in range(first_epoch, run.config.epochs):
        # Assigning a sync-on-read variable across replicas is a collective too (a CollectiveReduce in TensorFlow).
        with distributed.collective_failures(run.role):
            run.totals.assign(tf.zeros([3]))
        step, earlier_totals = 0, np.zeros(3)
        if epoch == first_epoch and position.resumed:
            step, earlier_totals = skipped, np.asarray(position.resumed.epoch_totals)  # the epoch's restored share
        progress = _progress_bar(run, epoch, steps_per_epoch)
        loss_sum, correct, examples = _train_one_epoch(
            run, position, train_steps, iterator, progress, step, steps_per_epoch, earlier_totals
        )
        _log_epoch(run, epoch, float(loss_sum / examples), float(correct / examples), progress, validation_logits)
    if run.saver and position.step % run.config.checkpoint_every != 0:
        _save_checkpoint(run, position, np.zeros(3))  # the finished weights: a restart goes straight to export


def _compiled_train_steps(run: _Run) -> Callable[..., tf.Tensor]:
    """A tf.function that runs num_steps optimizer steps on every replica and returns the epoch's totals so far."""
    import keras
    import tensorflow as tf

    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    model, optimizer, totals = run.model, run.optimizer, run.totals

    def replica_step(images: tf.Tensor, labels: tf.Tensor, weights: tf.Tensor) -> None:
        # One replica's share of a global batch: images (b, H, W), labels (b,), weights (b,) = 1 / global batch.
        with tf.GradientTape() as tape:
            logits = model(images, training=True)  # (b, C)
            per_example_loss = loss_function(labels, logits)  # (b,)
            loss = tf.reduce_sum(per_example_loss * weights)  # this replica's part of the global-batch mean
        gradients = tape.gradient(loss, model.trainable_variables)
        # Under a distribution strategy Keras's optimizer all-reduces (sums) the gradients across replicas.
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, axis=-1), labels), tf.float32))
        totals.assign_add(tf.stack([tf.reduce_sum(per_example_loss), correct, tf.cast(tf.size(labels), tf.float32)]))

    @tf.function
    def train_steps(iterator: tf.distribute.DistributedIterator, num_steps: tf.Tensor) -> tf.Tensor:
        # Several steps per call keep Python out of the inner loop; one collective read of the totals per call.
        for _ in tf.range(num_steps):
            run.strategy.run(replica_step, args=next(iterator))
        return totals.read_value()

    return train_steps


def _train_one_epoch(
    run: _Run,
    position: runs.Position,
    train_steps: Callable[..., tf.Tensor],
    iterator: Iterator[Any],
    progress: keras.utils.Progbar,
    step: int,
    steps_per_epoch: int,
    earlier_totals: np.ndarray,
) -> np.ndarray:
    """The epoch's remaining steps, several per call; returns [loss sum, correct, examples] over every replica."""
    import tensorflow as tf

    from tf_pipeline import distributed

    steps_per_call = 1 if run.checksum_file else run.config.steps_per_execution
    while step < steps_per_epoch:
        num_steps = min(steps_per_call, steps_per_epoch - step)
        if run.saver:  # stop each call at a checkpoint boundary
            num_steps = min(num_steps, run.config.checkpoint_every - position.step % run.config.checkpoint_every)
        with distributed.collective_failures(run.role):  # the gradients' all-reduce and the totals' read
            epoch_totals = earlier_totals + train_steps(iterator, tf.constant(num_steps)).numpy()
        loss_sum, correct, examples = epoch_totals
        step += num_steps
        position.step += num_steps
        if run.checksum_file:
            for replica, checksum in enumerate(_weights_checksum(run.model, run.strategy)):
                run.checksum_file.write(f"{position.step} {replica} {checksum}\n")
        if run.saver and position.step % run.config.checkpoint_every == 0:
            _save_checkpoint(run, position, epoch_totals)
        if progress.verbose == 1 and step < steps_per_epoch:
            progress.update(step, [("accuracy", correct / examples), ("loss", loss_sum / examples)])
    return epoch_totals


def _progress_bar(run: _Run, epoch: int, steps_per_epoch: int) -> keras.utils.Progbar:
    """Keras's progress bar for one epoch; silent on every worker but the chief."""
    import keras

    verbose = run.config.verbose if run.role.is_chief else 0
    if verbose:
        print(f"Epoch {epoch + 1}/{run.config.epochs}", flush=True)
    metric_names = ["accuracy", "loss", "val_accuracy", "val_loss"]
    return keras.utils.Progbar(steps_per_epoch, verbose=verbose, stateful_metrics=metric_names, unit_name="step")


def _log_epoch(
    run: _Run,
    epoch: int,
    train_loss: float,
    train_accuracy: float,
    progress: keras.utils.Progbar,
    validation_logits: Callable[[tf.Tensor], tf.Tensor],
) -> None:
    """The chief evaluates the validation split and logs the epoch to TensorBoard and the progress bar."""
    if not run.writers:
        return
    validation_loss, validation_accuracy, _ = evaluate(run.model, run.dataset.validation, validation_logits)
    run.writers.log_epoch(epoch, train_loss, train_accuracy, validation_loss, validation_accuracy, run.model)
    logs = [
        ("accuracy", train_accuracy),
        ("loss", train_loss),
        ("val_accuracy", validation_accuracy),
        ("val_loss", validation_loss),
    ]
    progress.update(progress.target, logs, finalize=True)


def _save_checkpoint(run: _Run, position: runs.Position, epoch_totals: np.ndarray) -> None:
    """Save the weights, the optimizer and the loop's position (every worker takes part; the chief's copy is kept)."""
    from tf_pipeline import checkpoints, distributed

    totals = tuple(float(value) for value in epoch_totals)
    state = checkpoints.LoopState(position.step, totals, position.training_seconds())
    with distributed.collective_failures(run.role):
        run.saver.save(state)


def _evaluate_and_export(run: _Run, training_seconds: float) -> runs.TrainingResult:
    """The chief: evaluate the test split, write the end-of-run summaries, publish the SavedModel."""
    import keras
    import tensorflow as tf

    from tf_pipeline import distributed, export
    from tf_pipeline.model import build_model

    # The chief exports a plain copy built outside the strategy: the SavedModel then holds ordinary variables,
    # the same artifact a single-process run writes.
    serving_model = build_model(run.spec, seed=run.config.seed)
    serving_model.set_weights(run.model.get_weights())
    evaluation = runs.Evaluation(*evaluate(serving_model, run.dataset.test))
    runs.finish_summaries(run.writers, run.config, run.dataset, evaluation)
    metadata = runs.export_metadata(
        framework="tensorflow",
        framework_version=tf.__version__,
        dataset=run.dataset,
        spec=run.spec,
        hyperparameters={**run.config.hyperparameters(), "steps_per_execution": run.config.steps_per_execution},
        evaluation=evaluation,
        training_seconds=training_seconds,
        run_name=run.run_name,
        extra={
            "keras_version": keras.__version__,
            "distribution": {
                "strategy": distributed.strategy_name(run.strategy),
                "workers": run.role.num_workers,
                "replicas": run.strategy.num_replicas_in_sync,
            },
        },
    )
    with artifacts.staging_directory(run.base_path) as staging:
        export.write_saved_model(serving_model, run.spec, staging)
        artifacts.write_metadata(staging, metadata)
        version, export_path = artifacts.publish_version(staging, run.base_path)
    run_dir = run.run_dir
    return runs.TrainingResult(version, export_path, run_dir, evaluation.accuracy, evaluation.loss, training_seconds)


def _device() -> str:
    """Where training ran, in the summary's words: the GPUs TensorFlow found, or the CPU on a machine without one."""
    import tensorflow as tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    return f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "the CPU (TensorFlow found no GPU on this machine)"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        config = parse_config(TFTrainConfig, argv, PROG, "Train the Keras model and export a SavedModel.")
        try:
            result = train(config)
        except runs.WorkerLost as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        if result.export_path is None:
            print(f"worker finished after {result.training_seconds:.1f} s of training; worker 0 logs and exports")
            return 0
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.training_seconds:.1f} s of training on {_device()}\n"
            f"TensorBoard run: {result.run_dir}\n"
            f"SavedModel:      {result.export_path} (version {result.version})"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(processes.exit_status(main()))
