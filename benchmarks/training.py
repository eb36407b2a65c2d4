"""Training measurements: each repeat of each pipeline in its own process, epoch times read from TensorBoard events.

The parent runs `python -m benchmarks.training --framework tf|torch --mode pipeline|bare ...` once per repeat so
every repeat starts cold and its peak RSS is its own. In `pipeline` mode the worker calls the pipeline's
`train(config, dataset)` unchanged; epoch boundaries come from the wall times of the `epoch_loss` events the pipeline
writes at the end of every epoch, so no pipeline code is edited to time it. In `bare` mode it runs the same network
with no TensorBoard, validation or export, to tell framework cost from the pipeline's own overhead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from benchmarks import stats
from experiment import metrics

FRAMEWORKS = ("tf", "torch")
RESULT_MARKER = "BENCHMARK-RESULT "
WORKER_TIMEOUT_SECONDS = 900


@dataclasses.dataclass(frozen=True)
class TrainingSettings:
    """How many repeats and epochs; the hyperparameters themselves are the pipelines' shared defaults."""

    repeats: int = 3
    epochs: int = 40
    bare_epochs: int = 8  # 0: skip the bare-loop overhead check
    seed: int = 0
    batch_size: int | None = None  # None: TrainConfig's default, the same on both sides
    threads: int = 0  # 0: each framework's default thread pools
    bare_thread_counts: tuple[int, ...] = (0, 1)  # the overhead check at default threads and at one thread


QUICK_TRAINING = TrainingSettings(repeats=1, epochs=2, bare_epochs=0)


# ---------------------------------------------------------------- worker side (runs in the child process)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def _config_kwargs(config_class: type, arguments: argparse.Namespace) -> dict[str, Any]:
    """Shared settings plus whatever quiet switch the pipeline's config offers."""
    names = {field.name for field in dataclasses.fields(config_class)}
    work_dir = Path(arguments.work_dir)
    kwargs: dict[str, Any] = {
        "epochs": arguments.epochs,
        "seed": arguments.seed,
        "output_dir": work_dir / "models",
        "log_dir": work_dir / "runs",
        "run_name": arguments.run_name,
    }
    if arguments.batch_size:
        kwargs["batch_size"] = arguments.batch_size
    for quiet in (("verbose", 0), ("progress", False)):
        if quiet[0] in names:
            kwargs[quiet[0]] = quiet[1]
    return kwargs


def _run_pipeline(arguments: argparse.Namespace) -> dict[str, Any]:
    from experiment.data import load_dataset

    if arguments.framework == "tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        from tf_pipeline.train import TFTrainConfig as config_class
        from tf_pipeline.train import train
    else:
        from torch_pipeline.train import TorchTrainConfig as config_class  # type: ignore[assignment]
        from torch_pipeline.train import train  # type: ignore[assignment]
    config = config_class(**_config_kwargs(config_class, arguments))
    dataset = load_dataset(config.data_dir, seed=config.seed)
    started = time.perf_counter()
    result = train(config, dataset)
    call_seconds = time.perf_counter() - started
    return {
        "framework": arguments.framework,
        "train_call_seconds": call_seconds,  # train() as a user calls it: training, evaluation, logging, export
        "training_seconds": result.training_seconds,  # the pipeline's own timer around its epoch loop
        "test_accuracy": result.test_accuracy,
        "test_loss": result.test_loss,
        "run_dir": str(result.run_dir),
        "export_path": str(result.export_path),
        "train_examples": len(dataset.train),
        "batch_size": config.batch_size,
        "epochs": config.epochs,
        "threads": _framework_threads(arguments.framework),
    }


