"""The robustness probe: every check of tests/robustness against a stack started here, with counts per server.

    python -m tests.robustness.probe [--models-dir models] [--bodies 300] [--seed 17] [--hold-seconds 10]
                                     [--sigterm-load-seconds 5] [--skip-restarts] [--work-dir DIR]

Starts the three servers (serving.runtime's Stack, free ports) over the exports in --models-dir (train them first:
`make train-tf train-torch`), sends --bodies malformed REST requests to each, a chunked body over the limit,
poisoned batches, idle connections and slow senders, the gRPC shape cases (TF server); then starts each server alone
over a copy whose newest version is corrupt, and once more to SIGTERM it under load. Prints one table of counts;
exit status 0 when every count of a failure is 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from experiment import library_logs
from experiment.artifacts import latest_version
from experiment.cli import run_main
from experiment.errors import UsageError
from serving.runtime import exports
from tests.robustness import bodies, checks, fallback, grpc_cases, load, servers, sigterm

PROG = "python -m tests.robustness.probe"
ROWS = (
    ("malformed sent", "malformed requests sent"),
    ("5xx", "answers of 5xx"),
    ("hangs", "no answer before the deadline"),
    ("silent cuts", "a 2xx for a malformed or over-limit request"),
    ("no answer", "closed or reset without an answer"),
    ("bad error bodies", "a 4xx that is not one JSON sentence"),
    ("wrong 4xx", "a 4xx other than the 413 required"),
    ("refused by Netty", "TorchServe's front end's own refusal: empty 4xx or closed connection (not a failure)"),
    ("refused by uvicorn", "the Python servers' front end's own plain 400 to malformed framing (not a failure)"),
    ("poisoned-batch failures", "valid requests failed beside malformed ones"),
    ("stalled by slow clients", "valid requests not answered within 1 s"),
    ("gRPC shape failures", "shape cases not INVALID_ARGUMENT within 1 s"),
    ("corrupt-version failures", "no fallback to the last good version"),
    ("lost on SIGTERM", "accepted requests reset or left unanswered"),
    ("refused on SIGTERM", "requests refused cleanly after SIGTERM (not a failure)"),
)
NOT_FAILURES = ("malformed sent", "refused on SIGTERM", "refused by Netty", "refused by uvicorn")


@dataclasses.dataclass
class ServerCounts:
    """One server's column of the table, and the details behind any failure."""

    counts: dict[str, int | str] = dataclasses.field(default_factory=dict)
    details: list[str] = dataclasses.field(default_factory=list)

    def failures(self) -> int:
        """The sum of every failure count (rows that are not failures left out)."""
        return sum(value for row, value in self.counts.items() if row not in NOT_FAILURES and isinstance(value, int))


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a bad value exits with one sentence, as argparse does."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("--models-dir", type=Path, default=Path("models"), help="exports to serve (default models)")
    parser.add_argument("--bodies", type=int, default=300, help="malformed REST requests per server (default 300)")
    parser.add_argument("--seed", type=int, default=17, help="seed of the malformed requests (default 17)")
    parser.add_argument("--hold-seconds", type=float, default=10.0, help="how long slow and idle clients hold on")
    parser.add_argument("--sigterm-load-seconds", type=float, default=5.0, help="load before SIGTERM (default 5 s)")
    parser.add_argument("--skip-restarts", action="store_true", help="no corrupt-version and SIGTERM runs")
    parser.add_argument("--work-dir", type=Path, help="where servers keep their state and logs (default: temporary)")
    arguments = parser.parse_args(argv)
    if arguments.bodies < 1 or arguments.hold_seconds <= 0 or arguments.sigterm_load_seconds <= 0:
        parser.error("--bodies, --hold-seconds and --sigterm-load-seconds must be positive.")
    return arguments


