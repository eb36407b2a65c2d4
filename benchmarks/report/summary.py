"""The report's opening: header, the five-number summary, the servers measured, the machine, the ratios."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks import labels, load
from benchmarks.report.markdown import key_value_table, number, paragraph, ratio, table

if TYPE_CHECKING:
    from benchmarks.measure import Comparison
    from benchmarks.ratios import Ratio

RATIO_HEADERS = ("ratio", "target", "measured", "status", "computed from", "note")


def header(comparison: Comparison) -> list[str]:
    """Title, what produced the report, and any section that failed."""
    machine = comparison.machine
    lines = ["# TensorFlow vs PyTorch: measured comparison", ""]
    lines += paragraph(
        f"Generated {comparison.date} by `{comparison.command}` ({'quick' if comparison.quick else 'full'} mode) on "
        f"{machine.usable_cores} usable cores ({machine.cpu_model}).",
        "Every number below was measured by this run; other processes on the machine make timings noisy "
        f"(1-minute load average at the start: {machine.load_average_1min:.2f}).",
    )
    if comparison.failures:
        failed = "; ".join(f"{name}: {error}" for name, error in comparison.failures.items())
        lines += paragraph(f"**Sections that failed:** {failed}")
    return lines


PYTHON_GENERATOR = "Python generator"
PYTHON_GENERATOR_NAMED = "the Python generator (`benchmarks.load`)"


def served_generator(comparison: Comparison, concurrency: int) -> str | None:
    """Which generator's figures the served rows compare at a concurrency: the compiled one (hey or wrk) when it
    measured every REST endpoint of the sweep there, both frameworks among them; else the Python one. None: no sweep.
    """
    sweep = comparison.sweep
    if sweep is None:
        return None
    external = sweep.external
    if external is not None and external.endpoints:
        points = [item.at(concurrency) for item in external.endpoints]
        frameworks = {item.endpoint.framework for item in external.endpoints}
        if all(point is not None and point.requests > 0 for point in points) and frameworks >= {"tf", "torch"}:
            return external.generator
    return PYTHON_GENERATOR


def best_served(
    comparison: Comparison, framework: str, concurrency: int, fastest: bool, generator: str
) -> tuple[float, str] | None:
    """One framework's best endpoint at a concurrency among `generator`'s figures alone: lowest p50 (fastest) or
    highest throughput, and where it was measured."""
    sweep = comparison.sweep
    if sweep is None:
        return None
    candidates = []
    if generator == PYTHON_GENERATOR:
        for item in sweep.endpoints:
            point = item.at(concurrency)
            if item.endpoint.framework == framework and point is not None and point.latencies_seconds:
                value = point.latency.p50_ms if fastest else point.throughput_per_second
                bound = ", generator-bound" if point.generator_bound else ""
                candidates.append((value, f"{item.endpoint.server} over {item.endpoint.protocol} ({generator}{bound})"))
    elif sweep.external is not None and sweep.external.generator == generator:
        for external_item in sweep.external.endpoints:
            found = external_item.at(concurrency)
            if external_item.endpoint.framework != framework or found is None or found.requests == 0:
                continue
            value = found.p50_ms if fastest else found.throughput_per_second
            if value is not None:
                where = f"{external_item.endpoint.server} over {external_item.endpoint.protocol} ({generator})"
                candidates.append((value, where))
    if not candidates:
        return None
    return min(candidates) if fastest else max(candidates)


def _row(
    question: str,
    values: dict[str, float | None],
    unit: str,
    higher_is_better: bool,
    where: dict[str, str],
    difference: bool = False,
) -> tuple:
    """One summary row: both figures and which framework is ahead by how much (a ratio, or a difference)."""
    cells = [
        f"{number(values[name], unit)}{where.get(name, '')}" if values[name] is not None else "not measured"
        for name in ("tf", "torch")
    ]
    tf_value, torch_value = values["tf"], values["torch"]
    if tf_value is None or torch_value is None:
        verdict = "not measured in this run"
    else:
        better, _worse = ("tf", "torch") if (tf_value > torch_value) == higher_is_better else ("torch", "tf")
        high, low = max(tf_value, torch_value), min(tf_value, torch_value)
        margin = f"{number(high - low)} higher" if difference else f"by {ratio(high, low)}"
        verdict = f"{labels.FRAMEWORK_NAMES[better]}, {margin}" if low > 0 else labels.FRAMEWORK_NAMES[better]
    return (question, *cells, verdict)


def summary(comparison: Comparison) -> list[str]:
    """The five numbers that answer which stack to use for what, each naming what produced it."""
    pipelines = comparison.training.pipelines if comparison.training else {}
    inference = comparison.inference
    rows = [
        _row(
            "Training: steady-state samples/s, same network and batch (median of repeats)",
            {
                name: pipelines[name].steady_samples_per_second if name in pipelines else None
                for name in ("tf", "torch")
            },
            "/s",
            True,
            {},
        ),
        _row(
            "Accuracy on the test split, same data and seed",
            {name: pipelines[name].test_accuracy if name in pipelines else None for name in ("tf", "torch")},
            "",
            True,
            {},
            difference=True,
        ),
        _row(
            "One image in-process (SavedModel signature vs TorchScript), p50 per call",
            {
                "tf": inference.p50_ms("savedmodel_signature") if inference else None,
                "torch": inference.p50_ms("torchscript_module") if inference else None,
            },
            "ms",
            False,
            {},
        ),
    ]
    used = {}
    for question, concurrency, fastest, unit in (
        ("One request at a time, served (fastest endpoint), p50", 1, True, "ms"),
        ("Throughput served to 16 clients (best endpoint)", 16, False, "/s"),
    ):
        generator = served_generator(comparison, concurrency) or PYTHON_GENERATOR
        used[concurrency] = generator
        best = {name: best_served(comparison, name, concurrency, fastest, generator) for name in ("tf", "torch")}
        values = {name: found[0] if found else None for name, found in best.items()}
        where = {name: f", via {found[1]}" for name, found in best.items() if found}
        rows.append(_row(question, values, unit, not fastest, where))
    lines = ["## Summary: which stack, for what", ""]
    lines += paragraph(
        "Five numbers from this run, each the same measurement on both sides; the servers behind the last two are "
        'described under "The servers measured", and every figure\'s detail is in its section below.',
    )
    lines += [
        table(("question", labels.FRAMEWORK_NAMES["tf"], labels.FRAMEWORK_NAMES["torch"], "ahead here"), rows),
        "",
    ]
    lines += paragraph(
        "Ahead means faster or more accurate on this machine, at this size of network; a small model on a few "
        "shared cores favours whichever stack has the least fixed cost per call, which is not what a large model "
        "on a GPU would show."
    )
    return lines + paragraph(generator_sentence(comparison, used))


def generator_sentence(comparison: Comparison, used: dict[int, str]) -> str:
    """Which load generator produced the two served rows, and what that leaves out."""
    if comparison.sweep is None:
        return ""
    if all(generator == PYTHON_GENERATOR for generator in used.values()):
        return (
            f"Both served rows compare figures of {PYTHON_GENERATOR_NAMED} only, over every endpoint: no compiled generator "
            "(hey, wrk) measured every REST endpoint. That generator is Python too, so at 16 clients it may measure "
            "itself as much as the server; the sweep below marks such points generator-bound."
        )
    generators = set(used.values())
    if len(generators) == 1:
        (generator,) = generators
        return (
            f"Both served rows compare `{generator}`'s figures alone, over the REST endpoints: it speaks HTTP only, so "
            "the gRPC endpoints' figures (the Python generator's) are in the sweep below and not in those rows."
        )
    parts = []
    for concurrency, generator in used.items():
        if generator == PYTHON_GENERATOR:
            parts.append(f"at {concurrency} client(s), {PYTHON_GENERATOR_NAMED} over every endpoint")
        else:
            parts.append(f"at {concurrency} client(s), `{generator}` over the REST endpoints")
    return (
        "Each served row compares the figures of one load generator: "
        + "; ".join(parts)
        + ". The compiled generator speaks HTTP only, so the gRPC endpoints' figures (the Python generator's) are in "
        "the sweep below and not in those rows."
    )


def servers(comparison: Comparison) -> list[str]:
    """The one place that says which server produced which serving figure, and which are stand-ins."""
    lines = ["## The servers measured", ""]
    given = comparison.sweep is not None and comparison.sweep.given_by_environment
    if given:
        rows = [
            (
                sweep.endpoint.title,
                labels.FRAMEWORK_NAMES[sweep.endpoint.framework],
                "started outside this run and measured as found (for example docker compose's official images); "
                "this run cannot tell which build answers",
            )
            for sweep in comparison.sweep.endpoints
        ]
        lines += paragraph("The stack under test was given by environment, so the sweep measured those servers:")
        lines += [table(("name in this report", "serves", "what it is"), rows), ""]
        return lines
    rows = [
        (
            labels.TF_SERVER,
            labels.FRAMEWORK_NAMES["tf"],
            "`python -m serving.tfserving`: this project's server with TensorFlow Serving's gRPC and REST API and flags",
            "**yes**: stands in for TensorFlow Serving's C++ `tensorflow_model_server`, which cannot be installed here",
        ),
        (
            labels.FLASK_SERVER,
            labels.FRAMEWORK_NAMES["torch"],
            "the project's Flask app on uvicorn (`python -m serving.flask_app`)",
            "no",
        ),
        (
            labels.TORCHSERVE,
            labels.FRAMEWORK_NAMES["torch"],
            "TorchServe from PyPI (Java front end, Python workers)",
            "no",
        ),
    ]
    started = comparison.sweep is not None or comparison.tf_serving is not None or comparison.torch_serving is not None
    lines += paragraph(
        "Every serving figure in this report names one of these servers, all started by this run on free ports on "
        "this machine."
        if started
        else f"No server ran in this run ({comparison.reason('sweep')}); these are the "
        "servers the serving sections measure when it does."
    )
    lines += [table(("name in this report", "serves", "what ran", "stand-in?"), rows), ""]
    lines += paragraph(
        "The TensorFlow figures are therefore this project's server's, not TensorFlow Serving's: the real binary "
        "(C++, its own batching and threading) may be faster or slower. To measure it, run `docker compose up` and "
        "give its addresses (`TFSERVING_GRPC=127.0.0.1:8500 TFSERVING_REST=http://127.0.0.1:8501 ...`, as the "
        "integration tests accept) to `make compare`."
    )
    return lines


def machine(comparison: Comparison) -> list[str]:
    """Hardware, library versions and thread settings."""
    info = comparison.machine
    lines = ["## Machine", ""]
    lines += paragraph("What the measurements ran on; compare numbers only within one report.")
    lines += [
        key_value_table(
            {
                "CPU": info.cpu_model,
                "logical cores (usable by this process)": f"{info.logical_cores} ({info.usable_cores})",
                "memory": number(info.memory_gib, "GiB"),
                "OS, Python": f"{info.os}, Python {info.python}",
                "date": comparison.date,
            }
        ),
        "",
    ]
    lines += ["Library versions:", "", key_value_table(comparison.versions, ("library", "version")), ""]
    thread_rows = {
        key: (f"{value} (framework default)" if value == 0 else str(value)) for key, value in comparison.threads.items()
    }
    lines += [
        "Thread settings in the comparing process (training workers report theirs in the training section):",
        "",
        key_value_table(thread_rows),
        "",
    ]
    return lines


def ratio_rows(ratios: list[Ratio]) -> list[tuple]:
    """The ratio table's rows, as printed at the end of `make compare`."""
    return [
        (
            item.name,
            item.target,
            number(item.measured) if item.measured is not None else "not measured",
            "MISSED" if item.status == "missed" else item.status,
            item.inputs or "—",
            item.note,
        )
        for item in ratios
    ]


