"""TorchServe's server-side batching off against on: throughput and latency at 16 concurrent REST clients.

Two TorchServe instances, identical but for the model's batch size (1, against the batch size and delay the archive
carries in its model-config.yaml), run for the whole comparison; 16 closed-loop clients drive them alternately, round by round, and each
setting's rounds are pooled.

    python -m benchmarks.torchserve_batching [--model-store models/torch/model-store] [--clients 16] [--rounds 2]

The batch size each instance reports registering (its management API's description of the model) is printed
beside its figures, so a setting that did not take effect shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import load
from experiment.errors import UsageError

BATCHING_CLIENTS = 16
# Off and on alternate in this many rounds, so a change in the machine's other load hits both settings alike.
BATCHING_ROUNDS = 2
# Short windows keep the whole on/off comparison near 20 s of load (plus two TorchServe starts).
BATCHING_LOAD_SETTINGS = load.LoadSettings(warmup_seconds=0.5, window_seconds=1.0, max_windows=4)
SETTINGS = ("batching_off", "batching_on")
START_TIMEOUT_SECONDS = 180.0


@dataclasses.dataclass(frozen=True)
class BatchingSetting:
    """One TorchServe instance as it registered the model, and the pooled load it answered."""

    load: load.LoadResult
    batch_size: int
    max_batch_delay_ms: int
    workers: int


@dataclasses.dataclass(frozen=True)
class TorchServeBatching:
    """Batching off (batch size 1) against on (the archive's own batch size and delay)."""

    clients: int
    rounds: int
    seconds: float  # both starts included
    batching_off: BatchingSetting
    batching_on: BatchingSetting

    @property
    def throughput_ratio(self) -> float:
        """Throughput with batching on over off."""
        return self.batching_on.load.throughput_per_second / self.batching_off.load.throughput_per_second

    @property
    def p99_growth_ms(self) -> float:
        """How much batching moved the p99."""
        return self.batching_on.load.latency.p99_ms - self.batching_off.load.latency.p99_ms


def start_torchserve(model_store: Path, run_dir: Path, batch_size: int | None = None) -> Any:
    """TorchServe on free ports through serving.runtime, ready; batch_size None keeps the archive's own batching."""
    from serving import runtime
    from serving.runtime import torchserve

    spec = torchserve.spec(torchserve.TorchServeInstance.on_free_ports(run_dir), model_store, batch_size=batch_size)
    return runtime.start(spec, Path(run_dir) / "torchserve.log", timeout=START_TIMEOUT_SECONDS)


def measure_torchserve_batching(
    model_store: Path = Path("models/torch/model-store"),
    work_dir: Path | None = None,
    clients: int = BATCHING_CLIENTS,
    rounds: int = BATCHING_ROUNDS,
    settings: load.LoadSettings = BATCHING_LOAD_SETTINGS,
) -> TorchServeBatching:
    """TorchServe REST throughput and latency at `clients` concurrent clients, batching off (batch size 1) vs on."""
    if not (Path(model_store) / "digits.mar").is_file():
        raise UsageError(f"No digits.mar in {model_store}; run `make train-torch` first.")
    if clients < 1 or rounds < 1:
        raise UsageError("clients and rounds must be at least 1.")
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.mkdtemp(prefix="torchserve-batching-"))
    image = np.random.default_rng(0).integers(0, 17, size=(1, 8, 8)).astype(np.float32)  # (1, H, W)
    # Off is batch size 1; on keeps the archive's batch size and delay (None: its model-config.yaml), the setting
    # the project serves with. Workers stay the template's in both, so batching is the only difference.
    batch_sizes = {"batching_off": 1, "batching_on": None}
    started = time.perf_counter()
    servers: dict[str, Any] = {}
    try:
        # Both instances run for the whole comparison so that off and on can alternate; the idle one only waits.
        for setting, batch_size in batch_sizes.items():
            servers[setting] = start_torchserve(model_store, work_dir / setting, batch_size)
        endpoints = {setting: server.spec.endpoint("torchserve-rest") for setting, server in servers.items()}
        registered: dict[str, dict[str, Any]] = {}
        for setting, endpoint in endpoints.items():
            client = endpoint.client()
            registered[setting] = client.get_metadata()  # what TorchServe registered, not what we asked for
            client.close()
        runs: dict[str, list[load.LoadResult]] = {setting: [] for setting in servers}
        for _ in range(rounds):
            for setting, endpoint in endpoints.items():
                with load.client_per_thread(endpoint.client, lambda client: client.predict(image)) as sender_factory:
                    runs[setting].append(
                        load.run_closed_loop(None, clients, settings, f"torchserve_{setting}", sender_factory)
                    )
    finally:
        for server in servers.values():
            server.stop()
    measured = {
        setting: BatchingSetting(
            load=load.merge(f"torchserve_{setting}", setting_runs),
            batch_size=registered[setting].get("batch_size"),
            max_batch_delay_ms=registered[setting].get("max_batch_delay_ms"),
            workers=len(registered[setting].get("workers", [])),
        )
        for setting, setting_runs in runs.items()
    }
    return TorchServeBatching(clients, rounds, time.perf_counter() - started, **measured)


def format_batching(batching: TorchServeBatching) -> str:
    """The numbers as a small table with the on/off ratio."""
    lines = [
        f"TorchServe REST, {batching.clients} concurrent clients ({batching.rounds} alternating rounds each):",
        f"{'setting':14} {'batch':>5} {'delay ms':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6} {'gen. cores':>10}",
    ]
    for setting in SETTINGS:
        values: BatchingSetting = getattr(batching, setting)
        point = values.load
        lines.append(
            f"{setting:14} {values.batch_size!s:>5} {values.max_batch_delay_ms!s:>8} "
            f"{point.throughput_per_second:8.0f} {point.latency.p50_ms:8.3f} {point.latency.p99_ms:8.3f} "
            f"{point.errors:6d} {point.generator_cores:10.2f}"
        )
    lines.append(
        f"throughput on / off = {batching.throughput_ratio:.2f}, p99 growth {batching.p99_growth_ms:+.3f} ms "
        f"({batching.seconds:.0f} s including both starts)"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure batching off against on and print the table, with the machine, its load and the command."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.torchserve_batching", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--model-store", type=Path, default=Path("models/torch/model-store"), help="folder holding digits.mar"
    )
    parser.add_argument("--work-dir", type=Path, help="where both instances run (default: a new temporary folder)")
    parser.add_argument("--clients", type=int, default=BATCHING_CLIENTS, help="concurrent closed-loop clients")
    parser.add_argument("--rounds", type=int, default=BATCHING_ROUNDS, help="alternating rounds per setting")
    arguments = parser.parse_args(argv)
    from benchmarks import system
    from experiment import library_logs
    from experiment.cli import run_main
    from serving.runtime import ServerError

    def body() -> int:
        library_logs.quiet()
        machine = system.machine()
        started_at = system.now()
        try:
            result = measure_torchserve_batching(
                arguments.model_store, arguments.work_dir, arguments.clients, arguments.rounds
            )
        except ServerError as error:
            raise UsageError(str(error)) from None
        command = "python -m benchmarks.torchserve_batching " + " ".join(sys.argv[1:] if argv is None else list(argv))
        print(
            f"{started_at}, {machine.cpu_model}, {machine.usable_cores} usable cores, "
            f"load average {machine.load_average_1min:.2f} at start; `{command.strip()}`"
        )
        print(format_batching(result))
        return 0

    return run_main("python -m benchmarks.torchserve_batching", body)


if __name__ == "__main__":
    raise SystemExit(main())
