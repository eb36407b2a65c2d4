"""Train the torch model, log to TensorBoard under runs/torch/<run>, export models/torch/<model>/<version>/.

Run with `python -m torch_pipeline.train --help`.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from experiment import artifacts, metrics
from experiment.cli import run_main
from experiment.config import ADAM_EPSILON, TrainConfig, config_field, parse_config
from experiment.data import Dataset, Split, load_dataset

FRAMEWORK = "torch"
PROG = "python -m torch_pipeline.train"


@dataclasses.dataclass(frozen=True)
class TorchTrainConfig(TrainConfig):
    """The shared settings plus what only the torch loop has."""

    progress: bool = config_field(True, "show a tqdm progress bar per epoch")

    framework = FRAMEWORK


@dataclasses.dataclass(frozen=True)
class TrainingResult:
    """What a finished run produced."""

    version: int
    export_path: Path
    run_dir: Path
    test_accuracy: float
    test_loss: float
    training_seconds: float


def _tensors(split: Split) -> tuple["torch.Tensor", "torch.Tensor"]:
    import torch

    return torch.from_numpy(split.images), torch.from_numpy(split.labels)


def evaluate(model: "torch.nn.Module", split: Split, batch_size: int = 256) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predicted classes over a split, in eval mode without autograd."""
    import torch
    from torch.nn import functional

    images, labels = _tensors(split)
    model.eval()
    losses, predictions = [], []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start : start + batch_size])  # (B, C)
            losses.append(functional.cross_entropy(logits, labels[start : start + batch_size], reduction="sum"))
            predictions.append(logits.argmax(dim=-1))
    predicted = torch.cat(predictions).numpy()
    return float(torch.stack(losses).sum()) / len(labels), float((predicted == split.labels).mean()), predicted


def train(config: TorchTrainConfig, dataset: Dataset | None = None) -> TrainingResult:
    """Train, evaluate, log and export; returns where everything went."""
    import torch
    from torch.nn import functional
    from torch.utils import data as torch_data
    from tqdm import tqdm

    from torch_pipeline import export, summaries
    from torch_pipeline.model import build_model

    dataset = dataset or load_dataset(config.data_dir, seed=config.seed)
    base_path = artifacts.model_base_path(config.output_dir, FRAMEWORK, dataset.name)
    model_store = artifacts.model_store_path(config.output_dir)
    for directory in (base_path, model_store):
        artifacts.check_writable(directory)
    run_name = config.resolved_run_name()
    run_dir = Path(config.log_dir) / FRAMEWORK / run_name
    artifacts.check_writable(run_dir)

    torch.manual_seed(config.seed)
    spec = config.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    model = build_model(spec, seed=config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, eps=ADAM_EPSILON)

    train_images, train_labels = _tensors(dataset.train)
    # Whole batches are sliced out of the tensors at once (batch_size=None + a BatchSampler) rather than
    # gathered item by item and collated: the per-item path costs more than this small model's step.
    shuffle = torch_data.RandomSampler(train_images, generator=torch.Generator().manual_seed(config.seed))
    loader = torch_data.DataLoader(
        torch_data.TensorDataset(train_images, train_labels),
        sampler=torch_data.BatchSampler(shuffle, config.batch_size, drop_last=False),
        batch_size=None,
    )

    writers = summaries.RunWriters(run_dir)
    writers.add_graph(model, train_images[:1])
    started = time.perf_counter()
    for epoch in range(config.epochs):
        model.train()
        loss_sum, correct = 0.0, 0
        batches = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not config.progress)
        for images, labels in batches:  # (B, H, W), (B,)
            logits = model(images)  # (B, C)
            loss = functional.cross_entropy(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(dim=-1) == labels).sum())
        train_loss, train_accuracy = loss_sum / len(train_labels), correct / len(train_labels)
        validation_loss, validation_accuracy, _ = evaluate(model, dataset.validation)
        writers.log_epoch(epoch, train_loss, train_accuracy, validation_loss, validation_accuracy, model)
        if config.progress:
            tqdm.write(
                f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f} accuracy {train_accuracy:.4f} "
                f"val_loss {validation_loss:.4f} val_accuracy {validation_accuracy:.4f}"
            )
    training_seconds = time.perf_counter() - started

    test_loss, test_accuracy, predictions = evaluate(model, dataset.test)
    writers.write_final_summaries(
        hparams=config.tensorboard_hparams(),
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        confusion=metrics.confusion_matrix(dataset.test.labels, predictions, dataset.num_classes),
        step=config.epochs,
    )
    writers.close()

    metadata = artifacts.build_metadata(
        framework="torch",
        framework_version=torch.__version__,
        dataset=dataset.name,
        network=spec.to_dict(),
        hyperparameters=config.hyperparameters(),
        test_accuracy=test_accuracy,
        test_loss=test_loss,
        training_seconds=training_seconds,
        run_name=run_name,
        extra={"outputs": "dict: probabilities float32 (N, C), classes int64 (N,)"},
    )
    # Both artifacts are finished in hidden staging folders before either is published.
    with artifacts.staging_directory(base_path) as staging, artifacts.staging_directory(model_store) as archive_dir:
        export.write_torchscript(model, staging)
        artifacts.write_metadata(staging, metadata)
        archive = export.write_model_archive(staging, dataset.name, artifacts.next_version(base_path), archive_dir)
        version, export_path = artifacts.publish_version(staging, base_path)
        artifacts.publish_file(archive, model_store / archive.name)
    return TrainingResult(version, export_path, run_dir, test_accuracy, test_loss, training_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        config = parse_config(TorchTrainConfig, argv, PROG, "Train the torch model and export TorchScript and a .mar.")
        result = train(config)
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.training_seconds:.1f} s of training\n"
            f"TensorBoard run: {result.run_dir}\n"
            f"TorchScript:     {result.export_path / artifacts.TORCHSCRIPT_FILE} (version {result.version})\n"
            f"TorchServe:      {artifacts.model_store_path(config.output_dir) / (result.export_path.parent.name + '.mar')}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(main())