def ratios_section(ratios: list[Ratio]) -> list[str]:
    """The checked ratios with their verdicts."""
    missed = [item.name for item in ratios if item.status == "missed"]
    lines = ["## Ratios", ""]
    lines += paragraph("Each ratio the project checks, computed from numbers measured in this run against its target.")
    lines += [table(RATIO_HEADERS, ratio_rows(ratios)), ""]
    lines += paragraph(
        f"{len(ratios) - len(missed)} of {len(ratios)} are met or not measured; MISSED: {'; '.join(missed)}. A missed "
        "ratio is a finding, and its note says why and what would close it."
        if missed
        else "Every measured ratio meets its target."
    )
    return lines


def section_times(comparison: Comparison) -> list[str]:
    """How long each section took."""
    rows = [(name, number(value, "s")) for name, value in comparison.section_seconds.items()]
    lines = ["## Time each section took", ""]
    lines += paragraph("Wall time of each part of this run, server and training-process start-ups included.")
    return lines + [table(("section", "seconds"), rows), ""]


def generator_bound_note() -> str:
    """What a generator-bound point means, in one sentence."""
    return (
        f"A point is generator-bound when the load generator itself used ≥ {load.GENERATOR_BOUND_CORES} cores of CPU: "
        "a Python client saturates near one core, so such a number says more about the client than the server."
    )
