"""`python -m benchmarks.compare [--quick]`: measure both stacks and write reports/comparison.md and .html with plots.

Every number in the report is measured by this run; nothing is carried over from an earlier one. When the
environment names a running stack (TFSERVING_GRPC, TFSERVING_REST, FLASK_URL, TORCHSERVE_URL, TORCHSERVE_GRPC, as
the integration tests accept), its endpoints are measured and labelled as given, instead of servers started here.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks import inference, load, measure, plots, ratios, training
from benchmarks.report import html as report_html
from benchmarks.report import render
from benchmarks.report.markdown import number, table
from benchmarks.report.summary import RATIO_HEADERS, ratio_rows
from experiment import library_logs

PROG = "python -m benchmarks.compare"
REPORT_FILE = "comparison.md"
HTML_FILE = "comparison.html"
DATA_FILE = "comparison.json"


def build_settings(arguments: argparse.Namespace) -> measure.CompareSettings:
    """Quick or full settings, with the command line's overrides."""
    training_settings = training.QUICK_TRAINING if arguments.quick else training.TrainingSettings()
    overrides = {
        name: value
        for name, value in (
            ("repeats", arguments.repeats),
            ("epochs", arguments.epochs),
            ("threads", arguments.threads),
        )
        if value is not None
    }
    return measure.CompareSettings(
        quick=arguments.quick,
        output_dir=arguments.output_dir,
        runs_dir=arguments.runs_dir,
        serving=not arguments.quick if arguments.serving is None else arguments.serving,
        distributed=not arguments.quick if arguments.distributed is None else arguments.distributed,
        training=dataclasses.replace(training_settings, **overrides),
        inference=inference.QUICK_INFERENCE if arguments.quick else inference.InferenceSettings(),
        load=load.QUICK_SETTINGS if arguments.quick else load.LoadSettings(),
    )


def build_parser() -> argparse.ArgumentParser:
    """Command-line flags."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (one repeat, two epochs, no servers)")
    parser.add_argument("--output-dir", type=Path, default=Path("reports"), help="where the report and plots go")
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"), help="where the article's graph runs go")
    parser.add_argument(
        "--serving",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start the servers (default: full mode only)",
    )
    parser.add_argument(
        "--distributed",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="1 vs 2 process training (default: full mode only)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="training repeats per framework")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs per repeat")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 3 when a measured target is missed (a missed target is always printed as MISSED)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="fix intra/inter-op threads for training and inference (default: framework defaults)",
    )
    return parser


def _usage_error(arguments: argparse.Namespace) -> str | None:
    for name in ("repeats", "epochs"):
        value = getattr(arguments, name)
        if value is not None and value < 1:
            return f"--{name} must be a positive integer, got {value}."
    if arguments.epochs is not None and arguments.epochs < 2:
        return "--epochs must be at least 2: the first epoch is excluded from the steady state."
    return None


def display_command(argv: list[str]) -> str:
    """The command as typed, with absolute paths cut to their last part: the report names no machine's folders."""
    shown = [f"…/{Path(argument).name}" if Path(argument).is_absolute() else argument for argument in argv]
    return " ".join([PROG, *shown])


def write_report(comparison: measure.Comparison, checked: list[ratios.Ratio], output_dir: Path) -> int:
    """Plots, the markdown report, its HTML page and the JSON data; returns the number of plots drawn."""
    for stale in output_dir.glob("*.png"):
        stale.unlink()
    figures = plots.draw_all(comparison, output_dir)
    text = render(comparison, checked, figures) + "\n"
    (output_dir / REPORT_FILE).write_text(text)
    (output_dir / HTML_FILE).write_text(report_html.render(text, output_dir))
    data = measure.jsonable(comparison) | {
        "ratios": [measure.jsonable(item) | {"status": item.status} for item in checked]
    }
    (output_dir / DATA_FILE).write_text(json.dumps(data, indent=1, default=str) + "\n")
    return len(figures)


def missed_lines(checked: list[ratios.Ratio]) -> list[str]:
    """One MISSED line per measured target that was missed: its name, the figure against the target, the inputs."""
    return [
        f"MISSED: {item.name}: {number(item.measured)} against {item.target} ({item.inputs or 'no inputs recorded'})"
        for item in checked
        if item.status == "missed"
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, write the report, its page, the JSON and the plots; print the ratio table and every missed target."""
    arguments = build_parser().parse_args(argv)
    problem = _usage_error(arguments)
    if problem:
        print(f"{PROG}: error: {problem}", file=sys.stderr)
        return 2
    library_logs.quiet()
    settings = build_settings(arguments)
    shutil.rmtree(settings.work_dir, ignore_errors=True)
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    command = display_command(sys.argv[1:] if argv is None else list(argv))
    comparison = measure.measure_everything(settings, command)
    checked = ratios.compute_ratios(comparison)
    comparison.section_seconds["total"] = time.perf_counter() - started
    count = write_report(comparison, checked, settings.output_dir)
    print("\n".join(["## Ratios", "", table(RATIO_HEADERS, ratio_rows(checked)), ""]))
    print(
        f"Report: {settings.output_dir / REPORT_FILE} and {HTML_FILE} ({count} plots) in "
        f"{comparison.section_seconds['total']:.0f} s"
    )
    missed = missed_lines(checked)
    for line in missed:
        print(line, file=sys.stderr)
    if comparison.failures:
        print(
            f"{PROG}: {len(comparison.failures)} section(s) failed: {', '.join(comparison.failures)}", file=sys.stderr
        )
        return 1
    if missed:
        print(f"{PROG}: {len(missed)} of {len(checked)} targets missed (see MISSED above).", file=sys.stderr)
        return 3 if arguments.strict else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
