"""Findings: the one shape every trainguard capability reports in."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.errors import UsageError


class Severity(enum.IntEnum):
    """Ordered severities; comparisons follow the order (``Severity.HIGH > Severity.LOW``)."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    @classmethod
    def parse(cls, text: str) -> Severity:
        """Parse a severity name, case-insensitively (``"high"`` -> ``Severity.HIGH``)."""
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(s.name.lower() for s in cls)
            raise UsageError(f"unknown severity {text!r}", remedy=f"use one of: {names}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Location:
    """Where a finding is: a file, optionally a member chain inside it and a byte offset.

    ``member`` is the path inside archives, nested ones joined with ``!/``
    (``outer.tar!/inner.pt!/archive/data.pkl``). ``offset`` is a byte offset in the innermost
    decoded stream (for a pickle: the opcode's position).
    """

    path: str
    member: str | None = None
    offset: int | None = None

    def __str__(self) -> str:
        text = self.path
        if self.member:
            text += f"!/{self.member}"
        if self.offset is not None:
            text += f"@{self.offset}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "member": self.member, "offset": self.offset}


@dataclass(frozen=True)
class Finding:
    """One thing wrong with an input, under a stable rule id."""

    rule_id: str
    severity: Severity
    title: str
    location: Location
    evidence: str
    remedy: str
    #: how many times the same rule fired for the same evidence in the same stream
    count: int = 1
    details: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule_id": self.rule_id,
            "severity": self.severity.label,
            "title": self.title,
            "location": self.location.to_dict(),
            "evidence": self.evidence,
            "remedy": self.remedy,
            "count": self.count,
            "details": self.details,
        }