def _framework_threads(framework: str) -> dict[str, int]:
    if framework == "tf":
        import tensorflow as tf

        return {
            "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
        }
    import torch

    return {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def set_threads(framework: str, threads: int) -> None:
    """Fix the framework's intra- and inter-op thread pools (before it has run any operation)."""
    if framework == "tf":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    else:
        import torch

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(threads)


def _steady_rate(epoch_end_times: Sequence[float], start: float, examples: int) -> dict[str, float]:
    """First-epoch seconds and examples/s over epochs 2..E from the end time of every epoch."""
    first_epoch = epoch_end_times[0] - start
    if len(epoch_end_times) < 2:
        return {"first_epoch_seconds": first_epoch}
    later = epoch_end_times[-1] - epoch_end_times[0]
    return {"first_epoch_seconds": first_epoch, "steady_samples_per_second": examples * (len(epoch_end_times) - 1) / later}


def _run_bare_tf(arguments: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf

    from experiment.config import ADAM_EPSILON, TrainConfig
    from experiment.data import load_dataset
    from tf_pipeline.model import build_model

    defaults = TrainConfig(seed=arguments.seed, **({"batch_size": arguments.batch_size} if arguments.batch_size else {}))
    dataset = load_dataset(seed=arguments.seed)
    images, labels = dataset.train.images, dataset.train.labels
    spec = defaults.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    steps_per_epoch = math.ceil(len(labels) / defaults.batch_size)
    results: dict[str, Any] = {"framework": "tf", "train_examples": len(labels), "batch_size": defaults.batch_size}

    def fit(steps_per_execution: int) -> dict[str, float]:
        keras.utils.set_random_seed(arguments.seed)
        model = build_model(spec, seed=arguments.seed)
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=defaults.learning_rate, epsilon=ADAM_EPSILON),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            steps_per_execution=steps_per_execution,
        )
        ends: list[float] = []
        record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.append(time.perf_counter()))
        started = time.perf_counter()
        model.fit(images, labels, batch_size=defaults.batch_size, epochs=arguments.epochs, verbose=0, callbacks=[record])
        return _steady_rate(ends, started, len(labels))

    results["keras_fit_steps_per_execution_1"] = fit(1)
    results[f"keras_fit_steps_per_execution_{steps_per_epoch}"] = fit(steps_per_epoch)

    # A hand-written tf.function step over a tf.data pipeline: what model.fit adds, taken away.
    keras.utils.set_random_seed(arguments.seed)
    model = build_model(spec, seed=arguments.seed)
    optimizer = keras.optimizers.Adam(learning_rate=defaults.learning_rate, epsilon=ADAM_EPSILON)
    loss_function = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    batches = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(labels), seed=arguments.seed)
        .batch(defaults.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, *spec.input_shape], tf.float32),
            tf.TensorSpec([None], tf.int64),
        ]
    )
    def train_step(batch_images: tf.Tensor, batch_labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_function(batch_labels, model(batch_images, training=True))
        gradients = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return loss

    ends = []
    started = time.perf_counter()
    for _ in range(arguments.epochs):
        for batch_images, batch_labels in batches:
            loss = train_step(batch_images, batch_labels)
        float(loss)  # wait for the epoch's last step
        ends.append(time.perf_counter())
    results["tf_function_step_over_tf_data"] = _steady_rate(ends, started, len(labels))
    results["threads"] = _framework_threads("tf")
    return results


def _run_bare_torch(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.nn import functional

    from experiment.config import ADAM_EPSILON, TrainConfig
    from experiment.data import load_dataset
    from torch_pipeline.model import build_model

    defaults = TrainConfig(seed=arguments.seed, **({"batch_size": arguments.batch_size} if arguments.batch_size else {}))
    dataset = load_dataset(seed=arguments.seed)
    images, labels = torch.from_numpy(dataset.train.images), torch.from_numpy(dataset.train.labels)
    spec = defaults.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    torch.manual_seed(arguments.seed)
    model = build_model(spec, seed=arguments.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=defaults.learning_rate, eps=ADAM_EPSILON)
    generator = torch.Generator().manual_seed(arguments.seed)
    ends = []
    started = time.perf_counter()
    for _ in range(arguments.epochs):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), defaults.batch_size):
            batch = order[start : start + defaults.batch_size]
            loss = functional.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        ends.append(time.perf_counter())
    return {
        "framework": "torch",
        "train_examples": len(labels),
        "batch_size": defaults.batch_size,
        "torch_loop_over_tensor_slices": _steady_rate(ends, started, len(labels)),
        "threads": _framework_threads("torch"),
    }


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Child-process entry point: one measurement, printed as one JSON line after RESULT_MARKER."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training", description=worker_main.__doc__)
    parser.add_argument("--framework", choices=FRAMEWORKS, required=True)
    parser.add_argument("--mode", choices=("pipeline", "bare"), default="pipeline")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=Path("reports/work"))
    parser.add_argument("--run-name", default="benchmark")
    parser.add_argument("--threads", type=int, default=0, help="intra- and inter-op threads; 0: framework default")
    arguments = parser.parse_args(argv)
    if arguments.threads:
        set_threads(arguments.framework, arguments.threads)
    if arguments.mode == "pipeline":
        result = _run_pipeline(arguments)
    elif arguments.framework == "tf":
        result = _run_bare_tf(arguments)
    else:
        result = _run_bare_torch(arguments)
    result["peak_rss_mib"] = _peak_rss_mib()
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


# ---------------------------------------------------------------- parent side


def run_worker(arguments: Sequence[str], threads: int = 0) -> dict[str, Any]:
    """Run one worker process; returns its result plus the process's wall time (imports included)."""
    command = [sys.executable, "-m", "benchmarks.training", *arguments, "--threads", str(threads)]
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    if threads:
        environment["OMP_NUM_THREADS"] = str(threads)
    started = time.perf_counter()
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_SECONDS, env=environment
    )
    process_seconds = time.perf_counter() - started
    lines = [line for line in completed.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"{' '.join(command)} failed (exit {completed.returncode}): " + " | ".join(tail))
    result = json.loads(lines[-1][len(RESULT_MARKER) :])
    result["process_seconds"] = process_seconds
    return result


