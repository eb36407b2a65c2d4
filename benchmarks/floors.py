"""The two Python REST servers against the floor of this machine, measured in one run with wrk.

    python -m benchmarks.floors --tf-models models/tf/digits --torch-models models/torch/digits \
        [--model-store models/torch/model-store]

Starts nginx answering a fixed body of the size of a real answer (the C floor: what HTTP alone costs here), the
Flask app and the TF Serving-compatible server on free ports, each as `make serve` starts it, and drives each with
wrk (the same one-digit body the load benchmarks send) at 1 and at 16 connections, in rounds that take turns so
that load from other programs falls on all of them alike; each figure is the median over the rounds. Two more
floors are measured on the Flask server itself (benchmarks.serving_torch's app: the production app plus two paths):
the front end answering a fixed body before Flask runs (the port, its bridge, no framework), and a Flask route that
does no work. It checks:

- p50 at 1 connection, minus the model's own p50 called in this process, at most 3x nginx's p50 (both servers);
- requests per second at 16 connections at least 8% of nginx's for Flask, 7.5% for the TF server;
- with --model-store, TorchServe's p50 at 1 connection at most 1.3x that of a handler that does no work
  (benchmarks/torchserve_noop_handler.py) on a second TorchServe with the same settings.

A missed target also shows the same figure for the floor that does no work (the no-op Flask route for Flask, the
front end's fixed answer for the TF server, which has no framework): when that misses it too, no request path of
the app's could meet it on this machine. Without nginx, the same figures are reported against the front end's fixed
answer, with no target. Memory: each server's proportional set size (PSS, where
the system gives it, else RSS) over its whole process tree, after start and after the load. The machine, its load
average and the command are printed with the table, which docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from benchmarks import http_load
from benchmarks.labels import EndpointLabel
from benchmarks.profile_request import median_us, one_digit_body
from benchmarks.serving_torch import BENCHMARK_APPLICATION, FIXED_ANSWER_PATH, NOOP_PATH
from experiment import processes
from serving.runtime import flask_app as flask_runtime
from serving.runtime import process as runtime_process
from serving.runtime import tfserving as tfserving_runtime

START_TIMEOUT_S = 180.0
# The targets: p50 at 1 connection minus the model's p50, over nginx's p50; rate at 16 connections over nginx's.
P50_OVER_FLOOR = 3.0
TORCHSERVE_OVER_NOOP = 1.3
NOOP_HANDLER = Path(__file__).resolve().parent / "torchserve_noop_handler.py"
MODEL_CONFIG = Path(__file__).resolve().parent.parent / "serving" / "torchserve" / "model-config.yaml"
RATE_SHARES = {"flask": 0.08, "tfserving": 0.075}
NO_NGINX = "nginx is not installed (apt-get install nginx-light)"
MEMORY_NOTE = "Memory is PSS where the system reports it (RSS otherwise), summed over each server's processes."
TITLES = {"flask": "Flask", "tfserving": "TF server REST"}
# The floor that does no work, measured on the Flask server, beside each server's targets; the front end's is also
# the reference without nginx.
FRONT_END = "front-end"
NOOP_ROUTE = "flask-noop"
FLOOR_OF = {"flask": NOOP_ROUTE, "tfserving": FRONT_END}
FLOOR_TITLES = {
    FRONT_END: "the front end answering a fixed body before any framework runs",
    NOOP_ROUTE: "a Flask route that does no work",
}
# What a missed target means, printed beside it (docs/performance.md has the measurements behind these sentences).
MISSED_P50_NOTE = (
    "Python per request: the app's request path (and, for Flask, its routing) and the front end's hand-over to a pool "
    "thread cost several times nginx's whole answer; on an idle machine every figure at one connection also carries "
    "CPU wake-ups (docs/performance.md, 'Measured')."
)
MISSED_RATE_NOTE = (
    "Each request runs the app's Python request path, one at a time per worker and a worker per core, where nginx "
    "answers in C (docs/performance.md, 'Measured')."
)
NGINX_CONFIG = """daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            default_type application/json;
            return 200 '{answer}';
        }}
    }}
}}
"""


@dataclasses.dataclass
class Measured:
    """One server's figures: wrk's p50 at 1 connection (ms) and rate at 16 (per second), per round."""

    name: str
    p50_ms: list[float] = dataclasses.field(default_factory=list)
    rate: list[float] = dataclasses.field(default_factory=list)
    errors: int = 0
    memory_at_rest_mb: float | None = None
    memory_after_load_mb: float | None = None
    model_p50_ms: float | None = None
    path_p50_ms: float | None = None  # one request through the app in this process, without HTTP

    @property
    def median_p50_ms(self) -> float:
        return statistics.median(self.p50_ms)

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rate)


def tree_memory_mb(leader_pid: int) -> float:
    """PSS (else RSS) of a process and all its descendants, in MB."""
    total = 0
    with contextlib.suppress(psutil.NoSuchProcess):
        leader = psutil.Process(leader_pid)
        for member in [leader, *leader.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                info = member.memory_full_info()
                total += getattr(info, "pss", info.rss)
    return total / 1e6


@contextlib.contextmanager
def nginx_floor(answer: bytes) -> Iterator[str | None]:
    """nginx on a free port answering `answer` to every request; None when nginx is not installed."""
    binary = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if binary is None:
        yield None
        return
    (port,) = processes.free_ports(1)
    with tempfile.TemporaryDirectory(prefix="nginx-floor-") as folder:
        config = Path(folder) / "nginx.conf"
        text = answer.decode().replace("\\", "\\\\").replace("'", "\\'")
        config.write_text(NGINX_CONFIG.format(folder=folder, port=port, answer=text))
        process = subprocess.Popen(
            [binary, "-p", folder, "-c", str(config), "-e", f"{folder}/error.log"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 10
            while not processes.port_accepts(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"nginx did not start: {(Path(folder) / 'error.log').read_text()[-400:]}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}/"
        finally:
            process.terminate()
            process.wait(10)


def _label(key: str) -> EndpointLabel:
    return EndpointLabel(key, "none", key, "REST", "")


def drive(
    url: str, body_path: Path, concurrency: int, seconds: float, headers: dict | None = None
) -> http_load.ExternalPoint:
    """One wrk run (after wrk's own 1 s warm-up)."""
    return http_load.run_wrk(http_load.Target(_label(url), url, headers or {}), body_path, concurrency, seconds)


def noop_store(work: Path) -> Path:
    """A model store whose digits.mar is the no-op handler, with the digits model's workers and batching."""
    store = work / "noop-store"
    store.mkdir()
    archiver = Path(sys.executable).parent / "torch-model-archiver"
    subprocess.run(
        [
            str(archiver),
            "--model-name",
            "digits",
            "--version",
            "1",
            "--handler",
            str(NOOP_HANDLER),
            "--config-file",
            str(MODEL_CONFIG),
            "--export-path",
            str(store),
        ],
        check=True,
        capture_output=True,
    )
    return store


def torchserve_specs(model_store: Path, work: Path) -> dict:
    """TorchServe over the real store and over the no-op store, each on free ports in a folder of its own."""
    from serving.runtime import torchserve

    specs = {}
    for name, store in (("torchserve", model_store), ("torchserve-noop", noop_store(work))):
        instance = torchserve.TorchServeInstance.on_free_ports(work / name)
        specs[name] = torchserve.spec(instance, store, rollout=False)
    return specs


def in_process_ms(server: str, base_path: Path) -> tuple[float, float]:
    """The model alone on one digit, called in this process as the server calls it, and one request through the
    whole app in this process without HTTP (medians, ms)."""
    from benchmarks import profile_request

    build = profile_request.flask_app if server == "flask" else profile_request.tfserving_app
    app, stop = build(base_path)
    body = one_digit_body()
    try:
        model = median_us(profile_request.model_call(server, app), 2000) / 1000
        return model, median_us(lambda: profile_request.call_once(app, body), 2000) / 1000
    finally:
        stop()


def predict_answer(url: str, body: bytes, headers: dict | None = None) -> bytes:
    """The answer to one POST of body."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return answer.read()


@dataclasses.dataclass
class FloorsResult:
    """One run: the machine and its load, and each measured server ("nginx" absent when it is not installed)."""

    machine: dict
    servers: dict[str, Measured]
    rounds: int
    seconds: float
    generator: str = "wrk"


def measure(
    tf_models: Path, torch_models: Path, rounds: int = 3, seconds: float = 4.0, model_store: Path | None = None
) -> FloorsResult:
    """Everything this module measures, in a folder of its own (for make compare); TorchServe too with model_store."""
    with tempfile.TemporaryDirectory(prefix="floors-") as work:
        store = model_store.resolve() if model_store is not None else None
        results, machine = run(tf_models.resolve(), torch_models.resolve(), rounds, seconds, Path(work), store)
    return FloorsResult(machine, results, rounds, seconds)


def run(
    tf_models: Path, torch_models: Path, rounds: int, seconds: float, work: Path, model_store: Path | None = None
) -> tuple[dict[str, Measured], dict]:
    """Every measurement, in one run: the floor, both servers, the models in process, memory (and TorchServe against
    its no-op handler with model_store)."""
    body = one_digit_body()
    body_path = work / "body.json"
    body_path.write_bytes(body)
    results = {name: Measured(name) for name in ("nginx", FRONT_END, NOOP_ROUTE, "flask", "tfserving")}
    for name, models in (("flask", torch_models), ("tfserving", tf_models)):
        results[name].model_p50_ms, results[name].path_p50_ms = in_process_ms(name, models)
    specs = {
        "flask": flask_runtime.spec(
            processes.free_ports(1)[0], base_path=torch_models, application=BENCHMARK_APPLICATION
        ),
        "tfserving": tfserving_runtime.spec(tfserving_runtime.TFServingPorts.free(), base_path=tf_models),
    }
    urls = {
        "flask": specs["flask"].endpoint("flask-rest").address,
        "tfserving": specs["tfserving"].endpoint("tf-rest").address,
    }
    urls = {name: f"{url}/v1/models/digits:predict" for name, url in urls.items()}
    flask_url = specs["flask"].endpoint("flask-rest").address
    urls |= {FRONT_END: f"{flask_url}{FIXED_ANSWER_PATH}", NOOP_ROUTE: f"{flask_url}{NOOP_PATH}"}
    headers: dict[str, dict] = {}
    if model_store is not None:
        for name, spec in torchserve_specs(model_store, work).items():
            specs[name] = spec
            results[name] = Measured(name)
            urls[name] = f"{spec.endpoint('torchserve-rest').address}/predictions/digits"
    servers = {}
    try:
        for name, spec in specs.items():
            servers[name] = runtime_process.start(spec, work / f"{name}.log", START_TIMEOUT_S)
            if name.startswith("torchserve"):
                headers[name] = spec.endpoint("torchserve-rest").connect("digits", 10.0).authorization_headers()
            predict_answer(urls[name], body, headers.get(name))
            results[name].memory_at_rest_mb = tree_memory_mb(servers[name].pid)
        answer = predict_answer(urls["flask"], body)
        with nginx_floor(answer) as nginx_url:
            if nginx_url is not None:
                urls["nginx"] = nginx_url
            else:
                del results["nginx"]
            for _ in range(rounds):
                for name, measured in results.items():
                    for concurrency in (1, 16):
                        point = drive(urls[name], body_path, concurrency, seconds, headers.get(name))
                        measured.errors += point.errors
                        if concurrency == 1:
                            measured.p50_ms.append(point.p50_ms or float("nan"))
                        else:
                            measured.rate.append(point.throughput_per_second)
        for name, server in servers.items():
            results[name].memory_after_load_mb = tree_memory_mb(server.pid)
    finally:
        runtime_process.stop_all(list(servers.values()))
    machine = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": (
            f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"{platform.system()} {platform.release()}"
        ),
        "load": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "cores": psutil.cpu_count(),
        "answer_bytes": len(answer),
    }
    return results, machine


def targets(floors: FloorsResult | None) -> list[dict]:
    """Each target as name, target, measured, passed, inputs, note (measured None, and why in note, when missing;
    passed None for a figure reported without a target)."""
    found = []
    for server, share in RATE_SHARES.items():
        names = (
            (f"{TITLES[server]}: (p50, 1 connection − model p50) / nginx p50 (wrk)", f"≤ {P50_OVER_FLOOR:g}"),
            (f"{TITLES[server]}: req/s at 16 connections / nginx's (wrk)", f"≥ {share:g}"),
        )
        servers = floors.servers if floors is not None else {}
        measured, nginx = servers.get(server), servers.get("nginx")
        if floors is None or measured is None or (nginx is None and FRONT_END not in servers):
            note = ""
            if floors is not None:
                note = f"{TITLES[server]} was not measured" if measured is None else NO_NGINX
            found += [
                {"name": name, "target": target, "measured": None, "passed": None, "inputs": "", "note": note}
                for name, target in names
            ]
        elif nginx is None:
            found += _against_front_end(floors, measured, server)
        else:
            floor, front_end = servers.get(FLOOR_OF[server]), servers.get(FRONT_END)
            found += _against_nginx(floors, measured, nginx, (floor, front_end), names, share)
    name, target = "TorchServe p50 / no-op handler's p50, 1 connection (wrk)", f"≤ {TORCHSERVE_OVER_NOOP:g}"
    real = floors.servers.get("torchserve") if floors is not None else None
    noop = floors.servers.get("torchserve-noop") if floors is not None else None
    if real is None or noop is None:
        note = "" if floors is None else "TorchServe was not measured (no --model-store)"
        found.append({"name": name, "target": target, "measured": None, "passed": None, "inputs": "", "note": note})
    else:
        value = real.median_p50_ms / noop.median_p50_ms
        found.append(
            {
                "name": name,
                "target": target,
                "measured": value,
                "passed": value <= TORCHSERVE_OVER_NOOP,
                "inputs": f"{real.median_p50_ms:.3f} ms / {noop.median_p50_ms:.3f} ms ({floors.generator})",
                "note": "",
            }
        )
    return found


def _against_nginx(
    floors: FloorsResult,
    measured: Measured,
    nginx: Measured,
    floors_measured: tuple[Measured | None, Measured | None],
    names: tuple[tuple[str, str], tuple[str, str]],
    share: float,
) -> list[dict]:
    """A server's two targets against nginx. A missed p50 is shown beside the same figure for the server's floor that
    does no work; a missed rate beside the CPU time per request it allows, against what the front end's fixed answer
    and the app's request path in process take at least."""
    floor, front_end = floors_measured
    model = measured.model_p50_ms or 0.0
    p50 = (measured.median_p50_ms - model) / nginx.median_p50_ms
    rate = measured.median_rate / nginx.median_rate
    p50_note, rate_note = MISSED_P50_NOTE, MISSED_RATE_NOTE
    if floor is not None:
        floor_p50 = floor.median_p50_ms / nginx.median_p50_ms
        p50_note += _floor_sentence(
            FLOOR_TITLES[floor.name], floor_p50, floor_p50 > P50_OVER_FLOOR, f"{floor.median_p50_ms:.3f} ms"
        )
    cores = floors.machine.get("cores")
    if front_end is not None and measured.path_p50_ms is not None and cores:
        rate_note += _budget_sentence(cores, share * nginx.median_rate, front_end.median_rate, measured.path_p50_ms)
    return [
        {
            "name": names[0][0],
            "target": names[0][1],
            "measured": p50,
            "passed": p50 <= P50_OVER_FLOOR,
            "inputs": f"({measured.median_p50_ms:.3f} ms − {model:.3f} ms) / {nginx.median_p50_ms:.3f} ms "
            f"({floors.generator}, load {floors.machine.get('load', '?')})",
            "note": "" if p50 <= P50_OVER_FLOOR else p50_note,
        },
        {
            "name": names[1][0],
            "target": names[1][1],
            "measured": rate,
            "passed": rate >= share,
            "inputs": f"{measured.median_rate:,.0f}/s / {nginx.median_rate:,.0f}/s ({floors.generator})",
            "note": "" if rate >= share else rate_note,
        },
    ]


def _floor_sentence(title: str, value: float, missed: bool, figure: str) -> str:
    """What the floor that does no work measures on the same figure, and whether it already misses the target."""
    if missed:
        return f" Out of reach on this machine: {title} measures {value:.3g} ({figure})."
    return f" For comparison, {title} measures {value:.3g} ({figure})."


def _budget_sentence(cores: int, wanted_rate: float, front_end_rate: float, path_ms: float) -> str:
    """The CPU time per request a rate allows on these cores, against the least a request takes: the front end's
    fixed answer (with the generator's and the system's share, as measured) plus the app's path in process."""
    allowed_us = cores / wanted_rate * 1e6
    front_end_us, path_us = cores / front_end_rate * 1e6, path_ms * 1000
    needed = front_end_us + path_us
    verdict = "Out of reach on this machine" if needed > allowed_us else "Within reach"
    return (
        f" {verdict}: the target allows {allowed_us:.0f} µs of CPU per request on {cores} cores; the front end's fixed "
        f"answer takes {front_end_us:.0f} µs of it and the app's request path in process, without HTTP, {path_us:.0f} "
        f"µs ({needed:.0f} µs)."
    )


def _against_front_end(floors: FloorsResult, measured: Measured, server: str) -> list[dict]:
    """Without nginx: the same two figures over the front end's fixed answer, reported with no target."""
    floor = floors.servers[FRONT_END]
    model = measured.model_p50_ms or 0.0
    target = "reported (nginx not installed)"
    return [
        {
            "name": f"{TITLES[server]}: (p50, 1 connection − model p50) / the front end's fixed answer's p50 (wrk)",
            "target": target,
            "measured": (measured.median_p50_ms - model) / floor.median_p50_ms,
            "passed": None,
            "inputs": f"({measured.median_p50_ms:.3f} ms − {model:.3f} ms) / {floor.median_p50_ms:.3f} ms "
            f"({floors.generator}, load {floors.machine.get('load', '?')})",
            "note": "",
        },
        {
            "name": f"{TITLES[server]}: req/s at 16 connections / the front end's fixed answer's (wrk)",
            "target": target,
            "measured": measured.median_rate / floor.median_rate,
            "passed": None,
            "inputs": f"{measured.median_rate:,.0f}/s / {floor.median_rate:,.0f}/s ({floors.generator})",
            "note": "",
        },
    ]


def machine_lines(result: FloorsResult, command: str) -> list[str]:
    """When, on what machine, under what load, by which command and generator the floors were measured."""
    machine = result.machine
    return [
        f"Measured {machine['date']} on {machine['machine']}; load average after the last round: {machine['load']}.",
        (
            f"Command: `{command}`. Generator: {result.generator} ({result.rounds} round(s) of {result.seconds:g} s per "
            f"point, medians; one-digit body, answer {machine['answer_bytes']} B)."
        ),
    ]


def servers_table(result: FloorsResult, names: dict[str, str] | None = None) -> list[str]:
    """Every measured server's figures; `names` gives the servers' names as the reader knows them."""
    lines = [
        (
            "| server | p50, 1 connection (ms) | req/s, 16 connections | model p50 in process (ms) | request path p50 in "
            "process (ms) | memory at rest (MB) | memory after load (MB) | errors |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for measured in result.servers.values():
        cells = [
            f"{measured.median_p50_ms:.3f}",
            f"{measured.median_rate:,.0f}",
            "" if measured.model_p50_ms is None else f"{measured.model_p50_ms:.3f}",
            "" if measured.path_p50_ms is None else f"{measured.path_p50_ms:.3f}",
            "" if measured.memory_at_rest_mb is None else f"{measured.memory_at_rest_mb:,.0f}",
            "" if measured.memory_after_load_mb is None else f"{measured.memory_after_load_mb:,.0f}",
            str(measured.errors),
        ]
        lines.append(f"| {(names or {}).get(measured.name, measured.name)} | " + " | ".join(cells) + " |")
    return lines


def report(result: FloorsResult, command: str) -> str:
    """The markdown the run prints: the machine, every server's figures, the targets."""
    lines = [*machine_lines(result, command), "", *servers_table(result)]
    lines += ["", "| target | rule | measured | status | from |", "| --- | --- | ---: | --- | --- |"]
    for target in targets(result):
        shown, passed = target["measured"], target["passed"]
        status = "not measured" if shown is None else ("reported" if passed is None else "met" if passed else "MISSED")
        shown = "" if shown is None else f"{shown:.3g}"
        lines.append(
            f"| {target['name']} | {target['target']} | {shown} | {status} | {target['inputs'] or target['note']} |"
        )
    notes = [f"- {target['name']}: {target['note'].strip()}" for target in targets(result) if target["passed"] is False]
    lines += ["", *(["Missed targets:", *notes, ""] if notes else []), MEMORY_NOTE]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tf-models", type=Path, required=True, help="the TF export's model folder")
    parser.add_argument("--torch-models", type=Path, required=True, help="the PyTorch export's model folder")
    parser.add_argument("--rounds", type=int, default=3, help="rounds taking turns; figures are their medians")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per wrk run")
    parser.add_argument("--model-store", type=Path, help="TorchServe's model store (digits.mar): measure it too")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    arguments = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk); nothing measured.", file=sys.stderr)
        return 2
    for path in (arguments.tf_models, arguments.torch_models):
        if not path.is_dir():
            print(f"No model folder at {path}; train first (make train-tf, make train-torch).", file=sys.stderr)
            return 2
    command = "python -m benchmarks.floors " + " ".join(argv if argv is not None else sys.argv[1:])
    result = measure(
        arguments.tf_models, arguments.torch_models, arguments.rounds, arguments.seconds, arguments.model_store
    )
    print(report(result, command))
    if arguments.json is not None:
        arguments.json.write_text(json.dumps(dataclasses.asdict(result), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
