"""Reports: what a run looked at and what it found; the input of every renderer."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.findings import Finding, Severity

#: version of the JSON report document (docs/json-schema.md); bump the major on breaking changes
REPORT_SCHEMA_VERSION = "1.0"


class ExitCode(enum.IntEnum):
    """Process exit codes, a public interface (docs/exit-codes.md)."""

    CLEAN = 0
    #: findings at or above the --fail-on severity; wins over ERROR
    FINDINGS = 1
    #: usage error, or an input that could not be read at all
    ERROR = 2


class FileStatus(str, enum.Enum):
    SCANNED = "scanned"
    #: not a model format trainguard knows (plain text, images...); nothing to execute
    SKIPPED = "skipped"
    #: could not be read at all (permissions, vanished); reported in ``errors``
    ERROR = "error"


@dataclass
class FileResult:
    """One file (on disk) the run looked at."""

    path: str
    status: FileStatus
    formats: list[str] = field(default_factory=list)
    size: int = 0
    seconds: float = 0.0
    findings: int = 0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status.value,
            "formats": self.formats,
            "size": self.size,
            "seconds": round(self.seconds, 6),
            "findings": self.findings,
            "note": self.note,
        }


@dataclass
class Report:
    """The result of one scan run over one or more targets."""

    tool: str
    version: str
    targets: list[str]
    files: list[FileResult] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    #: inputs that could not be read at all (never a model-file parse failure: that is a finding)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def max_severity(self) -> Severity | None:
        return max((f.severity for f in self.findings), default=None)

    def at_or_above(self, threshold: Severity) -> list[Finding]:
        return [f for f in self.findings if f.severity >= threshold]

    def exit_code(self, fail_on: Severity) -> ExitCode:
        """0 clean, 1 findings at or above ``fail_on`` (a finding beats an error), 2 error."""
        if self.at_or_above(fail_on):
            return ExitCode.FINDINGS
        if self.errors:
            return ExitCode.ERROR
        return ExitCode.CLEAN

    def summary(self) -> dict[str, Any]:
        by_sev = {s.label: 0 for s in sorted(Severity, reverse=True)}
        for f in self.findings:
            by_sev[f.severity.label] += 1
        status = {s.value: 0 for s in FileStatus}
        for fr in self.files:
            status[fr.status.value] += 1
        return {
            "files": len(self.files),
            "bytes": sum(fr.size for fr in self.files),
            "findings": len(self.findings),
            "by_severity": by_sev,
            "by_status": status,
            "errors": len(self.errors),
        }

    def sorted_findings(self) -> list[Finding]:
        """Most severe first, then by location, for stable output."""
        return sorted(
            self.findings,
            key=lambda f: (-f.severity, f.location.path, f.location.member or "",
                           f.location.offset or 0, f.rule_id, f.evidence),
        )
