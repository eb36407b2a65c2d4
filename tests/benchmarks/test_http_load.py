"""benchmarks.http_load: hey's and wrk's output read right, a real run against a local server, the ratios and the
report's table built from them."""

from __future__ import annotations

import http.server
import shutil
import threading

import pytest

from benchmarks import floors, http_load, ratios
from benchmarks.labels import ENDPOINTS
from benchmarks.report.serving import external_section

HEY_CSV = """response-time,DNS+dialup,DNS,Request-write,Response-delay,Response-read,status-code,offset
0.0010,0.0005,0.0000,0.0001,0.0009,0.0001,200,0.0006
0.0020,0.0000,0.0000,0.0000,0.0015,0.0000,200,0.0020
0.0030,0.0000,0.0000,0.0000,0.0026,0.0001,503,0.0045
0.0040,0.0000,0.0000,0.0000,0.0026,0.0001,200,0.0060
"""
WRK_OUTPUT = """Running 5s test @ http://127.0.0.1:1/v1/models/digits:predict
  2 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     8.52ms    2.41ms  30.12ms   75.31%
    Req/Sec     0.94k   101.23     1.14k    71.00%
  Latency Distribution
     50%  952.00us
     75%    9.51ms
     90%   11.42ms
     99%    1.20s
  9371 requests in 5.00s, 4.47MB read
  Non-2xx or 3xx responses: 3
  Socket errors: connect 0, read 1, write 0, timeout 2
Requests/sec:   1874.20
Transfer/sec:    915.16KB
"""


def test_hey_csv_gives_latencies_of_2xx_answers_errors_and_the_span():
    latencies, errors, span = http_load.parse_hey_csv(HEY_CSV)
    assert latencies == [0.001, 0.002, 0.004] and errors == 1 and span == pytest.approx(0.0100)


def test_wrk_summary_gives_requests_errors_and_percentiles_in_ms():
    found = http_load.parse_wrk(WRK_OUTPUT)
    assert found == {
        "requests": 9371,
        "seconds": 5.0,
        "p50_ms": pytest.approx(0.952),
        "p90_ms": 11.42,
        "p99_ms": 1200.0,
        "errors": 6,
    }


def test_no_generator_means_no_external_sweep():
    assert http_load.find_generator(("no-such-generator-here",)) is None


class _Answer(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the servers measured
    disable_nagle_algorithm = True  # headers and body go out as two writes: without this, each waits ~40 ms for an ACK

    def do_POST(self) -> None:  # http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if self.headers.get("Authorization") == "Bearer key" and body == b'{"instances": [1]}' else 400
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *arguments) -> None:
        pass


@pytest.fixture
def local_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/predict"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("generator", http_load.GENERATORS)
def test_a_generator_drives_a_local_server_with_body_and_headers(local_server, generator):
    if shutil.which(generator) is None:
        pytest.skip(f"{generator} is not installed (apt-get install {generator}); the parsers above still run")
    target = http_load.Target(ENDPOINTS["flask-rest"], local_server, {"Authorization": "Bearer key"})
    sweep = http_load.measure([target], b'{"instances": [1]}', (1, 2), 0.5, generator)
    assert sweep is not None and sweep.generator == generator and sweep.endpoints[0].error is None
    one, two = sweep.at("flask-rest", 1), sweep.at("flask-rest", 2)
    assert one.requests > 10 and one.errors == 0 and two.concurrency == 2 and two.throughput_per_second > 0
    assert 0 < one.p50_ms <= one.p99_ms and one.generator_cpu_seconds > 0


def point(concurrency: int, throughput: float, p50_ms: float) -> http_load.ExternalPoint:
    return http_load.ExternalPoint(concurrency, int(throughput * 2), 0, 2.0, p50_ms, p50_ms * 1.2, p50_ms * 2, 0.5)


def external_sweep(tf_rps: float, tf_p50: float) -> http_load.ExternalSweep:
    endpoints = [
        http_load.ExternalEndpoint(
            ENDPOINTS[key], f"http://127.0.0.1:1/{key}", [point(1, 900, p50), point(16, rps, p50 * 8)]
        )
        for key, rps, p50 in (("tf-rest", tf_rps, tf_p50), ("flask-rest", 1000.0, 1.0))
    ]
    return http_load.ExternalSweep("hey", 2.0, endpoints)


def floors_result(flask_p50: float, tf_rate: float, nginx: bool = True) -> floors.FloorsResult:
    servers = {
        "nginx": floors.Measured("nginx", [0.05, 0.04, 0.06], [100_000.0, 110_000.0]),
        "flask": floors.Measured("flask", [flask_p50] * 2, [9_000.0] * 2, model_p50_ms=0.01),
        "tfserving": floors.Measured("tfserving", [0.2] * 2, [tf_rate] * 2, model_p50_ms=0.1),
    }
    if not nginx:
        del servers["nginx"]
    return floors.FloorsResult({"load": "1.00 1.00 1.00"}, servers, 2, 4.0)


@pytest.mark.parametrize(
    "flask_p50, tf_rate, statuses",
    [
        (0.16, 8_000.0, ["met", "met", "met", "met", "not measured"]),
        (0.17, 7_000.0, ["missed", "met", "met", "missed", "not measured"]),
    ],
)
def test_the_floor_ratios_subtract_the_model_and_compare_with_nginx_of_the_same_run(flask_p50, tf_rate, statuses):
    checked = ratios.floor_ratios(floors_result(flask_p50, tf_rate))
    assert [ratio.status for ratio in checked] == statuses
    assert checked[0].measured == pytest.approx((flask_p50 - 0.01) / 0.05)  # nginx's median of three rounds
    assert checked[1].measured == pytest.approx(9_000 / 105_000) and "(wrk)" in checked[1].inputs
    # A missed target says what it means; a met one needs no note.
    assert [bool(ratio.note) for ratio in checked[:4]] == [status == "missed" for status in statuses[:4]]


