"""The two Python REST servers against the floor of this machine, measured in one run with wrk.

    python -m benchmarks.floors --tf-models models/tf/digits --torch-models models/torch/digits \
        [--model-store models/torch/model-store]

Starts nginx answering a fixed body of the size of a real answer (the C floor: what HTTP alone costs here), the
Flask app and the TF Serving-compatible server on free ports, each as `make serve` starts it, and drives each with
wrk (the same one-digit body the load benchmarks send) at 1 and at 16 connections, in rounds that take turns so
that load from other programs falls on all of them alike; each figure is the median over the rounds. Two more
floors are measured on the Flask server itself (benchmarks.serving_torch's app: the production app plus two paths):
the front end answering a fixed body before Flask runs (the port, its bridge, no framework), and a Flask route that
does no work. The targets (benchmarks.floor_targets):

- p50 at 1 connection, minus the model's own p50 called in this process, at most 3x nginx's p50 (both servers);
- requests per second at 16 connections at least 8% of nginx's for Flask, 7.5% for the TF server;
- with --model-store, TorchServe's p50 at 1 connection at most 1.3x that of a handler that does no work
  (benchmarks/torchserve_noop_handler.py) on a second TorchServe with the same settings.

A missed target is shown beside what it takes at least here, from the same run, which the two floors and each app's
request path timed in this process give. Memory: each server's proportional set size (PSS, where the system gives
it, else RSS) over its whole process tree, after start and after the load. The machine, its load
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
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil

from benchmarks import http_load
from benchmarks.floor_targets import FRONT_END, NOOP_ROUTE, FloorsResult, Measured, targets
from benchmarks.labels import EndpointLabel
from benchmarks.profile_request import median_us, one_digit_body
from benchmarks.serving_torch import BENCHMARK_APPLICATION, FIXED_ANSWER_PATH, NOOP_PATH
from experiment import processes
from serving.runtime import flask_app as flask_runtime
from serving.runtime import process as runtime_process
from serving.runtime import tfserving as tfserving_runtime

START_TIMEOUT_S = 180.0
NOOP_HANDLER = Path(__file__).resolve().parent / "torchserve_noop_handler.py"
MODEL_CONFIG = Path(__file__).resolve().parent.parent / "serving" / "torchserve" / "model-config.yaml"
MEMORY_NOTE = "Memory is PSS where the system reports it (RSS otherwise), summed over each server's processes."
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
    checked = targets(result)
    for target in checked:
        shown, passed = target["measured"], target["passed"]
        status = "not measured" if shown is None else ("reported" if passed is None else "met" if passed else "MISSED")
        shown = "" if shown is None else f"{shown:.3g}"
        lines.append(
            f"| {target['name']} | {target['target']} | {shown} | {status} | {target['inputs'] or target['note']} |"
        )
    notes = [f"- {target['name']}: {target['note'].strip()}" for target in checked if target["passed"] is False]
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
