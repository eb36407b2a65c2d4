"""What each TensorBoard dashboard shows for a run, read back with TensorBoard's own data layer.

Every event file under a run (its train/, validation/ and root folders, and any other) is loaded with
`EventAccumulator` keeping every plugin's data. Each entry is filed under the dashboard that shows it, by its
plugin name whichever way the writer encoded it (tf.summary writes tensors with plugin metadata; torch's
SummaryWriter writes scalars, histograms and images in the older protos). The hparams plugin's bookkeeping tags
(`_hparams_/experiment`, `_hparams_/session_start_info`, ...) are not entries: the hyperparameter and metric names
they carry are.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

DASHBOARDS = ("Scalars", "Images", "Graphs", "Histograms", "HParams")
# Plugin name → dashboard. "distributions" is the same histogram data drawn another way, so it is not counted twice.
PLUGIN_DASHBOARDS = {
    "scalars": "Scalars",
    "images": "Images",
    "histograms": "Histograms",
    "graph_keras_model": "Graphs",
    "graph_run_metadata": "Graphs",
    "graph_run_metadata_graph": "Graphs",
    "graphs": "Graphs",
    "hparams": "HParams",
}
HPARAMS_PREFIX = "_hparams_/"


@dataclasses.dataclass(frozen=True)
class RunInventory:
    """Dashboard → sorted entry names ("train/epoch_loss", "hparam: learning_rate", ...) of one run."""

    entries: dict[str, list[str]]

    def names(self, dashboard: str) -> set[str]:
        """The entries one dashboard shows."""
        return set(self.entries.get(dashboard, []))


def _hparams_entries(plugin_content: dict[str, bytes]) -> set[str]:
    """Hyperparameter and metric names from the hparams plugin's experiment and session records."""
    from tensorboard.plugins.hparams import metadata

    found: set[str] = set()
    for tag, content in plugin_content.items():
        if tag == metadata.SESSION_START_INFO_TAG:
            found |= {f"hparam: {name}" for name in metadata.parse_session_start_info_plugin_data(content).hparams}
        elif tag == metadata.EXPERIMENT_TAG:
            experiment = metadata.parse_experiment_plugin_data(content)
            found |= {f"hparam: {info.name}" for info in experiment.hparam_infos}
            found |= {f"metric: {info.name.tag}" for info in experiment.metric_infos}
    return found


def read_run(run_dir: Path) -> RunInventory:
    """Every dashboard's entries for one run folder, prefixed by the sub-folder that holds them."""
    from tensorboard.backend.event_processing import event_accumulator

    run_dir = Path(run_dir)
    entries: dict[str, set[str]] = {dashboard: set() for dashboard in DASHBOARDS}
    folders = sorted({path.parent for path in run_dir.rglob("events.out.tfevents*")})
    for folder in folders:
        accumulator = event_accumulator.EventAccumulator(
            str(folder),
            size_guidance=event_accumulator.DEFAULT_SIZE_GUIDANCE
            | {
                kind: 0
                for kind in (
                    event_accumulator.SCALARS,
                    event_accumulator.IMAGES,
                    event_accumulator.HISTOGRAMS,
                    event_accumulator.TENSORS,
                )
            },
        )
        accumulator.Reload()
        prefix = "" if folder == run_dir else f"{folder.relative_to(run_dir).as_posix()}/"
        tags = accumulator.Tags()
        entries["Scalars"] |= {prefix + tag for tag in tags.get(event_accumulator.SCALARS, [])}
        entries["Images"] |= {prefix + tag for tag in tags.get(event_accumulator.IMAGES, [])}
        entries["Histograms"] |= {prefix + tag for tag in tags.get(event_accumulator.HISTOGRAMS, [])}
        if tags.get(event_accumulator.GRAPH):
            entries["Graphs"].add(prefix + "op graph")
        # Tensors and metadata-only values (torch's hparams) are filed by the plugin that owns them.
        hparams_content: dict[str, bytes] = {}
        for tag, summary_metadata in accumulator.summary_metadata.items():
            plugin = summary_metadata.plugin_data.plugin_name
            if tag.startswith(HPARAMS_PREFIX):
                hparams_content[tag] = summary_metadata.plugin_data.content
            elif plugin in PLUGIN_DASHBOARDS:
                entries[PLUGIN_DASHBOARDS[plugin]].add(
                    prefix + ("conceptual graph" if plugin == "graph_keras_model" else tag)
                )
        entries["HParams"] |= _hparams_entries(hparams_content)
    return RunInventory({dashboard: sorted(names) for dashboard, names in entries.items()})


def differences(inventories: dict[str, RunInventory]) -> dict[str, dict[str, list[str]]]:
    """Dashboard → framework → entries only that framework's run has (empty when the runs match)."""
    found: dict[str, dict[str, list[str]]] = {}
    for dashboard in DASHBOARDS:
        everything = set().union(*(inventory.names(dashboard) for inventory in inventories.values()))
        only = {
            framework: sorted(
                inventory.names(dashboard)
                - set().union(*(other.names(dashboard) for name, other in inventories.items() if name != framework))
            )
            for framework, inventory in inventories.items()
        }
        if everything and any(only.values()):
            found[dashboard] = {framework: names for framework, names in only.items() if names}
    return found
