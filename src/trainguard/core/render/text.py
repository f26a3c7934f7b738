"""Plain-text report for terminals and logs (the CLI adds colour)."""

from __future__ import annotations

import re

from trainguard.core.findings import Severity
from trainguard.core.report import FileStatus, Report

# C0/C1 controls and DEL: a file named "x\n FAIL ..." or carrying terminal escapes must not
# forge report lines or drive the terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _clean(text: object) -> str:
    """Printable, UTF-8-encodable text: controls escaped, undecodable name bytes (surrogate
    escapes from os.fsdecode) shown as \\udcXX instead of failing the write."""
    s = str(text)
    s = _CONTROL.sub(lambda m: repr(m.group())[1:-1], s)
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


def render_text(report: Report, fail_on: Severity) -> str:
    lines: list[str] = []
    for f in report.sorted_findings():
        mark = "FAIL" if f.severity >= fail_on else "    "
        count = f" (x{f.count})" if f.count > 1 else ""
        lines.append(f"{mark} {f.severity.label.upper():8} {f.rule_id}  {_clean(f.location)}")
        lines.append(f"     {f.title}: {_clean(f.evidence)}{count}")
        lines.append(f"     fix: {f.remedy}")
    for e in report.errors:
        lines.append(f"ERROR    {_clean(e)}")
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
