"""Timeline, loss curves and the first anomaly of a run.

Heuristics (docs/investigate.md, "First anomaly"):

- a **detection** is an event with a severity above info, or an artifact.verify_failed /
  artifact.load_refused event (fail closed: those are detections whatever their severity);
- a **non-finite loss** is a guard.metric event whose ``loss`` is NaN/Inf (written as the string
  ``"nan"``/``"inf"``, since canonical JSON has no spelling for NaN) or not a number at all
  (``null`` means no loss was known at that step and is skipped);
- a **loss divergence** from the baseline run: at steps both runs logged, the relative difference
  ``|loss - baseline| / max(|baseline|, 1e-8)`` exceeds ``DIVERGENCE`` (0.5) at two consecutive
  shared steps (or at the last one);
- without a baseline, a **loss spike**: a loss above ``SPIKE_FACTOR`` (10) times the median of the
  previous ``SPIKE_WINDOW`` (20) finite losses, once at least 5 are known (Megatron-LM's spike
  check uses 10x the maximum; the median is robust to earlier spikes).

The first anomaly is the earliest of these by event time (then source order).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from trainguard.core.events import Event, EventKind
from trainguard.core.findings import Severity
from trainguard.ledger.lineage import run_of

DIVERGENCE = 0.5
SPIKE_FACTOR = 10.0
SPIKE_WINDOW = 20
#: timeline entries kept in a report; detections and artifact events are kept first
MAX_TIMELINE = 1000
#: characters of any attacker-controlled text kept for display
MAX_TEXT = 240

_ALWAYS_DETECTION = {EventKind.ARTIFACT_VERIFY_FAILED, EventKind.ARTIFACT_LOAD_REFUSED}
_NONFINITE_WORDS = {"nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def is_detection(event: Event) -> bool:
    """A detection: severity above info, or a failed verification / refused load."""
    if event.kind in _ALWAYS_DETECTION:
        return True
    return event.severity is not None and event.severity > Severity.INFO


def clip(value: Any, limit: int = MAX_TEXT) -> str:
    """Display text for any value, cut to ``limit`` characters (details may be huge)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        return text[: limit - 1] + "…"
    return text


def fmt_time(t: float) -> str:
    """ISO 8601 UTC with milliseconds, or the raw number when it is not a valid time."""
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return clip(str(t), 32)


