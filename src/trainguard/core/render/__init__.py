"""Output formats for reports: small functions behind one enum, returning text (never printing)."""

from __future__ import annotations

import enum
from collections.abc import Callable

from trainguard.core.findings import Severity
from trainguard.core.render.json import render_json
from trainguard.core.render.sarif import render_sarif
from trainguard.core.render.text import render_text
from trainguard.core.report import Report


class OutputFormat(str, enum.Enum):
    TEXT = "text"
    JSON = "json"
    SARIF = "sarif"


_RENDERERS: dict[OutputFormat, Callable[[Report, Severity], str]] = {
    OutputFormat.TEXT: render_text,
    OutputFormat.JSON: render_json,
    OutputFormat.SARIF: render_sarif,
}


def render(report: Report, fmt: OutputFormat, fail_on: Severity = Severity.MEDIUM) -> str:
    """Render ``report`` in ``fmt``; ``fail_on`` marks which findings fail the run."""
    return _RENDERERS[fmt](report, fail_on)


__all__ = ["OutputFormat", "render", "render_json", "render_sarif", "render_text"]
