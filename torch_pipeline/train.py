"""Train the torch model, log to TensorBoard under runs/torch/<run>, export models/torch/<model>/<version>/.

One loop for one process and for many: under torchrun (`python -m torch_pipeline.launch`, or torchrun itself) each
process joins the group torchrun describes, wraps the model in DistributedDataParallel and trains on its share of
every global batch; rank 0 alone logs and exports.

Run with `python -m torch_pipeline.train --help`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from experiment import artifacts, metrics, processes, runs
from experiment.cli import run_main
from experiment.config import (
    ADAM_EPSILON,
    TrainConfig,
    config_field,
    parse_config,
    parse_torch_formats,
    per_replica_batch_size,
)
from experiment.data import Dataset, Split, load_dataset
from experiment.spec import NetworkSpec

if TYPE_CHECKING:  # torch itself is imported inside the functions, after the flags have been checked
    import torch

    from torch_pipeline import distributed, summaries

FRAMEWORK = "torch"
PROG = "python -m torch_pipeline.train"


@dataclasses.dataclass(frozen=True)
class TorchTrainConfig(TrainConfig):
    """The shared settings plus what only the torch loop has."""

    progress: bool = config_field(True, "show a tqdm progress bar per epoch")
    weight_checksums: Path | None = config_field(
        None,
        "folder where each rank writes a checksum of its weights after every step (rank-<rank>.txt), "
        "to check that replicas stay identical",
    )
    formats: tuple[str, ...] = config_field(
        ("onnx",),
        "export formats, comma-separated, from onnx (ONNX Runtime), pt2 (AOTInductor package, compiles C++ for "
        "tens of seconds) and torchscript (deprecated by PyTorch); onnx is always needed",
        parse=parse_torch_formats,
    )

    framework = FRAMEWORK


def _tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    return torch.from_numpy(split.images), torch.from_numpy(split.labels)


def evaluate(model: torch.nn.Module, split: Split, batch_size: int = 256) -> tuple[float, float, np.ndarray]:
    """Mean loss, accuracy and predicted classes over a split, in eval mode without autograd."""
    import torch
    from torch.nn import functional

    device = next(model.parameters()).device
    images, labels = (tensor.to(device) for tensor in _tensors(split))
    model.eval()
    losses, predictions = [], []
    with torch.inference_mode():
        for start in range(0, len(labels), batch_size):
            logits = model(images[start : start + batch_size])  # (B, C)
            losses.append(functional.cross_entropy(logits, labels[start : start + batch_size], reduction="sum"))
            predictions.append(logits.argmax(dim=-1))
    predicted = torch.cat(predictions).cpu().numpy()
    return float(torch.stack(losses).sum()) / len(labels), float((predicted == split.labels).mean()), predicted


def _weights_checksum(model: torch.nn.Module) -> str:
    """A SHA-256 of every parameter's bytes, in order."""
    content = b"".join(parameter.detach().cpu().numpy().tobytes() for parameter in model.parameters())
    return hashlib.sha256(content).hexdigest()


def _step_seed(seed: int, rank: int, step: int) -> int:
    """A generator seed for one rank's step, independent for every (seed, rank, step)."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


@dataclasses.dataclass
class _Run:
    """What one process's training works with, built by _set_up and read by every later step."""

    config: TorchTrainConfig
    dataset: Dataset
    group: distributed.ProcessGroup
    run_name: str
    run_dir: Path
    base_path: Path
    model_store: Path
    batch_size: int  # this rank's share of every global batch
    spec: NetworkSpec
    network: torch.nn.Module  # the plain module: checkpoints, evaluation and export use it
    model: torch.nn.Module  # what the loop calls: the module, or DistributedDataParallel around it
    optimizer: torch.optim.Optimizer
    writers: summaries.RunWriters | None  # rank 0 alone logs and exports
    checksum_file: TextIO | None = None


