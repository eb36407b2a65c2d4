"""TensorBoard inventory: every dashboard's entries read back from a run, hparams bookkeeping tags left out."""

from __future__ import annotations

import numpy as np

from benchmarks import event_files


def _write_torch_run(run_dir):
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "train")) as writer:
        for step in range(3):
            writer.add_scalar("epoch_loss", 1.0 / (step + 1), step)
            writer.add_histogram("dense/kernel/histogram", np.random.default_rng(step).normal(size=50), step)
    with SummaryWriter(str(run_dir)) as writer:
        writer.add_image("test_confusion_matrix", np.zeros((3, 8, 8), dtype=np.uint8), 0)
        writer.add_hparams({"framework": "torch", "learning_rate": 0.01}, {"test_accuracy": 0.9}, run_name=".")


def test_every_plugin_is_counted_under_its_dashboard(tmp_path):
    _write_torch_run(tmp_path)
    inventory = event_files.read_run(tmp_path)
    assert inventory.names("Scalars") >= {"train/epoch_loss", "test_accuracy"}
    assert inventory.names("Histograms") == {"train/dense/kernel/histogram"}
    assert inventory.names("Images") == {"test_confusion_matrix"}
    assert inventory.names("HParams") == {"hparam: framework", "hparam: learning_rate", "metric: test_accuracy"}
    assert not any(name.startswith("_hparams_") for names in inventory.entries.values() for name in names)


def test_differences_name_what_only_one_side_has():
    same = {"Scalars": ["loss"], "Images": [], "Graphs": ["op graph"], "Histograms": [], "HParams": ["hparam: seed"]}
    tf = event_files.RunInventory({**same, "Scalars": ["learning_rate", "loss"]})
    torch = event_files.RunInventory(same)
    assert event_files.differences({"tf": tf, "torch": torch}) == {"Scalars": {"tf": ["learning_rate"]}}
    assert event_files.differences({"tf": torch, "torch": torch}) == {}
