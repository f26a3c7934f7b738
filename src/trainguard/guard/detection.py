"""What a training monitor found: :class:`Detection`, and turning it into an event.

Each monitor (hyperparameters, RNG, update direction, cross-rank fingerprints, loss, timing)
returns plain :class:`Detection` values; :class:`trainguard.guard.monitors.TrainingMonitor`
turns them into ``guard.monitor`` events (kind :data:`EventKind.GUARD_MONITOR`) with the rule id
and severity, and in enforce mode raises :class:`MonitorViolation`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trainguard.core.errors import TrainguardError
from trainguard.core.events import Event, EventKind
from trainguard.core.findings import Severity


@dataclass(frozen=True)
class Detection:
    """One anomaly: the rule it falls under, how bad, a one-line message and JSON details."""

    rule_id: str
    severity: Severity
    message: str
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def to_event(self, subject: str, *, step: int | None, rank: int | None) -> Event:
        """The ``guard.monitor`` event for this detection (step and rank always present)."""
        details = {"message": self.message, "step": step, "rank": rank, **dict(self.details)}
        return Event.now(EventKind.GUARD_MONITOR, subject, details,
                         severity=self.severity, rule_id=self.rule_id)


class MonitorViolation(TrainguardError):
    """Enforce mode: a training monitor detected sabotage, so the job must stop.

    Raised from ``TrainingMonitor.step`` (and so from ``trainguard.guard.step`` and the Lightning
    and Hugging Face callbacks) after the detections were emitted. ``detections`` lists them.
    """

    remedy = ("the events name the rule, rank and step; `trainguard investigate` shows the run's "
              "timeline. Re-run in monitor mode to record without stopping.")

    def __init__(self, detections: list[Detection]) -> None:
        first = detections[0]
        more = f" (+{len(detections) - 1} more)" if len(detections) > 1 else ""
        super().__init__(f"{first.rule_id}: {first.message}{more}")
        self.detections = list(detections)


def json_float(value: float) -> float | None:
    """A float safe for event details (canonical JSON has no NaN or infinity): None for those."""
    v = float(value)
    return v if math.isfinite(v) else None
