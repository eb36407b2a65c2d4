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
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from experiment import artifacts, metrics, runs
from experiment.cli import run_main
from experiment.config import (
    ADAM_EPSILON, TrainConfig, config_field, parse_config, parse_torch_formats, per_replica_batch_size,
)
from experiment.data import Dataset, Split, load_dataset

if TYPE_CHECKING:  # torch itself is imported inside the functions, after the flags have been checked
    import torch

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


def train(config: TorchTrainConfig, dataset: Dataset | None = None) -> runs.TrainingResult:
    """Train (data-parallel under torchrun), evaluate, log and export on rank 0; returns where everything went."""
    import torch
    from torch.nn import functional
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils import data as torch_data
    from tqdm import tqdm

    from torch_pipeline import distributed
    from torch_pipeline.model import build_model

    group = distributed.join_process_group()
    checksum_file = None
    try:
        batch_size = per_replica_batch_size(config.batch_size, group.world_size)  # this rank's share
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
        from torch_pipeline import checkpoints, export, summaries

        spec = config.network_spec(dataset.image_shape, dataset.pixel_max, dataset.num_classes)
        network = build_model(spec, seed=config.seed).to(group.device)  # the same initial weights on every rank
        optimizer = torch.optim.Adam(network.parameters(), lr=config.learning_rate, eps=ADAM_EPSILON)
        resumed = None
        if config.checkpoint_dir is not None:
            contents = checkpoints.load_latest(config.checkpoint_dir, group)
            resumed = checkpoints.restore(contents, network, optimizer) if contents is not None else None
            if resumed and group.is_main:
                print(f"resuming run {run_name} from the checkpoint of step {resumed.step}", flush=True)
        # DDP averages gradients over ranks during backward(); the constant rescaling buffer needs no per-step sync.
        # Wrapped after restoring: DDP's constructor broadcasts rank 0's weights, which every rank now shares anyway.
        model = DistributedDataParallel(network, forward_sync_buffers=False) if group.is_distributed else network

        if config.weight_checksums is not None:
            # A resumed run adds to the lines its first attempt wrote.
            checksum_file = open(  # noqa: SIM115
                Path(config.weight_checksums) / f"rank-{group.rank}.txt", "a" if resumed else "w"
            )

        train_images, train_labels = _tensors(dataset.train)
        # A DistributedSampler in every run (one replica when alone): rank r takes every world_size-th index of one
        # seeded permutation, so each step's global batch holds the same examples however many processes share it.
        # Whole batches are sliced out of the tensors at once (batch_size=None + a list of index batches) rather
        # than gathered item by item and collated: the per-item path costs more than this small model's step.
        shard = torch_data.DistributedSampler(
            train_images, num_replicas=group.world_size, rank=group.rank, shuffle=True, seed=config.seed
        )
        examples_per_step = torch_data.TensorDataset(train_images, train_labels)
        steps_per_epoch = math.ceil(len(shard) / batch_size)

        writers = summaries.RunWriters(run_dir, metrics.trial_id(FRAMEWORK, run_name)) if group.is_main else None
        if writers:
            writers.add_graph(network, train_images[:1].to(group.device))
        show_progress = config.progress and group.is_main
        step = resumed.step if resumed else 0
        first_epoch, skipped = divmod(step, steps_per_epoch)
        seconds_before = resumed.training_seconds if resumed else 0.0
        started = time.perf_counter()

        def save_checkpoint(totals: list[float]) -> None:
            # Every rank's share of the epoch's totals, summed, so the resumed epoch logs the whole epoch.
            totals = distributed.sum_over_ranks(totals, group)
            if group.is_main:
                state = checkpoints.LoopState(step, tuple(totals), seconds_before + time.perf_counter() - started)
                checkpoints.save(config.checkpoint_dir, network, optimizer, state)

        for epoch in range(first_epoch, config.epochs):
            shard.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
            batches = list(torch_data.BatchSampler(shard, batch_size, drop_last=False))
            loss_sum, correct, examples = 0.0, 0, 0
            if epoch == first_epoch and skipped:
                batches = batches[skipped:]  # the steps the checkpoint already holds
                if group.is_main:  # the other ranks' shares are in rank 0's restored sums
                    loss_sum, correct, examples = resumed.epoch_totals
            loader = torch_data.DataLoader(examples_per_step, sampler=batches, batch_size=None)
            model.train()
            description = f"epoch {epoch + 1}/{config.epochs}"
            for images, labels in tqdm(loader, desc=description, leave=False, disable=not show_progress):
                # (b, H, W), (b,) with b = global batch / world size
                images, labels = images.to(group.device), labels.to(group.device)
                # Dropout masks drawn from (seed, rank, step): a run resumed at any step draws what an
                # uninterrupted one would, without carrying every rank's generator state in the checkpoint.
                torch.manual_seed(_step_seed(config.seed, group.rank, step))
                logits = model(images)  # (b, C)
                loss = functional.cross_entropy(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.item() * len(labels)
                correct += int((logits.argmax(dim=-1) == labels).sum())
                examples += len(labels)
                step += 1
                if checksum_file:
                    checksum_file.write(f"{step} {_weights_checksum(network)}\n")
                if config.checkpoint_dir is not None and step % config.checkpoint_every == 0:
                    save_checkpoint([loss_sum, correct, examples])
            # One all-reduce per epoch for the logged training metrics of the whole global batch stream.
            loss_sum, correct, examples = distributed.sum_over_ranks([loss_sum, correct, examples], group)
            train_loss, train_accuracy = loss_sum / examples, correct / examples
            if writers:
                validation_loss, validation_accuracy, _ = evaluate(network, dataset.validation)
                writers.log_epoch(epoch, train_loss, train_accuracy, validation_loss, validation_accuracy, network)
                if show_progress:
                    tqdm.write(
                        f"epoch {epoch + 1}/{config.epochs}: loss {train_loss:.4f} accuracy {train_accuracy:.4f} "
                        f"val_loss {validation_loss:.4f} val_accuracy {validation_accuracy:.4f}"
                    )
        if config.checkpoint_dir is not None and step % config.checkpoint_every != 0:
            save_checkpoint([0.0, 0.0, 0.0])  # the finished weights: a restart from here goes straight to export
        training_seconds = seconds_before + time.perf_counter() - started
        if not writers:
            return runs.TrainingResult(None, None, run_dir, math.nan, math.nan, training_seconds)
    except RuntimeError as error:
        if not group.is_distributed:
            raise
        # A peer that died (or became unreachable) breaks the collectives of every rank still waiting on it.
        # gloo's message starts with "[source.cc:line] "; keep its first sentence.
        detail = re.sub(r"^\[[^\]]*\]\s*", "", (str(error).strip().splitlines() or [""])[0]).split(". ")[0]
        raise runs.WorkerLost(
            f"rank {group.rank} stopped: a collective with the other ranks failed ({detail or type(error).__name__}); "
            "nothing was exported."
        ) from None
    finally:
        if checksum_file:
            checksum_file.close()
        distributed.leave_process_group(group)

    network = network.cpu()  # the exports must load on a CPU-only server
    evaluation = runs.Evaluation(*evaluate(network, dataset.test))
    runs.finish_summaries(writers, config, dataset, evaluation)

    metadata = runs.export_metadata(
        framework="torch",
        framework_version=torch.__version__,
        dataset=dataset,
        spec=spec,
        hyperparameters=config.hyperparameters(),
        evaluation=evaluation,
        training_seconds=training_seconds,
        run_name=run_name,
        extra={
            "outputs": "dict: probabilities float32 (N, C), classes int64 (N,)",
            "distribution": {"backend": "ddp" if group.is_distributed else "none", "world_size": group.world_size},
        },
    )
    # Both artifacts are finished in hidden staging folders before either is published.
    with artifacts.staging_directory(base_path) as staging, artifacts.staging_directory(model_store) as archive_dir:
        cache_dir = artifacts.model_base_path(config.output_dir, FRAMEWORK, export.INDUCTOR_CACHE_FOLDER)
        metadata["artifacts"] = export.export_formats(network, staging, config.formats, cache_dir)
        artifacts.write_metadata(staging, metadata)
        archive = export.write_model_archive(staging, dataset.name, artifacts.next_version(base_path), archive_dir)
        version, export_path = artifacts.publish_version(staging, base_path)
        export.publish_model_archive(archive, model_store, dataset.name)
    return runs.TrainingResult(version, export_path, run_dir, evaluation.accuracy, evaluation.loss, training_seconds)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""

    def body() -> int:
        config = parse_config(TorchTrainConfig, argv, PROG, "Train the torch model and export ONNX (and more) and a .mar.")
        try:
            result = train(config)
        except runs.WorkerLost as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            return 1
        if result.export_path is None:
            return 0  # a rank other than 0: rank 0 reports and exports
        print(
            f"test accuracy {result.test_accuracy:.4f} after {result.training_seconds:.1f} s of training\n"
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
    raise SystemExit(main())