def read_scalars(run_subdir: Path, tag: str) -> list[tuple[int, float, float]]:
    """(step, value, wall time) of a scalar tag in a TensorBoard run folder, from either writer's encoding."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        str(run_subdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    tags = accumulator.Tags()
    if tag in tags.get(event_accumulator.SCALARS, []):  # torch.utils.tensorboard: simple_value
        points = [(event.step, float(event.value), event.wall_time) for event in accumulator.Scalars(tag)]
    elif tag in tags.get(event_accumulator.TENSORS, []):  # tf.summary (Keras): a scalar tensor
        points = [
            (event.step, float(tensor_util.make_ndarray(event.tensor_proto)), event.wall_time)
            for event in accumulator.Tensors(tag)
        ]
    else:
        raise LookupError(f"{run_subdir} has no scalar {tag!r}.")
    return sorted(points)


def learning_curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """'train/epoch_loss' etc. → [(epoch, value)], read back from a run's event files."""
    curves = {}
    for subdir in (metrics.TRAIN_SUBDIR, metrics.VALIDATION_SUBDIR):
        for tag in metrics.SCALAR_TAGS:
            curves[f"{subdir}/{tag}"] = [(step, value) for step, value, _ in read_scalars(Path(run_dir) / subdir, tag)]
    return curves


def epoch_rate_from_events(run_dir: Path, train_examples: int, training_seconds: float) -> dict[str, float]:
    """Steady-state examples/s over epochs 2..E from the wall times of the train/epoch_loss events."""
    times = [wall_time for _, _, wall_time in read_scalars(Path(run_dir) / metrics.TRAIN_SUBDIR, metrics.EPOCH_LOSS)]
    result = {"first_epoch_seconds": training_seconds - (times[-1] - times[0])}
    if len(times) >= 2:
        result["steady_samples_per_second"] = train_examples * (len(times) - 1) / (times[-1] - times[0])
        result["steady_epoch_seconds"] = (times[-1] - times[0]) / (len(times) - 1)
    return result


def measure_training(settings: TrainingSettings, work_dir: Path) -> dict[str, Any]:
    """Repeats of both pipelines (interleaved, each in a fresh process) and one bare run of each; medians."""
    common = ["--epochs", str(settings.epochs), "--seed", str(settings.seed), "--work-dir", str(work_dir)]
    if settings.batch_size:
        common += ["--batch-size", str(settings.batch_size)]
    repeats: dict[str, list[dict[str, Any]]] = {framework: [] for framework in FRAMEWORKS}
    for repeat in range(settings.repeats):
        for framework in FRAMEWORKS:  # interleaved, so slow drift in machine load hits both alike
            result = run_worker(
                ["--framework", framework, "--mode", "pipeline", "--run-name", f"repeat-{repeat}", *common],
                settings.threads,
            )
            result.update(epoch_rate_from_events(Path(result["run_dir"]), result["train_examples"], result["training_seconds"]))
            repeats[framework].append(result)

    bare_arguments = ["--mode", "bare", "--epochs", str(settings.bare_epochs), "--seed", str(settings.seed)]
    if settings.batch_size:
        bare_arguments += ["--batch-size", str(settings.batch_size)]
    bare = {
        f"{framework}_threads_{threads or 'default'}": run_worker(["--framework", framework, *bare_arguments], threads)
        for threads in (settings.bare_thread_counts if settings.bare_epochs else ())
        for framework in FRAMEWORKS
    }

    summary: dict[str, Any] = {}
    for framework, results in repeats.items():
        keys = (
            "train_call_seconds",
            "training_seconds",
            "process_seconds",
            "steady_samples_per_second",
            "first_epoch_seconds",
            "peak_rss_mib",
            "test_accuracy",
        )
        summary[framework] = {
            key: stats.median([result[key] for result in results]) for key in keys if all(key in r for r in results)
        }
        summary[framework]["repeats"] = len(results)
        summary[framework]["batch_size"] = results[0]["batch_size"]
        summary[framework]["epochs"] = results[0]["epochs"]
        summary[framework]["train_examples"] = results[0]["train_examples"]
        summary[framework]["threads"] = results[0]["threads"]
        summary[framework]["run_dir"] = results[0]["run_dir"]
        summary[framework]["export_path"] = results[-1]["export_path"]
    curves = {framework: learning_curves(Path(repeats[framework][0]["run_dir"])) for framework in FRAMEWORKS}
    return {"settings": dataclasses.asdict(settings), "pipelines": summary, "repeats": repeats, "bare": bare, "curves": curves}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the child process (see worker_main)."""
    return worker_main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