def as_step(value: Any) -> int | None:
    """A step number from details (an int, or an integral float); None otherwise."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -(2**62) < value < 2**62:
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() \
            and abs(value) < 2**62:
        return int(value)
    return None


def as_loss(value: Any) -> tuple[float | None, bool]:
    """``(loss, finite)``: a finite float and True, or None and False for NaN/Inf/garbage."""
    if isinstance(value, bool):
        return None, False
    if isinstance(value, (int, float)):
        try:
            f = float(value)
        except OverflowError:
            return None, False
        return (f, True) if math.isfinite(f) else (None, False)
    if isinstance(value, str) and value.strip().lower() in _NONFINITE_WORDS:
        return None, False
    return None, False


@dataclass(frozen=True)
class MetricPoint:
    """One guard.metric sample of a run."""

    step: int
    #: None when non-finite or not a number
    loss: float | None
    finite: bool
    lr: float | None
    time: float
    seq: int
    #: the loss as written (for display: "nan", null, ...)
    raw: str


def metric_points(events: Iterable[tuple[int, Event]]) -> list[MetricPoint]:
    """Loss/lr samples from guard.metric events (``details`` ``step``, ``loss``, ``lr``), one per
    step (rank 0 or the rank-less sample preferred, else the first), sorted by step."""
    best: dict[int, tuple[int, MetricPoint]] = {}
    for seq, ev in events:
        if ev.kind != EventKind.GUARD_METRIC or "loss" not in ev.details:
            continue
        step = as_step(ev.details.get("step"))
        if step is None:
            continue
        raw_loss = ev.details.get("loss")
        # null is "no loss known at this step" (the guard's monitors write it before the first
        # loss is judged), not a non-finite loss: those are written as "nan" / "inf".
        loss, finite = (None, True) if raw_loss is None else as_loss(raw_loss)
        lr, lr_ok = as_loss(ev.details.get("lr"))
        rank = ev.identity.rank if ev.identity is not None else None
        if rank is None and isinstance(ev.details.get("rank"), int):
            rank = ev.details["rank"]
        pref = 0 if rank in (None, 0) else 1
        point = MetricPoint(step=step, loss=loss, finite=finite, lr=lr if lr_ok else None,
                            time=ev.time, seq=seq, raw=clip(ev.details.get("loss"), 32))
        old = best.get(step)
        if old is None or pref < old[0]:
            best[step] = (pref, point)
    return [best[s][1] for s in sorted(best)]


@dataclass(frozen=True)
class Anomaly:
    """Something that went wrong in a run, with where and when it was first seen."""

    #: detection | loss_nonfinite | loss_divergence | loss_spike
    kind: str
    title: str
    time: float
    seq: int
    step: int | None = None
    rule_id: str | None = None
    severity: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "title": self.title, "time": self.time,
                "time_utc": fmt_time(self.time), "seq": self.seq, "step": self.step,
                "rule_id": self.rule_id, "severity": self.severity}


def detection_title(ev: Event, *, with_kind: bool = True) -> str:
    """One line naming what a detection event says."""
    msg = ev.details.get("message") or ev.details.get("summary") or ev.details.get("reason")
    where = ev.details.get("location") or ev.details.get("path")
    text = ev.kind if with_kind else ""
    if ev.rule_id:
        text += f" {clip(ev.rule_id, 40)}"
    text = (text + f" {clip(ev.subject, 80)}").strip()
    if isinstance(where, str) and where != ev.subject:
        text += f" at {clip(where, 120)}"
    if isinstance(msg, str):
        text += f": {clip(msg)}"
    return text


def loss_anomalies(points: Sequence[MetricPoint],
                   baseline: Sequence[MetricPoint] | None) -> list[Anomaly]:
    """Non-finite losses, then divergence from ``baseline`` (or spikes without one)."""
    out: list[Anomaly] = []
    bad = next((p for p in points if not p.finite), None)
    if bad is not None:
        out.append(Anomaly("loss_nonfinite", f"non-finite loss {bad.raw} at step {bad.step}",
                           bad.time, bad.seq, bad.step))
    finite = [p for p in points if p.finite and p.loss is not None]
    if baseline:
        base = {p.step: p.loss for p in baseline if p.finite and p.loss is not None}
        shared = [p for p in finite if p.step in base]
        for i, p in enumerate(shared):
            ref = base[p.step]
            assert p.loss is not None
            assert ref is not None
            rel = abs(p.loss - ref) / max(abs(ref), 1e-8)
            if rel <= DIVERGENCE:
                continue
            nxt = shared[i + 1] if i + 1 < len(shared) else None
            if nxt is not None:
                nref = base[nxt.step]
                assert nxt.loss is not None
                assert nref is not None
                if abs(nxt.loss - nref) / max(abs(nref), 1e-8) <= DIVERGENCE:
                    continue
            out.append(Anomaly(
                "loss_divergence",
                f"loss {p.loss:.6g} at step {p.step} vs {ref:.6g} in the baseline "
                f"({(p.loss - ref) / max(abs(ref), 1e-8):+.0%})", p.time, p.seq, p.step))
            break
    else:
        window: list[float] = []
        for p in finite:
            assert p.loss is not None
            if len(window) >= 5:
                med = statistics.median(window)
                if med > 0 and p.loss > SPIKE_FACTOR * med:
                    out.append(Anomaly(
                        "loss_spike", f"loss {p.loss:.6g} at step {p.step} is "
                        f"{p.loss / med:.1f}x the median of the previous {len(window)}",
                        p.time, p.seq, p.step))
                    break
            window.append(p.loss)
            if len(window) > SPIKE_WINDOW:
                window.pop(0)
    return out


def first_anomaly(run_events: Sequence[tuple[int, Event]],
                  loss: Sequence[Anomaly]) -> tuple[Anomaly | None, list[Anomaly]]:
    """All anomalies of a run (detections, then loss anomalies) in time order, and the first."""
    found = [Anomaly("detection", detection_title(ev), ev.time, seq,
                     as_step(ev.details.get("step")), ev.rule_id,
                     ev.severity.label if ev.severity is not None else "high")
             for seq, ev in run_events if is_detection(ev)]
    found += loss
    found.sort(key=lambda a: (a.time, a.seq))
    return (found[0] if found else None), found


@dataclass(frozen=True)
class TimelineEntry:
    """One line of the timeline."""

    seq: int
    time: float
    kind: str
    subject: str
    run: str | None
    who: str
    severity: str | None
    rule_id: str | None
    step: int | None
    summary: str
    #: why it is in the timeline: run | lineage | anomaly | baseline
    why: str
    first_anomaly: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "time": self.time, "time_utc": fmt_time(self.time),
                "kind": self.kind, "subject": self.subject, "run": self.run, "who": self.who,
                "severity": self.severity, "rule_id": self.rule_id, "step": self.step,
                "summary": self.summary, "why": self.why, "first_anomaly": self.first_anomaly}


def _summary(ev: Event) -> str:
    d = ev.details
    if is_detection(ev):
        return detection_title(ev, with_kind=False)
    parts = []
    for key in ("path", "message", "status", "signer", "step", "loss"):
        v = d.get(key)
        if isinstance(v, (str, int, float)) and not isinstance(v, bool):
            parts.append(f"{key}={clip(v, 120)}")
    return " ".join(parts)


def build_timeline(selected: Iterable[tuple[int, Event, str]], first: Anomaly | None,
                   *, limit: int = MAX_TIMELINE) -> tuple[list[TimelineEntry], int]:
    """Timeline entries for ``(seq, event, why)`` triples, in time order; at most ``limit``
    (detections and lineage first, then the earliest others). Returns entries and how many
    were left out."""
    chosen: dict[int, tuple[Event, str]] = {}
    for seq, ev, why in selected:
        chosen.setdefault(seq, (ev, why))
    order = sorted(chosen, key=lambda s: (chosen[s][0].time, s))
    omitted = 0
    if len(order) > limit:
        def important(s: int) -> bool:
            ev, why = chosen[s]
            return (first is not None and first.seq == s) or why == "lineage" or (
                ev.severity is not None and ev.severity > Severity.INFO)

        keep = set([s for s in order if important(s)][:limit])
        for s in order:
            if len(keep) >= limit:
                break
            keep.add(s)
        omitted = len(order) - len(keep)
        order = [s for s in order if s in keep]
    entries = []
    for seq in order:
        ev, why = chosen[seq]
        run = run_of(ev)
        entries.append(TimelineEntry(
            seq=seq, time=ev.time, kind=clip(ev.kind, 64), subject=clip(ev.subject, 160),
            run=clip(run, 80) if run else None,
            who=clip(ev.identity.short(), 120) if ev.identity is not None else "unknown",
            severity=ev.severity.label if ev.severity is not None else None,
            rule_id=clip(ev.rule_id, 40) if ev.rule_id else None,
            step=as_step(ev.details.get("step")), summary=_summary(ev), why=why,
            first_anomaly=first is not None and first.seq == seq))
    return entries, omitted
