"""The ratios the report prints and checks, each computed from numbers measured in the same run."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from benchmarks.batching_sizes import BatchingBySize
    from benchmarks.measure import Comparison
    from benchmarks.serving_tf import TFServingResult
    from benchmarks.serving_torch import TorchServingResult

Measured = TypeVar("Measured")
TF_GRPC = ("TF gRPC p50 / (identity-model gRPC p50 + in-process signature p50)", "≤ 1.3")
FLASK = ("Flask p50 / (no-op route p50 + in-process model p50)", "≤ 1.5")
# What a met and a missed overhead ratio mean.
TF_GRPC_NOTES = (
    "The server adds little beyond gRPC plumbing and the model.",
    "The server's own per-request work (request parsing, tensor conversion, locking) costs more than the "
    "model; profile the servicer and avoid per-request conversions.",
)
FLASK_NOTES = (
    "JSON parsing of the row format and building the answer are the rest.",
    "JSON decoding and validation cost more than the model; a faster JSON library or the columnar format would "
    "close it.",
)
TF_BATCHING = (
    "TF server REST req/s at 16 connections, batching on / off at the largest hidden width; crossover named",
    "≥ 1.3, a crossover, p99 growth ≤ timeout + 1 ms from it up",
)
BATCHING_TARGET = 1.3


@dataclasses.dataclass(frozen=True)
class Ratio:
    """One checked ratio: measured value against its target, or the reason it was not measured."""

    name: str
    target: str
    measured: float | None = None
    passed: bool | None = None
    inputs: str = ""  # the numbers the ratio was computed from
    note: str = ""

    @property
    def status(self) -> str:
        """'met', 'missed', 'not measured', or 'reported' for a figure with no target."""
        if self.measured is None:
            return "not measured"
        if self.passed is None:
            return "reported"
        return "met" if self.passed else "missed"


def _missing(name: str, target: str, what: str, reason: str = "") -> Ratio:
    return Ratio(name, target, note=f"not measured: {what}" + (f" ({reason})" if reason else ""))


def _if_measured(
    measured: Measured | None, check: Callable[[Measured], Ratio], ratio: tuple[str, str], what: str, reason: str
) -> Ratio:
    """check(measured), or the ratio marked not measured with the reason."""
    return check(measured) if measured is not None else _missing(*ratio, what, reason)


def _over_floor(
    ratio: tuple[str, str], limit: float, total: float, floor: tuple[float, float], notes: tuple[str, str]
) -> Ratio:
    """A p50 over the sum of its two floors, against limit; the first note when met, the second when missed."""
    value = total / sum(floor)
    inputs = f"{total:.3f} ms / ({floor[0]:.3f} ms + {floor[1]:.3f} ms)"
    return Ratio(*ratio, value, value <= limit, inputs, notes[0] if value <= limit else notes[1])


def tf_grpc_overhead(measured: TFServingResult) -> Ratio:
    """TF server gRPC p50 ≤ 1.3 × (trivial-model gRPC p50 + in-process SavedModel signature p50), batch 1."""
    floor = (measured.trivial_grpc.p50_ms, measured.in_process.p50_ms)
    return _over_floor(TF_GRPC, 1.3, measured.grpc.p50_ms, floor, TF_GRPC_NOTES)


def cell_text(values: dict[str, Any]) -> str:
    """'a=1, b=2'."""
    return ", ".join(f"{key}={value}" for key, value in values.items())


def flask_overhead(measured: TorchServingResult) -> Ratio:
    """Flask p50 ≤ 1.5 × (no-op Flask route p50 + the app's model call in process, ONNX Runtime)."""
    floor = (measured.flask_noop.p50_ms, measured.in_process.p50_ms)
    return _over_floor(FLASK, 1.5, measured.flask_predict.p50_ms, floor, FLASK_NOTES)


def tf_batching(measured: BatchingBySize) -> Ratio:
    """Batching on / off ≥ 1.3 at the largest width, a crossover among the widths, and no tail grown past one batch
    timeout + 1 ms at the widths where batching pays."""
    name, target = TF_BATCHING
    largest, edge, grown = measured.largest, measured.crossover, measured.tail_grown()
    value = largest.ratio
    passed = value >= BATCHING_TARGET and edge is not None and not grown
    by_width = ", ".join(
        f"{point.width}: {point.ratio:.2f}" for point in sorted(measured.points, key=lambda p: p.width)
    )
    inputs = (
        f"on / off by first hidden width: {by_width} ({measured.generator}, {measured.clients} connections, "
        f"load {measured.load_average or '?'}); crossover: {edge if edge is not None else 'none'}"
    )
    if grown:
        note = (
            f"At width {', '.join(map(str, grown))} the p99 grew by more than one batch timeout + 1 ms "
            f"({measured.p99_growth_limit_ms:g} ms): requests queue behind a batch that is still running while the "
            "generator competes with it for the cores."
        )
    elif edge is None or value < BATCHING_TARGET:
        note = (
            "Batching did not pay even for the widest model: the generator, the request threads and the model share "
            "the machine's cores, so waiting to fill a batch costs more than the model calls it saves."
        )
    else:
        note = (
            f"Batching pays from a first hidden layer of {edge} units up: there one model call costs more than "
            f"gathering a batch, and a batch of {measured.max_batch_size} costs little more than a batch of 1. Below "
            "it, the wait to fill a batch costs more than the call it saves."
        )
    return Ratio(name, target, value, passed, inputs, note)


def keras_vs_torch_training(comparison: Comparison) -> Ratio:
    """Keras training samples/s ≥ 0.5 × torch samples/s with the same batch size, with the overhead check."""
    name, target = "Keras / torch training samples per second (pipelines, steady state)", "≥ 0.5"
    trained = comparison.training
    pipelines = trained.pipelines if trained else {}
    tf_rate = pipelines["tf"].steady_samples_per_second if "tf" in pipelines else None
    torch_rate = pipelines["torch"].steady_samples_per_second if "torch" in pipelines else None
    if trained is None or tf_rate is None or torch_rate is None:
        return _missing(name, target, "needs at least two epochs of each pipeline")
    value = tf_rate / torch_rate
    best_bare_tf, best_bare_torch = trained.best_bare_rate("tf"), trained.best_bare_rate("torch")
    overhead = ""
    if best_bare_torch and best_bare_torch > 3 * torch_rate:
        overhead += (
            f" The torch pipeline's rate is far below the bare torch loop's best ({best_bare_torch:.0f}/s): compare the "
            "bare loops by thread setting below; torch's default OpenMP pool slows sharply when the machine's cores "
            "are busy with other work, so `--threads 1` is the fairer setting for this small network here."
        )
    if best_bare_tf and best_bare_torch:
        overhead = (
            f" Overhead check: the fastest bare Keras/TF loop runs {best_bare_tf:.0f}/s (pipeline {tf_rate:.0f}/s), "
            f"the fastest bare torch loop {best_bare_torch:.0f}/s (pipeline {torch_rate:.0f}/s); "
            f"bare-loop ratio {best_bare_tf / best_bare_torch:.2f}."
        )
    return Ratio(
        name,
        target,
        value,
        value >= 0.5,
        f"{tf_rate:.0f}/s / {torch_rate:.0f}/s, batch {pipelines['tf'].batch_size}",
        (
            "Per epoch both pipelines also validate and write histograms; rates include that."
            if value >= 0.5
            else "Keras runs each step through its compiled train function with callbacks; at 37 small steps per epoch "
            "the fixed per-step cost dominates. Raising steps_per_execution or a larger batch closes it."
        )
        + overhead,
    )


def predict_vs_direct(comparison: Comparison) -> Ratio:
    """model.predict vs the direct call for one image; checks the TF server calls the signature, not predict."""
    name, target = "Keras model.predict p50 / direct call p50, one image", "shown; server uses the fast path"
    measured = comparison.inference
    predict = measured.p50_ms("keras_model_predict") if measured else None
    direct = measured.p50_ms("keras_direct_call") if measured else None
    if measured is None or predict is None or direct is None:
        return _missing(name, target, "in-process inference was not measured", comparison.reason("inference"))
    fast_path = measured.fast_path
    passed = fast_path.fast_path
    return Ratio(
        name,
        target,
        predict / direct,
        passed,
        f"{predict:.3f} ms / {direct:.3f} ms",
        "model.predict builds a data adapter and a prediction loop on every call; the server loads the SavedModel "
        "and calls its serving_default signature directly"
        + (
            " (checked in serving/tfserving)."
            if passed
            else f" — check FAILED: {fast_path or 'server code not found'}."
        ),
    )


def floor_ratios(floors: Any, reason: str = "not run") -> list[Ratio]:
    """The targets of benchmarks.floors (the Python REST servers against nginx, in one wrk run) as Ratios."""
    from benchmarks.floor_targets import targets

    return [
        Ratio(**target)
        if target["measured"] is not None
        else _missing(target["name"], target["target"], "the floors run", target["note"] or reason)
        for target in targets(floors)
    ]


def compute_ratios(comparison: Comparison) -> list[Ratio]:
    """Every ratio the project checks, serving first."""
    tf_reason, torch_reason = comparison.reason("tf serving"), comparison.reason("torch serving")
    return [
        _if_measured(
            comparison.tf_serving,
            tf_grpc_overhead,
            TF_GRPC,
            "benchmarks.serving_tf gave no gRPC and identity-model p50",
            tf_reason,
        ),
        *floor_ratios(comparison.floors, comparison.reason("floors")),
        _if_measured(
            comparison.torch_serving,
            flask_overhead,
            FLASK,
            "benchmarks.serving_torch gave no Flask predict and no-op p50",
            torch_reason,
        ),
        _if_measured(
            comparison.tf_batching,
            tf_batching,
            TF_BATCHING,
            "benchmarks.batching_sizes gave no on/off throughput",
            comparison.reason("tf batching"),
        ),
        keras_vs_torch_training(comparison),
        predict_vs_direct(comparison),
    ]
