"""One TF run and one torch run side by side, read back as TensorBoard's dashboards list them: the same entries."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from experiment import metrics
from experiment.config import TrainConfig
from tests.event_files import Dashboards, tensor_values

FRAMEWORKS = ("tf", "torch")
RUN = "smoke"  # the smoke runs' name (tests/conftest.py)

# What each dashboard should list for one run, by folder relative to the run: the whole set, nothing else.
EXPECTED_SCALARS = {
    "": {metrics.TEST_ACCURACY, metrics.TEST_LOSS},
    metrics.TRAIN_SUBDIR: set(metrics.SCALAR_TAGS),
    metrics.VALIDATION_SUBDIR: set(metrics.SCALAR_TAGS),
}
EXPECTED_HISTOGRAMS = {
    metrics.TRAIN_SUBDIR: {
        f"{layer}/{kind}/histogram" for layer in ("hidden_0", "hidden_1", "logits") for kind in ("kernel", "bias")
    },
}
EXPECTED_IMAGES = {"": {metrics.CONFUSION_MATRIX}}
# The dense layers' matrix product in each framework's op graph (a traced tf.function, a torch.jit trace).
MATRIX_PRODUCT_OP = {"tf": "MatMul", "torch": "aten::linear"}
EXPECTED_METRICS = {
    (group, tag)
    for group in (metrics.TRAIN_SUBDIR, metrics.VALIDATION_SUBDIR)
    for tag in (metrics.EPOCH_ACCURACY, metrics.EPOCH_LOSS)
} | {("", metrics.TEST_ACCURACY), ("", metrics.TEST_LOSS)}


def _copy_runs(destination: Path, runs: dict[str, Path]) -> Path:
    """A log directory holding the given runs at runs/<framework>/<run name>, the layout of `make tensorboard`."""
    for framework, run_dir in runs.items():
        shutil.copytree(run_dir, destination / framework / run_dir.name)
    return destination


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory, tf_smoke_run, torch_smoke_run) -> Path:
    """A log directory with the TF smoke run and the torch smoke run."""
    runs = {"tf": tf_smoke_run.run_dir, "torch": torch_smoke_run.run_dir}
    return _copy_runs(tmp_path_factory.mktemp("side_by_side"), runs)


@pytest.fixture(scope="module")
def dashboards(side_by_side) -> Dashboards:
    return Dashboards(side_by_side)


def _per_framework(index: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """{framework: {folder relative to its run ('' for the run itself): entries}} from a {run: entries} index."""
    result: dict[str, dict[str, set[str]]] = {framework: {} for framework in FRAMEWORKS}
    for run, entries in index.items():
        framework, run_name, *subfolder = run.split("/")
        assert run_name == RUN, f"unexpected run {run}"
        result[framework]["/".join(subfolder)] = set(entries)
    return result


@pytest.mark.slow
@pytest.mark.parametrize(
    "dashboard, expected",
    [("scalars", EXPECTED_SCALARS), ("histograms", EXPECTED_HISTOGRAMS), ("images", EXPECTED_IMAGES)],
)
def test_each_dashboard_lists_the_same_entries_for_both_frameworks(dashboards, dashboard, expected):
    listed = _per_framework(getattr(dashboards, dashboard)())
    assert listed["tf"] == expected
    assert listed["torch"] == expected


@pytest.mark.slow
def test_histograms_have_the_same_buckets_on_both_sides(side_by_side):
    for framework in FRAMEWORKS:
        train_dir = side_by_side / framework / RUN / metrics.TRAIN_SUBDIR
        for tag in EXPECTED_HISTOGRAMS[metrics.TRAIN_SUBDIR]:
            events = tensor_values(train_dir, tag)
            assert [step for step, _ in events] == [0], f"{framework} {tag}: one event per epoch of the 1-epoch run"
            buckets = events[0][1]  # (buckets, 3): left edge, right edge, count
            assert buckets.shape == (metrics.HISTOGRAM_BUCKETS, 3), f"{framework} {tag}"
            assert buckets[:, 2].sum() > 0


@pytest.mark.slow
def test_histograms_count_every_weight_on_both_sides(side_by_side):
    counts = {}
    for framework in FRAMEWORKS:
        train_dir = side_by_side / framework / RUN / metrics.TRAIN_SUBDIR
        ((_, buckets),) = tensor_values(train_dir, "hidden_0/kernel/histogram")
        counts[framework] = buckets[:, 2].sum()
    assert counts["tf"] == counts["torch"] == 64 * 64  # hidden_0's kernel: 8x8 pixels into 64 units


@pytest.mark.slow
def test_both_frameworks_have_an_op_graph_and_a_conceptual_graph(dashboards):
    graphs = dashboards.graphs()
    for framework in FRAMEWORKS:
        run = f"{framework}/{RUN}/{metrics.TRAIN_SUBDIR}"
        assert graphs[run]["run_graph"], f"{framework}: no op graph"
        assert set(graphs[run]["tags"]) == {metrics.CONCEPTUAL_GRAPH}, f"{framework}: {graphs[run]['tags']}"
        assert graphs[run]["tags"][metrics.CONCEPTUAL_GRAPH]["conceptual_graph"]
        conceptual = dashboards.graph(run, metrics.CONCEPTUAL_GRAPH, conceptual=True)
        for layer in ("scale", "flatten", "hidden_0", "hidden_1", "logits"):
            assert f'name: "mlp/{layer}"' in conceptual, f"{framework}'s conceptual graph has no {layer}"
        assert f'op: "{MATRIX_PRODUCT_OP[framework]}"' in dashboards.graph(run), f"{framework}'s op graph"
    assert set(graphs) == {f"{framework}/{RUN}/{metrics.TRAIN_SUBDIR}" for framework in FRAMEWORKS}


@pytest.mark.slow
def test_hparams_separate_the_frameworks(dashboards):
    experiment = dashboards.hparams_experiment()
    hparams = {info["name"]: info for info in experiment["hparamInfos"]}
    assert hparams["framework"]["differs"] and sorted(hparams["framework"]["domainDiscrete"]) == ["tf", "torch"]
    # The dashboard shows the differing hyperparameters first, so framework is a visible column.
    assert experiment["hparamInfos"][0]["name"] == "framework"
    assert not [name for name, info in hparams.items() if info["differs"] and name != "framework"]

    trials = {group["name"]: group for group in dashboards.hparams_trials()}
    assert set(trials) == {f"{framework}/{RUN}" for framework in FRAMEWORKS}  # trial id = TensorBoard's run name
    for framework in FRAMEWORKS:
        trial = trials[f"{framework}/{RUN}"]
        assert trial["hparams"]["framework"] == framework
        assert [session["status"] for session in trial["sessions"]] == ["STATUS_SUCCESS"]
        values = {(value["name"]["group"], value["name"]["tag"]) for value in trial["metricValues"]}
        assert values == EXPECTED_METRICS, framework
    assert trials["tf/smoke"]["hparams"].keys() == trials["torch/smoke"]["hparams"].keys()


def _metric_names(logdir: Path) -> set[tuple[str, str]]:
    infos = Dashboards(logdir).hparams_experiment()["metricInfos"]
    return {(info["name"]["group"], info["name"]["tag"]) for info in infos}


@pytest.mark.slow
def test_hparams_metrics_do_not_depend_on_which_frameworks_are_present(tmp_path, tf_smoke_run, torch_smoke_run):
    tf_only = _copy_runs(tmp_path / "tf_only", {"tf": tf_smoke_run.run_dir})
    torch_only = _copy_runs(tmp_path / "torch_only", {"torch": torch_smoke_run.run_dir})
    both = _copy_runs(tmp_path / "both", {"tf": tf_smoke_run.run_dir, "torch": torch_smoke_run.run_dir})
    assert _metric_names(tf_only) == _metric_names(torch_only) == _metric_names(both) == EXPECTED_METRICS


@pytest.mark.slow
def test_torch_event_files_are_no_larger_than_tf_ones(side_by_side):
    # Histograms are most of the train folder: with the same buckets, the two sides' files are of a size.
    sizes = {framework: _folder_size(side_by_side / framework / RUN / metrics.TRAIN_SUBDIR) for framework in FRAMEWORKS}
    assert sizes["torch"] <= 1.5 * sizes["tf"], sizes


def _folder_size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.iterdir())


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({}, "digits-{time}"),
        ({"learning_rate": 0.01, "epochs": 10}, "digits-epochs10-lr0.01-{time}"),
        ({"hidden_sizes": (128, 64), "activation": "tanh", "dropout": 0.0}, "digits-hidden128x64-tanh-dropout0-{time}"),
        ({"batch_size": 64, "seed": 3}, "digits-batch64-seed3-{time}"),
        ({"run_name": "mine"}, "mine"),
    ],
)
def test_default_run_names_say_the_model_and_what_differs(tmp_path, monkeypatch, overrides, expected):
    _freeze_time(monkeypatch)
    config = TrainConfig(log_dir=tmp_path, **overrides)
    assert config.resolved_run_name("digits") == expected.format(time="20261129-041723")


def test_a_taken_run_name_gets_a_suffix(tmp_path, monkeypatch):
    from torch_pipeline.train import TorchTrainConfig  # imports no torch until training starts

    _freeze_time(monkeypatch)
    config = TorchTrainConfig(log_dir=tmp_path)
    (tmp_path / "torch" / "digits-20261129-041723").mkdir(parents=True)
    assert config.resolved_run_name("digits") == "digits-20261129-041723-2"
    assert TorchTrainConfig(log_dir=tmp_path, run_name="digits-20261129-041723").resolved_run_name("digits") == (
        "digits-20261129-041723"  # a name given on the command line is used as it is
    )


def _freeze_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make experiment.config's clock read 2026-11-29 04:17:23."""
    import datetime
    import types

    from experiment import config as config_module

    class FrozenDateTime(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> FrozenDateTime:
            return cls(2026, 11, 29, 4, 17, 23, tzinfo=tz)

    monkeypatch.setattr(config_module, "datetime", types.SimpleNamespace(datetime=FrozenDateTime))
