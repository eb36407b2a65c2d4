"""Run every measurement of the comparison in order and collect the typed results in one `Comparison`.

Each section calls its measuring function directly. A section that fails is recorded with its error (and fails
the run) instead of hiding the sections after it; a section that this mode leaves out is recorded with the reason.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from benchmarks import article, event_files, inference, load, system, training, training_worker
from benchmarks.deployment_formats import DeploymentFormats
from benchmarks.distributed import DistributedResult
from benchmarks.serving_tf import TFServingResult
from benchmarks.serving_torch import TorchServingResult
from benchmarks.sweep import SweepResult

ROOT = Path(__file__).resolve().parent.parent
Value = TypeVar("Value")
# The serving sections, the endpoint sweep first: the others need servers this run starts itself.
SERVING_SECTIONS = ("sweep", "floors", "tf serving", "tf batching", "torch serving")


@dataclasses.dataclass(frozen=True)
class CompareSettings:
    """Everything one comparison run needs to know."""

    quick: bool
    output_dir: Path
    runs_dir: Path
    serving: bool
    distributed: bool
    training: training.TrainingSettings
    inference: inference.InferenceSettings
    load: load.LoadSettings

    @property
    def work_dir(self) -> Path:
        """Models, TensorBoard runs and server state this comparison makes; replaced by every run."""
        return self.output_dir / "work"


@dataclasses.dataclass
class Comparison:
    """Every measurement of one run; a section is None when it failed or was left out (see `reason`)."""

    quick: bool
    command: str
    date: str
    machine: system.Machine
    versions: dict[str, str]
    threads: dict[str, Any] = dataclasses.field(default_factory=dict)
    training: training.TrainingResult | None = None
    artifacts: list[inference.ArtifactSize] | None = None
    inference: inference.InferenceResult | None = None
    snippets: article.TensorSnippets | None = None
    graphs: article.GraphTimings | None = None
    debugging: article.Debugging | None = None
    tensorboard: dict[str, event_files.RunInventory] | None = None
    data_parallelism: article.DataParallelism | None = None
    tf_serving: TFServingResult | None = None
    torch_serving: TorchServingResult | None = None
    sweep: SweepResult | None = None
    floors: Any = None  # benchmarks.floors.FloorsResult
    tf_batching: Any = None  # benchmarks.batching_sizes.BatchingBySize
    deployment_formats: DeploymentFormats | None = None
    distributed: DistributedResult | None = None
    failures: dict[str, str] = dataclasses.field(default_factory=dict)
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)
    section_seconds: dict[str, float] = dataclasses.field(default_factory=dict)

    def reason(self, section: str) -> str:
        """Why a section has no result: its error, or why this mode left it out."""
        return self.failures.get(section) or self.skipped.get(section) or "not run"


def _section(comparison: Comparison, name: str, measure: Callable[[], Value]) -> Value | None:
    """Run one measurement, timing it; a failure is recorded instead of raised."""
    started = time.perf_counter()
    print(f"[compare] {name} ...", flush=True)
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 (one failed measurement is reported; the others still run)
        comparison.failures[name] = f"{type(error).__name__}: {error}"[:400]
        traceback.print_exc()
        return None
    finally:
        comparison.section_seconds[name] = time.perf_counter() - started


def _skip(comparison: Comparison, wanted: bool, trained: bool, names: tuple[str, ...], flag: str) -> bool:
    """Record why sections will not run; True when they should."""
    if not wanted:
        reason = f"left out in quick mode; --{flag} measures it"
    elif not trained:
        reason = "training failed, so there is no model to measure"
    else:
        return True
    comparison.skipped.update(dict.fromkeys(names, reason))
    return False


def measure_everything(settings: CompareSettings, command: str) -> Comparison:
    """Run every section in order."""
    from experiment.data import load_dataset

    comparison = Comparison(settings.quick, command, system.now(), system.machine(), system.library_versions())
    comparison.training = _section(
        comparison, "training", lambda: training.measure_training(settings.training, settings.work_dir)
    )
    if settings.training.threads:
        for framework in training_worker.FRAMEWORKS:
            training_worker.set_threads(framework, settings.training.threads)
    comparison.threads = system.thread_settings()

    dataset = load_dataset(seed=settings.training.seed)
    pipelines = comparison.training.pipelines if comparison.training else {}
    trained = {"tf", "torch"} <= set(pipelines)
    models = settings.work_dir / "models"
    if _skip(comparison, True, trained, ("artifacts", "inference"), ""):
        tf_export, torch_export = Path(pipelines["tf"].export_path), Path(pipelines["torch"].export_path)
        archive = models / "torch" / "model-store" / "digits.mar"
        comparison.artifacts = _section(
            comparison,
            "artifacts",
            lambda: inference.measure_artifacts(tf_export, torch_export, archive, settings.inference),
        )
        comparison.inference = _section(
            comparison,
            "inference",
            lambda: inference.measure_inference(
                tf_export, torch_export, dataset.test.images, settings.inference, ROOT / "serving"
            ),
        )
        from benchmarks import deployment_formats

        comparison.deployment_formats = _section(
            comparison,
            "deployment formats",
            lambda: deployment_formats.measure(
                tf_export,
                torch_export,
                dataset.test.images,
                settings.work_dir / "deployment-formats",
                calls=300 if settings.quick else 2000,
                requests=100 if settings.quick else 500,
            ),
        )

    comparison.snippets = _section(comparison, "snippets", article.tensor_snippets)
    comparison.graphs = _section(comparison, "graphs", lambda: article.graphs(settings.runs_dir))
    comparison.debugging = _section(comparison, "debugging", article.debugging)
    comparison.tensorboard = _section(
        comparison,
        "tensorboard",
        lambda: {framework: event_files.read_run(Path(summary.run_dir)) for framework, summary in pipelines.items()},
    )
    comparison.data_parallelism = _section(comparison, "data parallelism", article.data_parallelism)

    _measure_serving(comparison, settings, trained, dataset.test.images[0])
    if _skip(comparison, settings.distributed, trained, ("distributed",), "distributed"):
        from benchmarks import distributed

        epochs = 2 if settings.quick else 8
        comparison.distributed = _section(
            comparison,
            "distributed",
            lambda: distributed.compare_processes(epochs=epochs, work_dir=settings.work_dir / "distributed"),
        )
    return comparison


def _measure_serving(comparison: Comparison, settings: CompareSettings, trained: bool, image: Any) -> None:
    """The endpoint sweep, then the TF server's and the torch servers' own benchmarks."""
    from benchmarks import sweep

    given = sweep.given_endpoints() is not None
    if not _skip(comparison, settings.serving or given, trained, SERVING_SECTIONS, "serving"):
        return
    models = settings.work_dir / "models"
    comparison.sweep = _section(
        comparison,
        "sweep",
        lambda: sweep.measure_endpoints(models, settings.work_dir / "stack", image, sweep.CONCURRENCIES, settings.load),
    )
    if given:
        # The floors need servers this run configures itself (an identity model, a no-op route).
        reason = "the stack under test was given by environment; this part needs servers the comparison starts"
        comparison.skipped.update(dict.fromkeys(SERVING_SECTIONS[1:], reason))
        return
    from benchmarks import batching_sizes, floors, http_load, serving_tf, serving_torch

    if shutil.which("wrk") is None:
        comparison.skipped["floors"] = "wrk is not installed (apt-get install wrk nginx-light)"
    else:
        comparison.floors = _section(
            comparison,
            "floors",
            lambda: floors.measure(
                models / "tf" / "digits",
                models / "torch" / "digits",
                1 if settings.quick else 3,
                2.0 if settings.quick else 4.0,
                models / "torch" / "model-store",
            ),
        )
    count = 300 if settings.quick else 2000
    comparison.tf_serving = _section(
        comparison, "tf serving", lambda: serving_tf.run_benchmark(models / "tf" / "digits", "digits", count)
    )
    if http_load.find_generator() is None:
        comparison.skipped["tf batching"] = "neither hey nor wrk is installed (apt-get install wrk)"
    else:
        comparison.tf_batching = _section(
            comparison,
            "tf batching",
            lambda: batching_sizes.measure(
                batching_sizes.QUICK_WIDTHS if settings.quick else batching_sizes.WIDTHS,
                1 if settings.quick else 3,
                1.0,
            ),
        )
    comparison.torch_serving = _section(
        comparison,
        "torch serving",
        lambda: serving_torch.measure(
            models / "torch" / "digits", models / "torch" / "model-store", count, 50 if settings.quick else 200
        ),
    )


def jsonable(value: Any) -> Any:
    """A Comparison (or any part of it) as JSON-ready values; raw latency lists left out."""
    if isinstance(value, load.LoadResult):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {field.name: jsonable(getattr(value, field.name)) for field in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(item) for item in value]
    if isinstance(value, Path):
        return value.name
    return value
