"""The figures of one benchmarks.floors run, and its targets: each Python REST server against nginx, TorchServe
against its no-op handler.

A missed target is shown beside what it takes at least on the same machine, in the same run: for a p50, the same
figure for the server's floor that does no work (the no-op Flask route for Flask, the front end's fixed answer for the
TF server, which has no framework); for a rate, the CPU time per request the target allows against the front end's
fixed answer plus the app's request path in process. When that least already misses the target, the note says "Out
of reach on this machine". Without nginx, the servers' figures are reported against the front end's fixed answer,
with no target.
"""

from __future__ import annotations

import dataclasses
import statistics

# The targets: p50 at 1 connection minus the model's p50, over nginx's p50; rate at 16 connections over nginx's.
P50_OVER_FLOOR = 3.0
TORCHSERVE_OVER_NOOP = 1.3
RATE_SHARES = {"flask": 0.08, "tfserving": 0.075}
NO_NGINX = "nginx is not installed (apt-get install nginx-light)"
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


@dataclasses.dataclass
class FloorsResult:
    """One run: the machine and its load, and each measured server ("nginx" absent when it is not installed)."""

    machine: dict
    servers: dict[str, Measured]
    rounds: int
    seconds: float
    generator: str = "wrk"


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
