"""The final report of a guarded job: per-process event files merged into one record.

Every process of a ``trainguard run`` job writes ``<run dir>/proc/<host>-<pid>.jsonl``.
At the end the launcher merges them (ordered by time) into the run's events file and sums them
up: processes and ranks seen, detections by rule with their code locations, what enforce mode
blocked, guard errors. Unreadable lines are counted, never fatal (a payload may scribble on the
files; the record says so).
"""

from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainguard.core.events import Event, EventKind

#: detections kept in memory for the report (all are in the merged file)
MAX_LISTED = 200


@dataclass
class RunSummary:
    """What happened in a guarded job (the data behind the final report)."""

    mode: str
    events_file: Path | None = None
    events: int = 0
    unreadable_lines: int = 0
    processes: set[int] = field(default_factory=set)
    ranks: set[int] = field(default_factory=set)
    guarded_processes: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)
    by_rule: Counter[str] = field(default_factory=Counter)
    detections: list[Event] = field(default_factory=list)
    blocked: int = 0
    guard_errors: list[str] = field(default_factory=list)
    suppressed: int = 0
    dropped: int = 0
    exit_code: int | None = None
    child_exit: int | None = None
    pre_launch: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "events_file": str(self.events_file) if self.events_file else None,
            "events": self.events, "unreadable_lines": self.unreadable_lines,
            "processes": len(self.processes), "guarded_processes": self.guarded_processes,
            "ranks": sorted(self.ranks), "by_kind": dict(self.by_kind),
            "by_rule": dict(self.by_rule), "blocked": self.blocked,
            "guard_errors": self.guard_errors[:20], "suppressed_repeats": self.suppressed,
            "dropped_events": self.dropped, "exit_code": self.exit_code,
            "child_exit": self.child_exit, "pre_launch": self.pre_launch,
            "detections": [e.to_dict() for e in self.detections],
        }


def _read(path: Path, bad: list[int]) -> Iterator[tuple[float, int, str, Event]]:
    try:
        fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - generator
    except OSError:
        bad[0] += 1
        return
    with fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                event = Event.from_dict(json.loads(line))
            except (ValueError, TypeError, RecursionError):
                bad[0] += 1
                continue
            yield event.time, n, line if line.endswith("\n") else line + "\n", event


def merge(proc_dir: Path, out: Path | None, mode: str) -> RunSummary:
    """Merge the per-process files of ``proc_dir`` into ``out`` (time order) and summarise."""
    summary = RunSummary(mode=mode, events_file=out)
    files = sorted(proc_dir.glob("*.jsonl")) if proc_dir.is_dir() else []
    bad = [0]
    streams = [_read(p, bad) for p in files]
    fh = open(out, "w", encoding="utf-8") if out is not None else None  # noqa: SIM115
    try:
        for _t, _n, line, event in heapq.merge(*streams, key=lambda item: (item[0], item[1])):
            if fh is not None:
                fh.write(line)
            _count(summary, event)
    finally:
        if fh is not None:
            fh.close()
    summary.unreadable_lines = bad[0]
    return summary


def _count(summary: RunSummary, event: Event) -> None:
    summary.events += 1
    summary.by_kind[event.kind] += 1
    ident = event.identity
    if ident is not None:
        summary.processes.add(ident.pid)
        if ident.rank is not None:
            summary.ranks.add(ident.rank)
    details = event.details
    if event.kind == EventKind.GUARD_STARTED:
        summary.guarded_processes += 1
    elif event.kind == EventKind.GUARD_SUMMARY:
        summary.suppressed += int(details.get("suppressed_repeats") or 0)
        summary.dropped += int(details.get("events_dropped") or 0)
    elif event.kind == EventKind.GUARD_ERROR:
        if len(summary.guard_errors) < 50:
            summary.guard_errors.append(str(details.get("message", event.subject))[:300])
        return
    if event.severity is not None and event.kind != EventKind.GUARD_ERROR:
        summary.by_rule[event.rule_id or event.kind] += 1
        if details.get("action") == "blocked":
            summary.blocked += 1
        if len(summary.detections) < MAX_LISTED:
            summary.detections.append(event)


def _where(event: Event) -> str:
    loc = event.details.get("location")
    if isinstance(loc, dict) and loc.get("file"):
        return f"{loc.get('file')}:{loc.get('line')}"
    return "?"


def render_text(summary: RunSummary) -> str:
    """The final report as text (the CLI prints it to stderr)."""
    lines = ["", "trainguard run: final report", "=" * 28,
             f"mode: {summary.mode}   events: {summary.events}   processes: "
             f"{len(summary.processes)} ({summary.guarded_processes} guarded)"
             + (f"   ranks: {','.join(map(str, sorted(summary.ranks)))}" if summary.ranks
                else "")]
    for note in summary.pre_launch:
        lines.append(f"before launch: {note}")
    if not summary.by_rule:
        lines.append("detections: none")
    else:
        total = sum(summary.by_rule.values())
        lines.append(f"detections: {total}" + (f" ({summary.blocked} blocked)"
                                               if summary.blocked else ""))
        for rule, n in sorted(summary.by_rule.items()):
            lines.append(f"  {rule}: {n}")
        lines.append("")
        for event in summary.detections[:50]:
            sev = event.severity.label.upper() if event.severity else "-"
            ident = event.identity
            who = ""
            if ident is not None:
                who = f" pid {ident.pid}" + (f" rank {ident.rank}" if ident.rank is not None
                                              else "")
            action = event.details.get("action")
            lines.append(f"  [{sev}] {event.rule_id or event.kind}{who} at {_where(event)}"
                         + (f" ({action})" if action else ""))
            lines.append(f"      {str(event.details.get('message', event.subject))[:300]}")
        if len(summary.detections) > 50:
            lines.append(f"  ... {len(summary.detections) - 50} more in the events file")
    if summary.suppressed or summary.dropped:
        lines.append(f"repeats only counted: {summary.suppressed}; events over the per-process "
                     f"budget: {summary.dropped}")
    if summary.guard_errors:
        lines.append(f"guard errors (the job continued): {len(summary.guard_errors)}")
        for msg in summary.guard_errors[:5]:
            lines.append(f"  {msg}")
    if summary.unreadable_lines:
        lines.append(f"unreadable event lines: {summary.unreadable_lines}")
    if summary.events_file is not None:
        lines.append(f"events: {os.fspath(summary.events_file)}")
    if summary.child_exit is not None:
        lines.append(f"command exit status: {summary.child_exit}; trainguard exit status: "
                     f"{summary.exit_code}")
    return "\n".join(lines) + "\n"