@pytest.mark.parametrize("floor_p50, sentence", [(0.16, "Out of reach on this machine"), (0.1, "For comparison")])
def test_a_missed_target_shows_the_same_figure_for_its_floor_that_does_no_work(floor_p50, sentence):
    result = floors_result(0.5, 7_000.0)
    result.servers["flask-noop"] = floors.Measured("flask-noop", [floor_p50] * 2, [20_000.0] * 2)
    flask_p50, flask_rate = ratios.floor_ratios(result)[:2]
    assert flask_p50.status == "missed" and sentence in flask_p50.note
    assert f"a Flask route that does no work measures {floor_p50 / 0.05:.3g} ({floor_p50:.3f} ms)" in flask_p50.note
    assert flask_rate.status == "met" and not flask_rate.note
    # The TF server's floor (the front end's fixed answer) was not measured: its notes name no floor.
    assert "does no work" not in ratios.floor_ratios(result)[3].note


@pytest.mark.parametrize("path_ms, verdict", [(0.2, "Out of reach on this machine"), (0.1, "Within reach")])
def test_a_missed_rate_shows_the_cpu_time_per_request_it_allows(path_ms, verdict):
    result = floors_result(0.16, 7_000.0)  # the TF server's rate misses 7.5% of nginx's 105,000/s
    result.machine["cores"] = 2
    result.servers["front-end"] = floors.Measured("front-end", [0.1] * 2, [20_000.0] * 2)
    result.servers["tfserving"].path_p50_ms = path_ms
    note = ratios.floor_ratios(result)[3].note
    # 2 cores / 7,875 per second = 254 µs allowed; the front end takes 2 / 20,000 = 100 µs, the path the rest.
    assert f"{verdict}: the target allows 254 µs of CPU per request on 2 cores" in note
    assert "the front end's fixed answer takes 100 µs of it and the app's request path in process" in note
    assert f"{path_ms * 1000:.0f} µs ({100 + path_ms * 1000:.0f} µs)" in note


def test_without_nginx_the_figures_are_reported_against_the_front_ends_fixed_answer():
    result = floors_result(0.5, 7_000.0, nginx=False)
    result.servers["front-end"] = floors.Measured("front-end", [0.1] * 2, [28_000.0] * 2)
    result.machine.update(date="2026-01-01 12:00 UTC", machine="x86_64, 2 cores", answer_bytes=168)
    checked = ratios.floor_ratios(result)
    assert [ratio.status for ratio in checked[:4]] == ["reported"] * 4
    assert checked[0].measured == pytest.approx((0.5 - 0.01) / 0.1) and checked[3].measured == pytest.approx(0.25)
    assert "reported" in floors.report(result, "python -m benchmarks.floors")


def test_without_nginx_or_a_run_the_floor_ratios_say_why():
    checked = ratios.floor_ratios(floors_result(0.1, 1, nginx=False))
    assert all("nginx is not installed" in ratio.note for ratio in checked[:4])
    assert "no --model-store" in checked[4].note
    assert [ratio.status for ratio in ratios.floor_ratios(None, "wrk is not installed")] == ["not measured"] * 5


@pytest.mark.parametrize("torchserve_p50, status", [(0.26, "met"), (0.27, "missed")])
def test_torchserve_is_compared_with_its_no_op_handler(torchserve_p50, status):
    result = floors_result(0.16, 8_000.0)
    result.servers["torchserve"] = floors.Measured("torchserve", [torchserve_p50], [3_000.0])
    result.servers["torchserve-noop"] = floors.Measured("torchserve-noop", [0.2], [4_000.0])
    checked = ratios.floor_ratios(result)[4]
    assert checked.status == status and checked.measured == pytest.approx(torchserve_p50 / 0.2)


def test_the_report_shows_the_external_table_or_how_to_install_one():
    lines = "\n".join(external_section(external_sweep(1200.0, 1.1)))
    assert (
        "under `hey`" in lines
        and "| TF-Serving-compatible server (this project), REST | TensorFlow/Keras | 16 |" in lines
    )
    assert "apt-get install hey" in "\n".join(external_section(None))


def test_the_floors_report_names_the_machine_the_floor_and_every_missed_target():
    result = floors_result(0.17, 7_000.0)
    result.machine.update(date="2026-01-01 12:00 UTC", machine="x86_64, 2 cores, 24 GiB, Linux 6", answer_bytes=168)
    text = floors.report(result, "python -m benchmarks.floors --rounds 2")
    assert "Measured 2026-01-01 12:00 UTC on x86_64, 2 cores, 24 GiB, Linux 6; load average" in text
    assert "Command: `python -m benchmarks.floors --rounds 2`. Generator: wrk (2 round(s) of 4 s" in text
    assert "| nginx | 0.050 | 105,000 |" in text  # the floor: medians of its rounds
    rows = [line for line in text.splitlines() if line.startswith("| Flask") or line.startswith("| TF server REST")]
    assert [row.split(" | ")[3] for row in rows] == ["MISSED", "met", "met", "MISSED"]
    assert "Missed targets:\n- Flask: (p50, 1 connection − model p50) / nginx p50 (wrk): Python per request" in text
