"""`python -m benchmarks.training_worker`: one training measurement in a fresh process, printed as one JSON line.

In `pipeline` mode it calls the pipeline's `train(config, dataset)` unchanged; in `bare` mode it runs the same
network with no TensorBoard, validation or export, to tell framework cost from the pipeline's own overhead.
`benchmarks.training` starts one such process per repeat, so every repeat starts cold and its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from experiment import library_logs

FRAMEWORKS = ("tf", "torch")
RESULT_MARKER = "BENCHMARK-RESULT "


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
    if "formats" in names:
        # The legacy TorchScript too: the report measures it beside the ONNX model the servers load.
        kwargs["formats"] = ("onnx", "torchscript")
    for quiet in (("verbose", 0), ("progress", False)):
        if quiet[0] in names:
            kwargs[quiet[0]] = quiet[1]
    return kwargs


def _run_pipeline(arguments: argparse.Namespace) -> dict[str, Any]:
    from experiment.data import load_dataset

    if arguments.framework == "tf":
        library_logs.quiet()
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
        library_logs.quiet()
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
    return {
        "first_epoch_seconds": first_epoch,
        "steady_samples_per_second": examples * (len(epoch_end_times) - 1) / later,
    }


def _run_bare_tf(arguments: argparse.Namespace) -> dict[str, Any]:
    library_logs.quiet()
    import keras
    import tensorflow as tf

    from experiment.config import ADAM_EPSILON, TrainConfig
    from experiment.data import load_dataset
    from tf_pipeline.model import build_model

    defaults = TrainConfig(
        seed=arguments.seed, **({"batch_size": arguments.batch_size} if arguments.batch_size else {})
    )
    dataset = load_dataset(seed=arguments.seed)
    images, labels = dataset.train.images, dataset.train.labels
    spec = defaults.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    steps_per_epoch = math.ceil(len(labels) / defaults.batch_size)
    loops: dict[str, dict[str, float]] = {}

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
        model.fit(
            images, labels, batch_size=defaults.batch_size, epochs=arguments.epochs, verbose=0, callbacks=[record]
        )
        return _steady_rate(ends, started, len(labels))

    loops["keras_fit_steps_per_execution_1"] = fit(1)
    loops[f"keras_fit_steps_per_execution_{steps_per_epoch}"] = fit(steps_per_epoch)

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
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    ends = []
    started = time.perf_counter()
    for _ in range(arguments.epochs):
        for batch_images, batch_labels in batches:
            loss = train_step(batch_images, batch_labels)
        float(loss)  # wait for the epoch's last step
        ends.append(time.perf_counter())
    loops["tf_function_step_over_tf_data"] = _steady_rate(ends, started, len(labels))
    return {"framework": "tf", "batch_size": defaults.batch_size, "loops": loops, "threads": _framework_threads("tf")}


def _run_bare_torch(arguments: argparse.Namespace) -> dict[str, Any]:
    import torch
    from torch.nn import functional

    from experiment.config import ADAM_EPSILON, TrainConfig
    from experiment.data import load_dataset
    from torch_pipeline.model import build_model

    defaults = TrainConfig(
        seed=arguments.seed, **({"batch_size": arguments.batch_size} if arguments.batch_size else {})
    )
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
        "batch_size": defaults.batch_size,
        "loops": {"torch_loop_over_tensor_slices": _steady_rate(ends, started, len(labels))},
        "threads": _framework_threads("torch"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """One measurement, printed as one JSON line after RESULT_MARKER."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.training_worker", description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    raise SystemExit(main())