def train(config: TorchTrainConfig, dataset: Dataset | None = None) -> runs.TrainingResult:
    """Train (data-parallel under torchrun), evaluate, log and export on rank 0; returns where everything went."""
    from torch_pipeline import distributed

    group = distributed.join_process_group()
    try:
        run = _set_up(config, dataset, group)
        position = _resume(run)
        try:
            _train_epochs(run, position)
        finally:
            if run.checksum_file:
                run.checksum_file.close()
    finally:
        distributed.leave_process_group(group)
    if not run.writers:  # a rank other than 0
        return runs.TrainingResult(None, None, run.run_dir, math.nan, math.nan, position.training_seconds())
    return _evaluate_and_export(run, position.training_seconds())


def _set_up(config: TorchTrainConfig, dataset: Dataset | None, group: distributed.ProcessGroup) -> _Run:
    """Check the user's settings and folders, then build the model and optimizer (the same weights on every rank)."""
    import torch

    from torch_pipeline.model import build_model

    batch_size = per_replica_batch_size(config.batch_size, group.world_size)
    dataset = dataset or load_dataset(config.data_dir, seed=config.seed)
    base_path = artifacts.model_base_path(config.output_dir, FRAMEWORK, dataset.name)
    model_store = artifacts.model_store_path(config.output_dir)
    run_name, run_dir = runs.start_run(config, dataset.name, group.is_main)
    if group.is_main:
        for directory in (base_path, model_store, run_dir):
            artifacts.check_writable(directory)
    if config.weight_checksums is not None:
        artifacts.check_writable(config.weight_checksums)
    # Imported after the user-mistake checks: torch.utils.tensorboard loads TensorFlow when it is installed,
    # whose start-up messages would bury a one-sentence error.
    from torch_pipeline import summaries

    spec = config.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
    network = build_model(spec, seed=config.seed).to(group.device)
    optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=ADAM_EPSILON)
    writers = summaries.RunWriters(run_dir, metrics.trial_id(FRAMEWORK, run_name)) if group.is_main else None
    if writers:
        writers.add_graph(network, torch.from_numpy(dataset.train.images[:1]).to(group.device))
    return _Run(
        config,
        dataset,
        group,
        run_name,
        run_dir,
        base_path,
        model_store,
        batch_size,
        spec,
        network,
        network,
        optimizer,
        writers,
    )


def _resume(run: _Run) -> runs.Position:
    """Restore the latest checkpoint if there is one, wrap the model for data parallelism, open the checksum file."""
    from torch.nn.parallel import DistributedDataParallel

    from torch_pipeline import checkpoints, distributed

    resumed = None
    if run.config.checkpoint_dir is not None:
        with distributed.collective_failures(run.group):  # rank 0 tells the others which step to load
            contents = checkpoints.load_latest(run.config.checkpoint_dir, run.group)
        resumed = checkpoints.restore(contents, run.network, run.optimizer) if contents is not None else None
        if resumed and run.group.is_main:
            print(f"resuming run {run.run_name} from the checkpoint of step {resumed.step}", flush=True)
    if run.group.is_distributed:
        # DDP averages gradients over ranks during backward(); the constant rescaling buffer needs no per-step
        # sync. Wrapped after restoring: the constructor broadcasts rank 0's weights, which every rank shares anyway.
        with distributed.collective_failures(run.group):
            run.model = DistributedDataParallel(run.network, forward_sync_buffers=False)
    if run.config.weight_checksums is not None:
        # A resumed run adds to the lines its first attempt wrote.
        path = Path(run.config.weight_checksums) / f"rank-{run.group.rank}.txt"
        run.checksum_file = open(path, "a" if resumed else "w")  # noqa: SIM115
    return runs.Position.resuming(resumed)