def probe_stack(arguments: argparse.Namespace, work_dir: Path, results: dict[str, ServerCounts]) -> None:
    """The checks that share one stack: malformed bodies, over-limit chunked, poisoned batches, slow clients, gRPC."""
    print(f"Starting the stack over {arguments.models_dir} ...", flush=True)
    stack = servers.start_stack(arguments.models_dir.resolve(), work_dir / "stack")
    try:
        running = servers.stack_servers(stack)
        for name, server in running.items():
            result = results[name]
            cases = bodies.malformed_cases(arguments.seed, arguments.bodies, server.target)
            print(f"{name}: {arguments.bodies} malformed requests ...", flush=True)
            report = checks.send_malformed(server.target, cases)
            over_limit = checks.over_limit_chunked(server.target)
            over_limit_cut = (
                over_limit.outcome == "answered" and over_limit.status is not None and over_limit.status < 400
            )
            result.counts.update(
                {
                    "malformed sent": report.sent + 1,
                    "5xx": report.server_errors + int(over_limit.status is not None and over_limit.status >= 500),
                    "hangs": report.hangs + int(over_limit.outcome == "hang"),
                    "silent cuts": report.silent_cuts + int(over_limit_cut),
                    "no answer": report.no_answer + int(over_limit.outcome == "no answer"),
                    "bad error bodies": report.bad_error_bodies,
                    "refused by Netty": report.netty_refusals,
                    "refused by uvicorn": report.front_end_refusals,
                    "wrong 4xx": report.wrong_status
                    + int(
                        over_limit.status is not None and 400 <= over_limit.status < 500 and over_limit.status != 413
                    ),
                }
            )
            result.details += report.summary(40)
            if over_limit.status != 413:
                result.details.append(f"chunked body over the limit: {over_limit.outcome} {over_limit.status}")
            print(f"{name}: poisoned batches ...", flush=True)
            batch = load.poisoned_batch(server.target)
            result.counts["poisoned-batch failures"] = batch.valid_failed
            result.details += checks.grouped([f"batch: {failure}" for failure in batch.failures])
            print(f"{name}: 200 idle connections and 64 slow senders for {arguments.hold_seconds:g} s ...", flush=True)
            slow = load.slow_and_idle_clients(server.target, hold_seconds=arguments.hold_seconds)
            result.counts["stalled by slow clients"] = slow.stalled
            result.details += checks.grouped([f"slow clients: {failure}" for failure in slow.failures])
            if server.grpc_address is not None:
                print(f"{name}: gRPC shape cases ...", flush=True)
                shapes = grpc_cases.grpc_shape_cases(server.grpc_address, server.process)
                bad = [r for r in shapes if r.code != "INVALID_ARGUMENT" or r.seconds >= 1.0]
                result.counts["gRPC shape failures"] = len(bad)
                result.details += [f"gRPC {r.name}: {r.code} after {r.seconds:.2f} s" for r in bad]
    finally:
        stack.stop(report=lambda line: None)


