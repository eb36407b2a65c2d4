"""Read back what a run wrote for TensorBoard: tags by plugin, per sub-run folder."""

from __future__ import annotations

from pathlib import Path

from tensorboard.backend.event_processing import plugin_event_accumulator


def tags_by_plugin(run_dir: Path) -> dict[str, set[str]]:
    """{plugin name: tags} for the event files directly in run_dir, plus 'graph' when a graph was written."""
    accumulator = plugin_event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    tags: dict[str, set[str]] = {}
    for plugin in ("scalars", "histograms", "images", "hparams"):
        tags[plugin] = set(accumulator.PluginTagToContent(plugin)) if plugin in accumulator.ActivePlugins() else set()
    tags["graph"] = {"graph"} if accumulator.Tags().get("graph") else set()
    return tags


def scalar_values(run_dir: Path, tag: str) -> list[float]:
    """The values of one scalar tag, in step order."""
    import numpy as np

    accumulator = plugin_event_accumulator.EventAccumulator(str(run_dir), size_guidance={"tensors": 0})
    accumulator.Reload()
    return [float(np.asarray(__import__("tensorboard").util.tensor_util.make_ndarray(event.tensor_proto)))
            for event in sorted(accumulator.Tensors(tag), key=lambda event: event.step)]
