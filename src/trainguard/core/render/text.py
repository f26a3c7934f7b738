"""Plain-text report for terminals and logs (the CLI adds colour)."""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.report import FileStatus, Report


def render_text(report: Report, fail_on: Severity) -> str:
    lines: list[str] = []
    for f in report.sorted_findings():
        mark = "FAIL" if f.severity >= fail_on else "    "
        count = f" (x{f.count})" if f.count > 1 else ""
        lines.append(f"{mark} {f.severity.label.upper():8} {f.rule_id}  {f.location}")
        lines.append(f"     {f.title}: {f.evidence}{count}")
        lines.append(f"     fix: {f.remedy}")
    for e in report.errors:
        lines.append(f"ERROR    {e}")
    s = report.summary()
    scanned = s["by_status"][FileStatus.SCANNED.value]
    skipped = s["by_status"][FileStatus.SKIPPED.value]
    sev = ", ".join(f"{n} {k}" for k, n in s["by_severity"].items() if n)
    verdict = {0: "clean", 1: "FAILED", 2: "ERROR"}[int(report.exit_code(fail_on))]
    lines.append(
        f"{verdict}: {scanned} file(s) scanned, {skipped} skipped (not a model format), "
        f"{s['findings']} finding(s){' (' + sev + ')' if sev else ''}, "
        f"{len(report.errors)} error(s) in {report.seconds:.2f}s; "
        f"failing at {fail_on.label} or above"
    )
    return "\n".join(lines) + "\n"
