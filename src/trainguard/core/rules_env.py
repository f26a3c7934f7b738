"""Rules for Python environment integrity (issue 4): ids TG-ENV-NNN, never reused.

Listed in the one registry (:mod:`trainguard.core.rules`), which checks ids are unique.
"""

from __future__ import annotations

from trainguard.core.findings import Severity
from trainguard.core.rules import Rule

_C, _H, _M, _L = Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW

RULES: list[Rule] = [
]
