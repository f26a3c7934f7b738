"""SARIF 2.1.0 output, for code-scanning dashboards.

Shape follows the OASIS SARIF 2.1.0 spec: one run, the tool's rules with stable ids
(§3.49 reportingDescriptor), severity mapped to ``level`` (§3.27.10), files that could not be read
reported as tool execution notifications (§3.58) rather than dropped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainguard.core.findings import Finding, Severity
from trainguard.core.report import Report
from trainguard.core.rules import RULES

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"

_LEVEL = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
# GitHub code scanning reads a 0-10 "security-severity" property.
_SECURITY_SEVERITY = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def _uri(path: str) -> str:
    p = Path(path)
    return p.as_posix() if not p.is_absolute() else p.as_uri()


def _result(f: Finding, rule_index: dict[str, int]) -> dict[str, Any]:
    region: dict[str, Any] = {}
    if f.location.offset is not None and not f.location.member:
        region = {"byteOffset": f.location.offset}
    phys: dict[str, Any] = {"artifactLocation": {"uri": _uri(f.location.path)}}
    if region:
        phys["region"] = region
    loc: dict[str, Any] = {"physicalLocation": phys}
    if f.location.member:
        loc["logicalLocations"] = [
            {"fullyQualifiedName": f.location.member + (
                f"@{f.location.offset}" if f.location.offset is not None else ""),
             "kind": "member"}
        ]
    return {
        "ruleId": f.rule_id,
        "ruleIndex": rule_index[f.rule_id],
        "level": _LEVEL[f.severity],
        "message": {"text": f"{f.title}: {f.evidence}"},
        "locations": [loc],
        "properties": {"severity": f.severity.label, "count": f.count,
                       "security-severity": _SECURITY_SEVERITY[f.severity]},
    }


def render_sarif(report: Report, fail_on: Severity) -> str:
    rules = sorted(RULES.values(), key=lambda r: r.id)
    rule_index = {r.id: i for i, r in enumerate(rules)}
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": report.tool,
                "version": report.version,
                "rules": [
                    {
                        "id": r.id,
                        "name": r.id.replace("-", ""),
                        "shortDescription": {"text": r.title},
                        "fullDescription": {"text": r.why},
                        "help": {"text": r.remedy},
                        "defaultConfiguration": {"level": _LEVEL[r.severity]},
                        "properties": {"security-severity": _SECURITY_SEVERITY[r.severity],
                                       "tags": ["security"]},
                    }
                    for r in rules
                ],
            }
        },
        "results": [_result(f, rule_index) for f in report.sorted_findings()],
        "invocations": [
            {
                "executionSuccessful": not report.errors,
                "toolExecutionNotifications": [
                    {"level": "error", "message": {"text": e}} for e in report.errors
                ],
            }
        ],
    }
    doc = {"$schema": SARIF_SCHEMA, "version": "2.1.0", "runs": [run]}
    return json.dumps(doc, indent=2) + "\n"