def _train_epochs(run: _Run, position: runs.Position) -> None:
    """Every epoch the checkpoint does not hold yet, each followed by its logged evaluation, then a last checkpoint."""
    from torch.utils import data as torch_data

    train_images, train_labels = _tensors(run.dataset.train)
    # A DistributedSampler in every run (one replica when alone): rank r takes every world_size-th index of one
    # seeded permutation, so each step's global batch holds the same examples however many processes share it.
    shard = torch_data.DistributedSampler(
        train_images, num_replicas=run.group.world_size, rank=run.group.rank, shuffle=True, seed=run.config.seed
    )
    examples = torch_data.TensorDataset(train_images, train_labels)
    steps_per_epoch = math.ceil(len(shard) / run.batch_size)
    first_epoch, skipped = divmod(position.step, steps_per_epoch)
    for epoch in range(first_epoch, run.config.epochs):
        shard.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
        batches = list(torch_data.BatchSampler(shard, run.batch_size, drop_last=False))
        totals = [0.0, 0.0, 0.0]  # loss sum, correct, examples
        if epoch == first_epoch and skipped:
            batches = batches[skipped:]  # the steps the checkpoint already holds
            if run.group.is_main:  # the other ranks' shares are in rank 0's restored sums
                totals = list(position.resumed.epoch_totals)
        # Whole batches are sliced out of the tensors at once (batch_size=None + a list of index batches) rather
        # than gathered item by item and collated: the per-item path costs more than this small model's step.
        loader = torch_data.DataLoader(examples, sampler=batches, batch_size=None)
        train_loss, train_accuracy = _train_one_epoch(run, position, loader, epoch, totals)
        _log_epoch(run, epoch, train_loss, train_accuracy)
    if run.config.checkpoint_dir is not None and position.step % run.config.checkpoint_every != 0:
        _save_checkpoint(run, position, [0.0, 0.0, 0.0])  # the finished weights: a restart goes straight to export


def _train_one_epoch(
    run: _Run,
    position: runs.Position,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    epoch: int,
    totals: list[float],
) -> tuple[float, float]:
    """One pass over this rank's batches; returns the epoch's training loss and accuracy over every rank."""
    from tqdm import tqdm

    from torch_pipeline import distributed

    run.model.train()
    description = f"epoch {epoch + 1}/{run.config.epochs}"
    hide = not (run.config.progress and run.group.is_main)
    for images, labels in tqdm(loader, desc=description, leave=False, disable=hide):
        loss, correct = _train_step(run, position.step, images, labels)
        totals = [totals[0] + loss * len(labels), totals[1] + correct, totals[2] + len(labels)]
        position.step += 1
        if run.checksum_file:
            run.checksum_file.write(f"{position.step} {_weights_checksum(run.network)}\n")
        if run.config.checkpoint_dir is not None and position.step % run.config.checkpoint_every == 0:
            _save_checkpoint(run, position, totals)
    # One all-reduce per epoch for the logged training metrics of the whole global batch stream.
    with distributed.collective_failures(run.group):
        loss_sum, correct, examples = distributed.sum_over_ranks(totals, run.group)
    return loss_sum / examples, correct / examples


def _train_step(run: _Run, step: int, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, int]:
    """One optimizer step on this rank's share of a global batch; returns its mean loss and correct predictions."""
    import torch
    from torch.nn import functional

    from torch_pipeline import distributed

    # (b, H, W), (b,) with b = global batch / world size
    images, labels = images.to(run.group.device), labels.to(run.group.device)
    # Dropout masks drawn from (seed, rank, step): a run resumed at any step draws what an uninterrupted one would,
    # without carrying every rank's generator state in the checkpoint.
    torch.manual_seed(_step_seed(run.config.seed, run.group.rank, step))
    logits = run.model(images)  # (b, C)
    loss = functional.cross_entropy(logits, labels)
    run.optimizer.zero_grad(set_to_none=True)
    with distributed.collective_failures(run.group):  # DDP all-reduces the gradients during backward()
        loss.backward()
    run.optimizer.step()
    return loss.item(), int((logits.argmax(dim=-1) == labels).sum())


def _log_epoch(run: _Run, epoch: int, train_loss: float, train_accuracy: float) -> None:
    """Rank 0 evaluates the validation split and logs the epoch to TensorBoard (and the terminal)."""
    from tqdm import tqdm

    if not run.writers:
        return
    validation_loss, validation_accuracy, _ = evaluate(run.network, run.dataset.validation)
    run.writers.log_epoch(epoch, train_loss, train_accuracy, validation_loss, validation_accuracy, run.network)
    if run.config.progress:
        tqdm.write(
            f"epoch {epoch + 1}/{run.config.epochs}: loss {train_loss:.4f} accuracy {train_accuracy:.4f} "
            f"val_loss {validation_loss:.4f} val_accuracy {validation_accuracy:.4f}"
        )


