"""`python -m benchmarks.batching_sizes`: where dynamic batching pays on the TF server, model size by model size.

The digits network's shape (scale → flatten → dense → dense of half the width → logits) is built at several hidden
widths, from the digits model's 64 up to a few thousand units, and exported here as SavedModels with the TF
pipeline's export code (untrained: the time of a call does not depend on the weights). Two TF server instances
serve every width: one as `make serve` runs it, one with `--enable_batching` and a batching parameters file. A
compiled HTTP load generator (`wrk`, else `hey`) sends the one-digit predict body over REST on 16 kept-alive
connections to each width, batching off and on in turn, in rounds, so that load from other programs falls on both
alike; each figure is the median over the rounds.

The crossover is the smallest width from which batching on beats off (on / off ≥ BEATS) at that width and every
larger one measured; None when batching wins at no width, or only at a width below one where it loses.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import http_load
from benchmarks.labels import EndpointLabel

WIDTHS = (64, 256, 1024, 2048, 4096)
QUICK_WIDTHS = (64, 1024, 4096)
CLIENTS = 16
# Batching on must answer at least this many times off's rate to count as beating it: runs a few seconds long on a
# shared machine move by a few percent from round to round.
BEATS = 1.05
# Each of the server's workers (one per core) gets its share of the 16 connections and batches on its own: a batch
# is dispatched when it holds max_batch_size requests or its oldest request has waited the timeout.
MAX_BATCH_SIZE = 8
BATCH_TIMEOUT_MICROS = 1000
NUM_BATCH_THREADS = 1
BATCHING_PARAMETERS = (
    f"max_batch_size {{ value: {MAX_BATCH_SIZE} }}\nbatch_timeout_micros {{ value: {BATCH_TIMEOUT_MICROS} }}\n"
    f"num_batch_threads {{ value: {NUM_BATCH_THREADS} }}\n"
)
# Batching may make the slowest requests wait at most one batch timeout longer, plus 1 ms of slack.
P99_GROWTH_SLACK_MS = 1.0
START_TIMEOUT_S = 240.0
SETTINGS = ("off", "on")


def hidden_sizes(width: int) -> tuple[int, int]:
    """The digits network's two hidden layers, (64, 32), scaled to a first layer of `width` units."""
    return (width, max(1, width // 2))


def parameter_count(width: int, inputs: int = 64, classes: int = 10) -> int:
    """Weights and biases of the network at this width."""
    sizes = [inputs, *hidden_sizes(width), classes]
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in itertools.pairwise(sizes))


@dataclasses.dataclass(frozen=True)
class SizePoint:
    """One width: throughput and latency per round with batching off and on."""

    width: int
    off_rps: tuple[float, ...]
    on_rps: tuple[float, ...]
    off_p50_ms: tuple[float, ...] = ()
    on_p50_ms: tuple[float, ...] = ()
    off_p99_ms: tuple[float, ...] = ()
    on_p99_ms: tuple[float, ...] = ()
    errors: int = 0

    @property
    def hidden_sizes(self) -> tuple[int, int]:
        return hidden_sizes(self.width)

    @property
    def parameters(self) -> int:
        return parameter_count(self.width)

    @property
    def off(self) -> float:
        """Median requests per second with batching off."""
        return statistics.median(self.off_rps)

    @property
    def on(self) -> float:
        """Median requests per second with batching on."""
        return statistics.median(self.on_rps)

    @property
    def ratio(self) -> float:
        """Throughput on over off."""
        return self.on / self.off if self.off > 0 else float("inf")

    @property
    def p99_growth_ms(self) -> float | None:
        """How much batching moved the median p99 (None when a run gave no p99)."""
        if not self.off_p99_ms or not self.on_p99_ms:
            return None
        return statistics.median(self.on_p99_ms) - statistics.median(self.off_p99_ms)


def crossover(points: Sequence[SizePoint], beats: float = BEATS) -> int | None:
    """The smallest width from which batching on beats off at that width and every larger one; None if none."""
    found = None
    for point in sorted(points, key=lambda item: item.width, reverse=True):
        if point.ratio < beats:
            break
        found = point.width
    return found


@dataclasses.dataclass(frozen=True)
class BatchingBySize:
    """One run: every width, off against on, and how it was measured."""

    generator: str  # "wrk" or "hey"
    clients: int
    rounds: int
    seconds: float  # per run, after the generator's own warm-up
    points: list[SizePoint]
    workers: int = 0  # the server's worker processes (0: not known)
    load_average: str = ""  # after the last round
    date: str = ""
    max_batch_size: int = MAX_BATCH_SIZE
    batch_timeout_ms: float = BATCH_TIMEOUT_MICROS / 1000
    num_batch_threads: int = NUM_BATCH_THREADS

    @property
    def crossover(self) -> int | None:
        """The smallest width from which batching pays (see the function)."""
        return crossover(self.points)

    @property
    def largest(self) -> SizePoint:
        """The widest model measured."""
        return max(self.points, key=lambda point: point.width)

    @property
    def p99_growth_limit_ms(self) -> float:
        """One batch timeout plus the slack."""
        return self.batch_timeout_ms + P99_GROWTH_SLACK_MS

    def tail_grown(self) -> list[int]:
        """Widths, from the crossover up, whose p99 grew by more than the limit with batching on."""
        edge = self.crossover
        return [
            point.width
            for point in self.points
            if edge is not None
            and point.width >= edge
            and point.p99_growth_ms is not None
            and point.p99_growth_ms > self.p99_growth_limit_ms
        ]


def write_models(folder: Path, widths: Sequence[int]) -> dict[str, Path]:
    """Version 1 of the digits network at each width, as the TF pipeline exports it; model name → base path."""
    from experiment.spec import NetworkSpec
    from tf_pipeline.export import write_saved_model
    from tf_pipeline.model import build_model

    bases = {}
    for width in widths:
        spec = NetworkSpec(hidden_sizes=hidden_sizes(width))
        base = folder / model_name(width)
        write_saved_model(build_model(spec), spec, base / "1")
        bases[model_name(width)] = base
    return bases


def model_name(width: int) -> str:
    """The name the servers give the model of this width."""
    return f"mlp-{width}"


def model_config(bases: dict[str, Path]) -> str:
    """A --model_config_file naming every model."""
    lines = [
        f'  config {{ name: "{name}" base_path: "{base}" model_platform: "tensorflow" }}'
        for name, base in bases.items()
    ]
    return "model_config_list {\n" + "\n".join(lines) + "\n}\n"


def measure(
    widths: Sequence[int] = WIDTHS,
    rounds: int = 3,
    seconds: float = 1.0,
    clients: int = CLIENTS,
    generator: str | None = None,
) -> BatchingBySize:
    """Export the models, start both servers, drive every width off and on in rounds, stop the servers."""
    import datetime

    from benchmarks.profile_request import one_digit_body
    from serving.runtime import process as runtime_process
    from serving.runtime import tfserving as tfserving_runtime
    from serving.tfserving.config import default_workers

    generator = generator or http_load.find_generator()
    if generator is None:
        raise RuntimeError("neither hey nor wrk is installed (apt-get install wrk)")
    drive = {"hey": http_load.run_hey, "wrk": http_load.run_wrk}[generator]
    widths = sorted(set(widths))
    found: dict[int, dict[str, list]] = {
        width: {f"{setting}_{what}": [] for setting in SETTINGS for what in ("rps", "p50", "p99")} for width in widths
    }
    errors = dict.fromkeys(widths, 0)
    with tempfile.TemporaryDirectory(prefix="batching-sizes-") as scratch:
        work = Path(scratch)
        bases = write_models(work / "models", widths)
        config = work / "models.config"
        config.write_text(model_config(bases))
        parameters = work / "batching.config"
        parameters.write_text(BATCHING_PARAMETERS)
        body_path = work / "body.json"
        body_path.write_bytes(one_digit_body())
        flags = {
            "off": [f"--model_config_file={config}"],
            "on": [f"--model_config_file={config}", "--enable_batching", f"--batching_parameters_file={parameters}"],
        }
        servers = {}
        try:
            # Both start at once: their start-ups (TensorFlow's import in every worker) overlap.
            for setting in SETTINGS:
                spec = tfserving_runtime.spec(tfserving_runtime.TFServingPorts.free(), flags=flags[setting])
                if spec.prepare is not None:
                    spec.prepare()
                servers[setting] = runtime_process.ServerProcess.launch(spec, work / f"{setting}.log")
            runtime_process.wait_until_ready(list(servers.values()), START_TIMEOUT_S)
            urls = {setting: server.spec.endpoint("tf-rest").address for setting, server in servers.items()}
            for _ in range(rounds):
                for width in widths:
                    for setting in SETTINGS:
                        url = f"{urls[setting]}/v1/models/{model_name(width)}:predict"
                        label = EndpointLabel(f"batching-{setting}", "tf", "TF server", "REST", "")
                        point = drive(http_load.Target(label, url), body_path, clients, seconds)
                        errors[width] += point.errors
                        found[width][f"{setting}_rps"].append(point.throughput_per_second)
                        found[width][f"{setting}_p50"].append(point.p50_ms or float("nan"))
                        found[width][f"{setting}_p99"].append(point.p99_ms or float("nan"))
        finally:
            runtime_process.stop_all(list(servers.values()))
    points = [
        SizePoint(
            width,
            tuple(found[width]["off_rps"]),
            tuple(found[width]["on_rps"]),
            tuple(found[width]["off_p50"]),
            tuple(found[width]["on_p50"]),
            tuple(found[width]["off_p99"]),
            tuple(found[width]["on_p99"]),
            errors[width],
        )
        for width in widths
    ]
    return BatchingBySize(
        generator,
        clients,
        rounds,
        seconds,
        points,
        workers=default_workers(),
        load_average=" ".join(f"{value:.2f}" for value in os.getloadavg()),
        date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    )


def format_table(result: BatchingBySize, server: str = "") -> list[str]:
    """The markdown table of every width, off against on; `server` names the server in a first column."""
    first_header, first_rule = ("| server ", "| --- ") if server else ("", "")
    lines = [
        f"{first_header}| hidden layers | parameters | req/s, off | req/s, on | on / off | p50 off / on (ms) | "
        "p99 off / on (ms) | errors |",
        f"{first_rule}| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for point in sorted(result.points, key=lambda item: item.width):
        first, second = point.hidden_sizes
        p50 = (
            f"{statistics.median(point.off_p50_ms):.2f} / {statistics.median(point.on_p50_ms):.2f}"
            if point.off_p50_ms and point.on_p50_ms
            else ""
        )
        p99 = (
            f"{statistics.median(point.off_p99_ms):.2f} / {statistics.median(point.on_p99_ms):.2f}"
            if point.off_p99_ms and point.on_p99_ms
            else ""
        )
        lines.append(
            (f"| {server} " if server else "")
            + f"| {first}, {second} | {point.parameters:,} | {point.off:,.0f} | {point.on:,.0f} | {point.ratio:.2f} | "
            f"{p50} | {p99} | {point.errors} |"
        )
    return lines


def crossover_sentence(result: BatchingBySize) -> str:
    """The crossover, named in one sentence."""
    edge = result.crossover
    if edge is None:
        return (
            f"Batching on beats off (on / off ≥ {BEATS:g}) at no width up to {result.largest.width} here: no crossover."
        )
    first, second = hidden_sizes(edge)
    return (
        f"Crossover: hidden layers of {first} and {second} units ({parameter_count(edge):,} parameters) is the "
        f"smallest width from which batching on beats off (on / off ≥ {BEATS:g}) at every larger width measured."
    )


def report(result: BatchingBySize, command: str) -> str:
    """The markdown the command prints."""
    lines = [
        f"Measured {result.date}; load average after the last round: {result.load_average}.",
        f"Command: `{command}`. Generator: {result.generator}, {result.clients} connections, {result.rounds} round(s) of "
        f"{result.seconds:g} s per point (medians), one-digit body over REST; {result.workers} server workers; "
        f"batching: max batch size {result.max_batch_size}, timeout {result.batch_timeout_ms:g} ms, "
        f"{result.num_batch_threads} batch thread per worker.",
        "",
        *format_table(result),
        "",
        crossover_sentence(result),
    ]
    return "\n".join(lines)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of widths such as 64,1024") from None
    if not widths or min(widths) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: every width must be at least 2")
    return widths


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the table and the crossover."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batching_sizes", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--widths", type=_widths, default=WIDTHS, help="first hidden layer widths, e.g. 64,256,1024,2048,4096"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds taking turns; figures are their medians")
    parser.add_argument(
        "--seconds", type=float, default=1.0, help="seconds per run (after a 1 s warm-up; whole seconds for wrk)"
    )
    parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent connections")
    arguments = parser.parse_args(argv)
    if arguments.rounds < 1 or arguments.seconds <= 0 or arguments.clients < 1:
        print("--rounds and --clients must be at least 1 and --seconds positive.", file=sys.stderr)
        return 2
    if http_load.find_generator() is None:
        print("Neither hey nor wrk is installed (apt-get install wrk); nothing measured.", file=sys.stderr)
        return 2
    from experiment import library_logs

    library_logs.quiet()
    result = measure(arguments.widths, arguments.rounds, arguments.seconds, arguments.clients)
    command = "python -m benchmarks.batching_sizes " + " ".join(sys.argv[1:] if argv is None else list(argv))
    print(report(result, command.strip()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
