"""Markdown building blocks for the comparison report: number formatting, tables, figures."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

Measured = TypeVar("Measured")


def number(value: float | None, unit: str = "") -> str:
    """A measured number with about three significant digits ('nan' stays visible, so a test can catch it)."""
    if value is None:
        return "n/a"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,} {unit}".strip() if unit else f"{value:,}"
    value = float(value)
    if not math.isfinite(value):
        text = "nan" if math.isnan(value) else "inf"
    elif value == 0:
        text = "0"
    elif abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 1:
        text = f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit else text


def cell(value: Any) -> str:
    """A table cell: booleans as yes/no, numbers formatted, lists joined, pipes escaped."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return number(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(item) for item in value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(item if isinstance(item, str) else cell(item) for item in row) + " |" for row in rows]
    return "\n".join(lines)


def key_value_table(values: dict[str, Any], headers: Sequence[str] = ("setting", "value")) -> str:
    """Two-column table of a flat dictionary."""
    return table(headers, [(key, cell(value)) for key, value in values.items()])


def code_block(text: str, language: str = "") -> str:
    """A fenced code block."""
    return f"```{language}\n{text.rstrip()}\n```"


def figures_block(figures: dict[str, str], *names: str) -> list[str]:
    """Each named plot that was drawn, embedded with its caption."""
    from benchmarks.report.captions import CAPTIONS

    lines: list[str] = []
    for name in (name for name in names if name in figures):
        lines += [f"![{CAPTIONS[name]}]({figures[name]})", "", f"*{CAPTIONS[name]}*", ""]
    return lines


def ratio(first: float, second: float) -> str:
    """'2.4×' for how many times first is second."""
    return f"{first / second:.2g}×" if first / second < 10 else f"{first / second:.0f}×"


def paragraph(*sentences: str) -> list[str]:
    """Sentences as one paragraph followed by a blank line."""
    return [" ".join(sentence for sentence in sentences if sentence), ""]


def section(heading: str, measured: Measured | None, reason: str, body: Callable[[Measured], list[str]]) -> list[str]:
    """A heading, then what body writes about the measurement, or why it was not measured."""
    return [heading, ""] + (body(measured) if measured is not None else paragraph(f"Not measured: {reason}."))
