"""Read back what runs wrote for TensorBoard, with TensorBoard's own data layer: per folder, and per dashboard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import json_format
from tensorboard import context
from tensorboard.backend.event_processing import data_provider, plugin_event_accumulator, plugin_event_multiplexer
from tensorboard.plugins import base_plugin
from tensorboard.plugins.graph import graphs_plugin
from tensorboard.plugins.graph import metadata as graph_metadata
from tensorboard.plugins.histogram import histograms_plugin
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups
from tensorboard.plugins.image import images_plugin
from tensorboard.plugins.scalar import scalars_plugin
from tensorboard.util import tensor_util

# Keep every event of every kind: TensorBoard's defaults sample long series (0 means no limit).
EVERYTHING = {kind: 0 for kind in plugin_event_accumulator.DEFAULT_SIZE_GUIDANCE}
PLUGINS = ("scalars", "histograms", "images", "hparams", graph_metadata.PLUGIN_NAME_KERAS_MODEL)


def accumulator(run_dir: Path) -> plugin_event_accumulator.EventAccumulator:
    """The event files directly in run_dir, loaded whole, as TensorBoard's server loads a run."""
    loaded = plugin_event_accumulator.EventAccumulator(
        str(run_dir), size_guidance=EVERYTHING, tensor_size_guidance={plugin: 0 for plugin in PLUGINS}
    )
    loaded.Reload()
    return loaded


def tags_by_plugin(run_dir: Path) -> dict[str, set[str]]:
    """{plugin: tags} for the event files directly in run_dir: scalars, histograms, images, hparams,
    conceptual_graph, and graph ({'graph'} when an op graph was written)."""
    loaded = accumulator(run_dir)
    tags = {
        plugin: set(loaded.PluginTagToContent(plugin)) if plugin in loaded.ActivePlugins() else set()
        for plugin in PLUGINS
    }
    tags["conceptual_graph"] = tags.pop(graph_metadata.PLUGIN_NAME_KERAS_MODEL)
    tags["graph"] = {"graph"} if loaded.Tags().get("graph") else set()
    return tags


def tensor_values(run_dir: Path, tag: str) -> list[tuple[int, np.ndarray]]:
    """(step, value) of every event of one tag in run_dir, in step order (scalars, histograms, images alike)."""
    events = sorted(accumulator(run_dir).Tensors(tag), key=lambda event: event.step)
    return [(event.step, tensor_util.make_ndarray(event.tensor_proto)) for event in events]


def scalar_values(run_dir: Path, tag: str) -> list[float]:
    """The values of one scalar tag, in step order."""
    return [float(value) for _, value in tensor_values(run_dir, tag)]


class Dashboards:
    """What TensorBoard's dashboards list for a log directory: each plugin's own backend over its own data provider.

    This is the path `tensorboard --logdir` takes without its optional Rust data server.
    """

    def __init__(self, logdir: Path) -> None:
        multiplexer = plugin_event_multiplexer.EventMultiplexer(
            size_guidance=EVERYTHING, tensor_size_guidance={plugin: 0 for plugin in PLUGINS}
        )
        multiplexer.AddRunsFromDirectory(str(logdir))
        multiplexer.Reload()
        provider = data_provider.MultiplexerDataProvider(multiplexer, str(logdir))
        self._tb_context = base_plugin.TBContext(logdir=str(logdir), data_provider=provider, multiplexer=multiplexer)
        self._request = context.RequestContext()
        self._graphs = graphs_plugin.GraphsPlugin(self._tb_context)

    def scalars(self) -> dict[str, set[str]]:
        """{run: scalar tags}, as the Scalars dashboard lists them."""
        index = scalars_plugin.ScalarsPlugin(self._tb_context).index_impl(self._request, experiment="")
        return {run: set(tags) for run, tags in index.items()}

    def histograms(self) -> dict[str, set[str]]:
        """{run: histogram tags}, as the Histograms dashboard lists them."""
        index = histograms_plugin.HistogramsPlugin(self._tb_context).index_impl(self._request, experiment="")
        return {run: set(tags) for run, tags in index.items()}

    def images(self) -> dict[str, set[str]]:
        """{run: image tags}, as the Images dashboard lists them."""
        index = images_plugin.ImagesPlugin(self._tb_context)._index_impl(self._request, experiment="")
        return {run: set(tags) for run, tags in index.items()}

    def graphs(self) -> dict[str, dict[str, Any]]:
        """{run: {'run_graph': bool, 'tags': {tag: kinds}}}, the Graphs dashboard's run and tag menus."""
        return self._graphs.info_impl(self._request, experiment="")

    def graph(self, run: str, tag: str | None = None, conceptual: bool = False) -> str:
        """One graph as the Graphs dashboard receives it (a GraphDef in text form): the run's op graph by default."""
        body, _ = self._graphs.graph_impl(self._request, run, tag, is_conceptual=conceptual, experiment="")
        return body

    def hparams_experiment(self) -> dict[str, Any]:
        """The HParams dashboard's experiment: hyperparameters (domain, differs) and metrics, in display order."""
        context_ = backend_context.Context(self._tb_context)
        request = api_pb2.GetExperimentRequest()
        return _as_dict(get_experiment.Handler(self._request, context_, "", request).run())

    def hparams_trials(self) -> list[dict[str, Any]]:
        """The HParams dashboard's table: one session group per trial, with hyperparameters, metrics and status."""
        context_ = backend_context.Context(self._tb_context)
        # Every status, as the dashboard's status filter starts out.
        statuses = [api_pb2.STATUS_UNKNOWN, api_pb2.STATUS_SUCCESS, api_pb2.STATUS_FAILURE, api_pb2.STATUS_RUNNING]
        request = api_pb2.ListSessionGroupsRequest(
            start_index=0, slice_size=1000, allowed_statuses=statuses, aggregation_type=api_pb2.AGGREGATION_AVG
        )
        return _as_dict(list_session_groups.Handler(self._request, context_, "", request).run())["sessionGroups"]


def _as_dict(message: Any) -> dict[str, Any]:
    """A protocol buffer as the JSON the dashboard receives, with default values spelled out (status UNKNOWN)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
