"""The JSON report: one document per run, schema in docs/json-schema.md."""

from __future__ import annotations

import json
from typing import Any

from trainguard.core.findings import Severity
from trainguard.core.report import REPORT_SCHEMA_VERSION, Report


def report_to_dict(report: Report, fail_on: Severity) -> dict[str, Any]:
    return {
        "schema": "trainguard.scan-report",
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool": {"name": report.tool, "version": report.version},
        "targets": report.targets,
        "fail_on": fail_on.label,
        "exit_code": int(report.exit_code(fail_on)),
        "seconds": round(report.seconds, 6),
        "summary": report.summary(),
        "findings": [f.to_dict() for f in report.sorted_findings()],
        "files": [fr.to_dict() for fr in report.files],
        "errors": report.errors,
    }


def render_json(report: Report, fail_on: Severity) -> str:
    return json.dumps(report_to_dict(report, fail_on), indent=2, sort_keys=False) + "\n"
