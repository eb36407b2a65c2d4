"""Plugging in the serving and distributed benchmarks written beside this package, whatever shape their dicts have.

`benchmarks.serving_tf`, `benchmarks.serving_torch` and `benchmarks.distributed` each expose a function returning
their numbers as a dict. This module imports them when present, calls that function with the arguments it accepts,
and finds in the result the load-generator points (benchmarks.load.LoadResult or its to_dict()) and plain numbers.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import math
import re
from typing import Any, Callable

from benchmarks.load import LOAD_RESULT_KIND, LoadResult

EXTERNAL_MODULES = {
    "serving_tf": "benchmarks.serving_tf",
    "serving_torch": "benchmarks.serving_torch",
    "distributed": "benchmarks.distributed",
}
# The function each known module exposes for the comparison.
PREFERRED_FUNCTIONS = {
    "benchmarks.serving_tf": "run_benchmark",
    "benchmarks.serving_torch": "measure",
    "benchmarks.distributed": "compare_processes",
}
# Names tried, in order, for a module's measuring function; then any public function named measure*/benchmark*.
FUNCTION_NAMES = ("measure", "run_benchmark", "benchmark", "collect", "run")


@dataclasses.dataclass
class ExternalResult:
    """The outcome of calling one plugged-in benchmark."""

    module: str
    measured: bool
    reason: str = ""
    function: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)


def not_measured(module: str, reason: str) -> ExternalResult:
    """A result that records why a module was not measured."""
    return ExternalResult(module=module, measured=False, reason=reason)


def find_function(module: Any) -> Callable[..., Any] | None:
    """The module's measuring function: a well-known name, else a public measure*/benchmark* function."""
    preferred = PREFERRED_FUNCTIONS.get(module.__name__)
    for name in ((preferred,) if preferred else ()) + FUNCTION_NAMES:
        candidate = getattr(module, name, None)
        if inspect.isfunction(candidate) and candidate.__module__ == module.__name__:
            return candidate
    for name, candidate in sorted(vars(module).items()):
        if (
            inspect.isfunction(candidate)
            and candidate.__module__ == module.__name__
            and re.match(r"(measure|benchmark)", name)
        ):
            return candidate
    return None


def call_with_accepted(function: Callable[..., Any], offered: dict[str, Any]) -> Any:
    """Call function with the offered keyword arguments it names (all of them if it takes **kwargs)."""
    parameters = inspect.signature(function).parameters
    if any(parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters.values()):
        return function(**offered)
    missing = [
        name
        for name, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and name not in offered
    ]
    if missing:
        raise TypeError(f"{function.__name__} needs {', '.join(missing)}, which the comparison cannot provide")
    return function(**{name: value for name, value in offered.items() if name in parameters})


def run_external(key: str, offered: dict[str, Any], module_name: str | None = None) -> ExternalResult:
    """Import and run one plugged-in benchmark; any failure becomes a 'not measured' reason, never a crash."""
    module_name = module_name or EXTERNAL_MODULES[key]
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        return not_measured(module_name, f"{module_name} is not available ({error})")
    function = find_function(module)
    if function is None:
        return not_measured(module_name, f"{module_name} has no measure()/benchmark() function")
    try:
        data = call_with_accepted(function, offered)
    except Exception as error:  # a broken or unfinished benchmark must not take the whole report down
        return not_measured(module_name, f"{module_name}.{function.__name__} failed: {type(error).__name__}: {error}"[:400])
    if not isinstance(data, dict):
        return not_measured(module_name, f"{module_name}.{function.__name__} returned {type(data).__name__}, not a dict")
    return ExternalResult(module=module_name, measured=True, function=function.__name__, data=normalise(data))


def normalise(value: Any) -> Any:
    """Turn LoadResult objects and dataclasses into plain dicts, recursively."""
    if isinstance(value, LoadResult):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return normalise(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): normalise(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalise(item) for item in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        try:
            return value.item()
        except (TypeError, ValueError):
            return value
    return value


def is_load_point(value: Any) -> bool:
    """Whether a dict describes one load-generator point (ours, or any with a p50 and a throughput)."""
    return isinstance(value, dict) and (
        value.get("kind") == LOAD_RESULT_KIND or ("p50_ms" in value and "throughput_per_second" in value)
    )


def load_points(data: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    """Every load-generator point in a nested result, with the path of keys that leads to it."""
    if is_load_point(data):
        return [(path, data)]
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            found.extend(load_points(value, path + (str(key),)))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found.extend(load_points(value, path + (str(index),)))
    return found


def flatten_numbers(data: Any, prefix: str = "") -> dict[str, float | int]:
    """'a/b/c' → number for every numeric leaf (booleans and long lists such as raw latencies left out)."""
    flat: dict[str, float | int] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            flat.update(flatten_numbers(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(data, list) and len(data) <= 16:
        for index, value in enumerate(data):
            flat.update(flatten_numbers(value, f"{prefix}/{index}"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool) and math.isfinite(data):
        flat[prefix] = data
    return flat


def tokens(text: str) -> set[str]:
    """Lower-case word pieces of a key path ('tf_grpc/concurrency_1' → {'tf', 'grpc', 'concurrency', '1'})."""
    return {piece for piece in re.split(r"[^a-z0-9]+", text.lower()) if piece}


def matches(path: str, include: tuple[str, ...], exclude: tuple[str, ...] = ()) -> bool:
    """Whether every include token (any of 'a|b') is among the path's tokens and no exclude token is."""
    words = tokens(path)
    return all(any(option in words for option in group.split("|")) for group in include) and not words & set(exclude)


def find_point(
    points: list[tuple[tuple[str, ...], dict[str, Any]]],
    include: tuple[str, ...],
    exclude: tuple[str, ...] = (),
    concurrency: int | None = None,
) -> tuple[str, dict[str, Any]] | None:
    """The first load point whose path (and label) matches, at the given concurrency if any."""
    for path, point in points:
        text = "/".join(path) + "/" + str(point.get("label", ""))
        if concurrency is not None and int(point.get("concurrency", -1)) != concurrency:
            if not (point.get("concurrency") is None and f"concurrency_{concurrency}" in text):
                continue
        if matches(text, include, exclude):
            return "/".join(path), point
    return None


def find_number(flat: dict[str, float], include: tuple[str, ...], exclude: tuple[str, ...] = ()) -> tuple[str, float] | None:
    """The first flattened number whose key matches."""
    for key, value in flat.items():
        if matches(key, include, exclude):
            return key, value
    return None