def probe_restarts(arguments: argparse.Namespace, work_dir: Path, results: dict[str, ServerCounts]) -> None:
    """Each server alone: started over a corrupt newest version, then started again and stopped under load."""
    models_dir = arguments.models_dir.resolve()
    tf_base, torch_base = exports.tf_base_path(models_dir, "digits"), exports.torch_base_path(models_dir, "digits")
    tf_export, torch_export = tf_base / str(latest_version(tf_base)), torch_base / str(latest_version(torch_base))
    store = exports.model_store(models_dir)
    corrupt = {
        "tfserving": lambda folder: fallback.add_corrupt_tf_version(folder, 1, 2),
        "flask": lambda folder: fallback.add_corrupt_torch_version(folder, 1, 2),
        "torchserve": lambda folder: fallback.add_corrupt_archive(folder, "digits", _next_archive_version(store)),
    }
    for name in servers.SERVERS:
        result = results[name]
        print(f"{name}: started over a corrupt newest version ...", flush=True)
        folder_root = work_dir / f"{name}-corrupt"
        folder = servers.copy_models(name, tf_export, torch_export, folder_root / "models")
        corrupt[name](folder)
        running = servers.launch(name, folder, folder_root, wait=False)
        try:
            settle = 60.0 if name == "torchserve" else 30.0
            problem = fallback.wait_for_predictions(running.target, running.process, 180.0, settle)
        finally:
            running.process.stop()
        result.counts["corrupt-version failures"] = int(problem is not None)
        if problem is not None:
            result.details.append(f"corrupt newest version: {problem}")
        print(f"{name}: SIGTERM after {arguments.sigterm_load_seconds:g} s of load ...", flush=True)
        folder_root = work_dir / f"{name}-sigterm"
        folder = servers.copy_models(name, tf_export, torch_export, folder_root / "models")
        running = servers.launch(name, folder, folder_root, wait=True)
        try:
            report = sigterm.sigterm_under_load(
                running.process, running.target, running.grpc_address, load_seconds=arguments.sigterm_load_seconds
            )
        finally:
            running.process.stop()
        result.counts["lost on SIGTERM"] = report.lost + report.server_errors_not_503
        result.counts["refused on SIGTERM"] = report.refused
        result.details += checks.grouped([f"SIGTERM: {failure}" for failure in report.failures])
        exit_time = f"{report.exit_seconds:.1f} s" if report.exit_seconds is not None else "did not exit"
        result.details.append(f"SIGTERM: {report.answered_ok} answered, {report.refused} refused, exit {exit_time}")


def _next_archive_version(store: Path) -> int:
    """One more than the highest <model>-<version>.mar in the store."""
    versions = [
        int(path.stem.rsplit("-", 1)[1]) for path in store.glob("digits-*.mar") if path.stem.rsplit("-", 1)[1].isdigit()
    ]
    return max(versions, default=1) + 1


def print_table(results: dict[str, ServerCounts]) -> None:
    """The counts as a table (rows: what was counted; columns: the servers), then the details of each failure."""
    names = list(results)
    print("\n" + f"{'':26}" + "".join(f"{name:>12}" for name in names))
    for row, meaning in ROWS:
        values = [results[name].counts.get(row, "-") for name in names]
        if all(value == "-" for value in values):
            continue
        print(f"{row:26}" + "".join(f"{value!s:>12}" for value in values) + f"   {meaning}")
    for name in names:
        if results[name].details:
            print(f"\n{name}:")
            for line in results[name].details[:40]:
                print(f"  {line}")
            if len(results[name].details) > 40:
                print(f"  ... and {len(results[name].details) - 40} more")


def main(argv: Sequence[str] | None = None) -> int:
    """Run every check, print the counts per server; 0 when no failure was counted, else 1."""
    arguments = parse_arguments(argv)
    library_logs.quiet()  # the gRPC checks import TensorFlow's protos: no C++ banner

    def body() -> int:
        missing = exports.missing_exports(("tf", "torch", "torch-archive"), arguments.models_dir, "digits")
        if missing:
            raise UsageError(
                f"No {missing[0]} export under {arguments.models_dir}; "
                f"train first with `make train-tf` and `make train-torch`."
            )
        began = time.monotonic()
        results = {name: ServerCounts() for name in servers.SERVERS}
        temporary = None
        if arguments.work_dir is None:
            temporary = Path(tempfile.mkdtemp(prefix="robustness-probe-"))
        work_dir = (arguments.work_dir or temporary).resolve()
        try:
            probe_stack(arguments, work_dir, results)
            if not arguments.skip_restarts:
                probe_restarts(arguments, work_dir, results)
        finally:
            if temporary is not None:
                shutil.rmtree(temporary, ignore_errors=True)
        print_table(results)
        failures = sum(result.failures() for result in results.values())
        print(f"\n{failures} failures counted in {time.monotonic() - began:.0f} s.")
        return 0 if failures == 0 else 1

    return run_main(PROG, body)


if __name__ == "__main__":
    sys.exit(main())
