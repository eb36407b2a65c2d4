"""The comparison report's wording: every section as markdown, built from a `Comparison`; `html` makes the page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from benchmarks.report import article, deployment, serving, summary, training

if TYPE_CHECKING:
    from benchmarks.measure import Comparison
    from benchmarks.ratios import Ratio

REQUIRED_SECTIONS = (
    "## Summary: which stack, for what",
    "## The servers measured",
    "## Machine",
    "## Ratios",
    "## Training",
    "## Artifacts",
    "## In-process inference",
    "## Deployment formats",
    "## Serving",
    "## The article's questions",
    "## The article's claims against the measurements",
)


def render(comparison: Comparison, ratios: list[Ratio], figures: dict[str, str]) -> str:
    """The whole report as markdown; figures maps a plot's name to its file beside the report."""
    lines = summary.header(comparison)
    lines += summary.summary(comparison)
    lines += summary.servers(comparison)
    lines += summary.machine(comparison)
    lines += summary.ratios_section(ratios)
    lines += training.training(comparison, figures)
    lines += training.artifacts(comparison)
    lines += training.inference_section(comparison, figures)
    lines += deployment.deployment_formats(comparison)
    lines += serving.serving(comparison, figures)
    lines += article.questions(comparison)
    lines += article.claims(comparison)
    lines += summary.section_times(comparison)
    return "\n".join(lines)
