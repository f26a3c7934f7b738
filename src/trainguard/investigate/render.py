"""Text and JSON renderings of an :class:`~trainguard.investigate.Investigation` (returned as
strings; only the CLI prints). The HTML report is in :mod:`trainguard.investigate.html`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from trainguard.investigate.timeline import clip, fmt_time

if TYPE_CHECKING:
    from trainguard.investigate import Investigation

#: causes and timeline lines shown in text (JSON and HTML have them all)
TEXT_CAUSES = 10
TEXT_TIMELINE = 60


def _safe(text: str) -> str:
    """No control characters from event details reach the terminal (escape sequences)."""
    return "".join(c if c.isprintable() or c == " " else f"\\x{ord(c):02x}"
                   if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)


def render_json(inv: Investigation) -> str:
    """The JSON document (schema ``trainguard.investigation``)."""
    return json.dumps(inv.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


def render_text(inv: Investigation) -> str:
    """A report for a terminal: verdict, first anomaly, ranked causes, differences, timeline."""
    out: list[str] = []
    add = out.append
    add(f"trainguard investigate: {inv.target_kind} {clip(inv.target, 120)} "
        f"({inv.events_read} events read)")
    verdict = "SUSPICIOUS: likely cause found" if inv.causes and inv.suspicious else (
        "SUSPICIOUS: anomalies, no cause ranked" if inv.suspicious else "nothing suspicious")
    add(f"  verdict:  {verdict}")
    if inv.run is not None:
        r = inv.run
        add(f"  run:      {clip(r.run, 80)} by {clip(r.who(), 80)}, started {fmt_time(r.started)}"
            f", commit {clip(r.git_commit or '-', 12)}, env {clip(r.env_digest or '-', 24)}")
        base = inv.baseline
        add(f"  baseline: {clip(base.run, 80) + ' by ' + clip(base.who(), 80) if base else 'none'}"
            f" ({inv.baseline_reason})")
    add("")
    if inv.first_anomaly is not None:
        a = inv.first_anomaly
        step = f" step {a.step}" if a.step is not None else ""
        add(f"First anomaly: {fmt_time(a.time)}{step} [{a.kind}] {a.title}")
        if len(inv.anomalies) > 1:
            add(f"  ({len(inv.anomalies) - 1} more anomalies)")
    else:
        add("First anomaly: none")
    add("")
    if inv.causes:
        add("Likely causes (ranked):")
        for c in inv.causes[:TEXT_CAUSES]:
            add(f"  {c.rank}. [score {c.score}] {c.title}")
            if c.identities:
                add("     identities: " + "; ".join(f"{x.role}: {x.who}" for x in c.identities))
            if c.digest:
                add(f"     digest: {c.digest}")
            for reason in c.reasons[:12]:
                add(f"     {reason}")
        if len(inv.causes) > TEXT_CAUSES:
            add(f"  ... {len(inv.causes) - TEXT_CAUSES} more (-f json or -f html)")
    else:
        add("Likely causes: none")
    if inv.differences:
        add("")
        add(f"Differences (baseline -> {clip(inv.target, 60)}):")
        for d in inv.differences[:40]:
            add(f"  {d.area:<15} {clip(d.key, 50):<30} {clip(d.baseline or '-', 60)} -> "
                f"{clip(d.bad or '-', 60)}")
        if len(inv.differences) > 40:
            add(f"  ... {len(inv.differences) - 40} more")
    add("")
    shown = inv.timeline[:TEXT_TIMELINE]
    more = len(inv.timeline) - len(shown) + inv.timeline_omitted
    add(f"Timeline ({len(inv.timeline) + inv.timeline_omitted} events"
        + (f", {more} not shown" if more else "") + "):")
    for t in shown:
        mark = ">>" if t.first_anomaly else ("!!" if t.severity not in (None, "info") else "  ")
        sev = f" {t.severity.upper()}" if t.severity else ""
        add(f"{mark} {fmt_time(t.time)} {t.kind:<22}{sev} {clip(t.who, 48)}  "
            f"{t.summary or t.subject}")
    if inv.warnings:
        add("")
        add("Warnings:")
        out.extend(f"  {w}" for w in inv.warnings)
    return "\n".join(_safe(line) for line in out) + "\n"