def _save_checkpoint(run: _Run, position: runs.Position, totals: list[float]) -> None:
    """Rank 0 saves the weights and every rank's share of the epoch's totals, so a resumed epoch logs all of it."""
    from torch_pipeline import checkpoints, distributed

    with distributed.collective_failures(run.group):
        totals = distributed.sum_over_ranks(totals, run.group)
    if run.group.is_main:
        state = checkpoints.LoopState(position.step, tuple(totals), position.training_seconds())
        checkpoints.save(run.config.checkpoint_dir, run.network, run.optimizer, state)


def _evaluate_and_export(run: _Run, training_seconds: float) -> runs.TrainingResult:
    """Rank 0: evaluate the test split, write the end-of-run summaries, publish the export and its archive."""
    import torch

    from torch_pipeline import export

    network, group = run.network.cpu(), run.group  # the exported model must load on a CPU-only server
    base_path, model_store, name = run.base_path, run.model_store, run.dataset.name
    evaluation = runs.Evaluation(*evaluate(network, run.dataset.test))
    runs.finish_summaries(run.writers, run.config, run.dataset, evaluation)
    metadata = runs.export_metadata(
        framework="torch",
        framework_version=torch.__version__,
        dataset=run.dataset,
        spec=run.spec,
        hyperparameters=run.config.hyperparameters(),
        evaluation=evaluation,
        training_seconds=training_seconds,
        run_name=run.run_name,
        extra={
            "outputs": "dict: probabilities float32 (N, C), classes int64 (N,)",
            "distribution": {"backend": "ddp" if group.is_distributed else "none", "world_size": group.world_size},
        },
    )
    # Both artifacts are finished in hidden staging folders before either is published.
    with artifacts.staging_directory(base_path) as staging, artifacts.staging_directory(model_store) as archive_dir:
        cache_dir = artifacts.model_base_path(run.config.output_dir, FRAMEWORK, export.INDUCTOR_CACHE_FOLDER)
        metadata["artifacts"] = export.export_formats(network, staging, run.config.formats, cache_dir)
        artifacts.write_metadata(staging, metadata)
        with artifacts.publish_lock(base_path):  # the version, its archive and <model>.mar get one number
            version = artifacts.next_version(base_path)
            archive = export.write_model_archive(staging, name, version, archive_dir)
            version, export_path = artifacts.publish_version(staging, base_path, version)
            export.publish_model_archive(archive, model_store, name)
    run_dir = run.run_dir
    return runs.TrainingResult(version, export_path, run_dir, evaluation.accuracy, evaluation.loss, training_seconds)


def _device() -> str:
    """Where training ran, in the summary's words: the GPUs PyTorch found, or the CPU on a machine without one."""
    import torch

    gpus = torch.cuda.device_count()
    return f"{gpus} GPU{'s' if gpus > 1 else ''}" if gpus else "the CPU (PyTorch found no GPU on this machine)"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        config = parse_config(
            TorchTrainConfig, argv, PROG, "Train the torch model and export ONNX (and more) and a .mar."
        )
        try:
            result = train(config)
        except runs.WorkerLost as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        if result.export_path is None:
            return 0  # a rank other than 0: rank 0 reports and exports
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.training_seconds:.1f} s of training on {_device()}\n"
            f"TensorBoard run: {result.run_dir}\n"
            + "".join(
                f"{record['format'] + ':':<16} {result.export_path / record['file']} (version {result.version}, "
                f"{record['bytes']:,} bytes, exported in {record['export_seconds']:.1f} s)\n"
                for record in artifacts.read_metadata(result.export_path)["artifacts"]
            )
            + f"TorchServe:      {artifacts.model_store_path(config.output_dir) / (result.export_path.parent.name + '.mar')}"
        )
        return 0

    return run_main(PROG, body)


if __name__ == "__main__":
    raise SystemExit(processes.exit_status(main()))
