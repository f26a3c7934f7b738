"""Investigate a run or an artifact: timeline, first anomaly, what changed since the last good run,
and ranked likely causes with the identities involved.

Example (runnable: an artifact re-saved by another identity than the one who signed it)::

    from trainguard.core.events import Event, EventKind
    from trainguard.core.identity import Identity
    from trainguard.investigate import investigate
    alice = Identity("alice", "node1", 1, job="A")
    mallory = Identity("mallory", "node9", 2)
    good, bad = "sha256:" + "aa" * 32, "sha256:" + "bb" * 32
    events = [
        Event(EventKind.ARTIFACT_SIGNED, good, {"path": "base.pt"}, alice, 1.0),
        Event(EventKind.ARTIFACT_SAVED, bad, {"path": "base.pt"}, mallory, 2.0),
        Event(EventKind.RUN_STARTED, "B", {}, alice.with_(job="B"), 3.0),
        Event(EventKind.ARTIFACT_LOADED, bad, {"path": "base.pt"}, alice.with_(job="B"), 4.0),
    ]
    inv = investigate(events, "B")
    print(inv.causes[0].title, [a.who for a in inv.causes[0].identities])

``source`` is a ledger (:func:`trainguard.ledger.open_ledger`), a JSONL events file (what
``trainguard run`` writes) or any iterable of events. Renderers: :mod:`.render` (text, JSON) and
:mod:`.html`. Heuristics: docs/investigate.md.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, UsageError
from trainguard.core.events import Event, EventKind
from trainguard.investigate.causes import (
    SUSPICIOUS_SCORE,
    Cause,
    TrustOptions,
    artifact_causes,
    assess_artifact,
    difference_causes,
    guard_causes,
    rank,
)
from trainguard.investigate.runs import (
    Difference,
    RunProfile,
    diff_runs,
    pick_baseline,
    profile_run,
)
from trainguard.investigate.sources import collect, gc_paused
from trainguard.investigate.timeline import (
    Anomaly,
    TimelineEntry,
    build_timeline,
    clip,
    first_anomaly,
    is_detection,
    loss_anomalies,
)
from trainguard.ledger.lineage import (
    ArtifactEvent,
    EntrySource,
    Lineage,
    normalize_digest,
    normalize_path,
    run_of,
)

INVESTIGATION_SCHEMA = "trainguard.investigation"
INVESTIGATION_SCHEMA_VERSION = "1.0"


@dataclass(frozen=True)
class Investigation:
    """What :func:`investigate` found. ``suspicious`` decides the CLI exit code (1)."""

    target: str
    #: run | artifact
    target_kind: str
    run: RunProfile | None
    baseline: RunProfile | None
    baseline_reason: str
    first_anomaly: Anomaly | None
    anomalies: tuple[Anomaly, ...]
    differences: tuple[Difference, ...]
    causes: tuple[Cause, ...]
    timeline: tuple[TimelineEntry, ...]
    timeline_omitted: int
    #: lineage of the target artifact, or of each artifact the run loaded
    lineage: tuple[dict[str, Any], ...]
    events_read: int
    warnings: tuple[str, ...] = ()

    @property
    def suspicious(self) -> bool:
        """An anomaly was seen, or a cause scores at least SUSPICIOUS_SCORE."""
        return bool(self.anomalies) or any(c.score >= SUSPICIOUS_SCORE for c in self.causes)

    @property
    def exit_code(self) -> int:
        return 1 if self.suspicious else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form (schema ``trainguard.investigation``, docs/investigate.md)."""
        return {
            "schema": INVESTIGATION_SCHEMA, "schema_version": INVESTIGATION_SCHEMA_VERSION,
            "target": self.target, "target_kind": self.target_kind,
            "suspicious": self.suspicious, "exit_code": self.exit_code,
            "events_read": self.events_read,
            "run": self.run.to_dict() if self.run else None,
            "baseline": self.baseline.to_dict() if self.baseline else None,
            "baseline_reason": self.baseline_reason,
            "first_anomaly": self.first_anomaly.to_dict() if self.first_anomaly else None,
            "anomalies": [a.to_dict() for a in self.anomalies],
            "differences": [d.to_dict() for d in self.differences],
            "causes": [c.to_dict() for c in self.causes],
            "timeline": [t.to_dict() for t in self.timeline],
            "timeline_omitted": self.timeline_omitted,
            "lineage": list(self.lineage),
            "warnings": list(self.warnings),
        }


def investigate(source: EntrySource | Iterable[Event] | str | os.PathLike[str], target: str,
                baseline: str | None = None, *, trust: TrustOptions | None = None,
                warnings: Sequence[str] = ()) -> Investigation:
    """Investigate ``target``: a run id (Identity.job), an artifact digest (``sha256:<hex>`` or
    bare hex), or an artifact path (as recorded in events, or a file on disk that is hashed).

    ``baseline`` names the last good run to compare with (default: picked automatically, see
    :func:`trainguard.investigate.runs.pick_baseline`). Raises InputError for an empty source or
    a target that no event names, UsageError for an unknown baseline.
    """
    with gc_paused():  # only acyclic records are built: the collector would only rescan them
        return _investigate(source, target, baseline, trust or TrustOptions(), list(warnings))


def _investigate(source: EntrySource | Iterable[Event] | str | os.PathLike[str], target: str,
                 baseline: str | None, trust: TrustOptions, warnings: list[str]
                 ) -> Investigation:
    pairs, read_warnings = collect(source)
    notes = [*warnings, *read_warnings]
    if not pairs:
        raise InputError("no events to investigate: the ledger or events file is empty",
                         remedy="point --ledger/--events at the record of the job "
                                "(`trainguard run` writes events; `trainguard ledger show`)")
    lineage = Lineage()
    runs: dict[str, list[tuple[int, Event]]] = {}
    for seq, ev in pairs:
        lineage.add(ev, seq)
        r = run_of(ev)
        if r is not None:
            runs.setdefault(r, []).append((seq, ev))
    if target in runs and normalize_digest(target) is None:
        return _investigate_run(target, baseline, runs=runs, lineage=lineage, pairs=pairs,
                                trust=trust, notes=notes)
    digest, path = _resolve_artifact(target, lineage)
    if digest is not None or path is not None:
        if baseline is not None:
            notes.append("--baseline is ignored for an artifact target")
        return _investigate_artifact(target, digest, path, lineage=lineage, pairs=pairs,
                                     trust=trust, notes=notes)
    if target in runs:
        return _investigate_run(target, baseline, runs=runs, lineage=lineage, pairs=pairs,
                                trust=trust, notes=notes)
    known = ", ".join(sorted(clip(r, 40) for r in runs)[:10]) or "none"
    raise InputError(f"no run or artifact named {clip(target, 120)!r} in {len(pairs)} events",
                     remedy=f"runs recorded: {known}; an artifact is named by its digest "
                            "(sha256:<hex>) or path")


def _resolve_artifact(target: str, lineage: Lineage) -> tuple[str | None, str | None]:
    digest = normalize_digest(target)
    if digest is not None:
        return (digest, None) if lineage.events_for(digest) else (None, None)
    path = normalize_path(target)
    if path is None:
        return None, None
    candidates = [path]
    with contextlib.suppress(OSError, ValueError):
        candidates.append(os.path.normpath(os.path.abspath(path)))
    for p in candidates:
        digests = lineage.digests_at_path(p)
        if Path(p).is_file():
            # the bytes on disk now, which no event may record (written outside any job)
            from trainguard.integrity.hashing import file_digest

            try:
                return "sha256:" + file_digest(Path(p)).hex(), p
            except OSError:
                pass
        if digests:
            return digests[-1], p
    return None, None


def _investigate_artifact(target: str, digest: str | None, path: str | None, *,
                          lineage: Lineage, pairs: list[tuple[int, Event]],
                          trust: TrustOptions, notes: list[str]) -> Investigation:
    mine = lineage.events_for(digest) if digest else []
    at_path = lineage.at_path(path) if path else []
    first_t = min((a.time for a in mine), default=float("inf"))
    # The previous version at the same path: the latest other digest recorded there before it.
    earlier = [a for a in at_path if a.digest and a.digest != digest and a.time <= first_t
               and a.role in ("produced", "signed", "loaded")]
    reference = max(earlier, key=lambda a: (a.time, a.seq)) if earlier else None
    if path is None:
        path = next((a.path for a in mine if a.path), None)
    cause = assess_artifact(lineage, digest, path, reference=reference, trust=trust,
                            context="previous version at this path")
    by_seq = dict(pairs)
    selected: list[tuple[int, Event, str]] = []
    detections = []
    for a in [*mine, *at_path]:
        ev = by_seq.get(a.seq)
        if ev is not None:
            selected.append((a.seq, ev, "lineage"))
            if is_detection(ev):
                detections.append((a.seq, ev))
    if digest:
        for anc, _ in lineage.ancestry(digest, max_nodes=200):
            for a in lineage.producers_of(anc) + lineage.signatures_of(anc):
                if a.seq in by_seq:
                    selected.append((a.seq, by_seq[a.seq], "lineage"))
    first, anomalies = first_anomaly(sorted(set(detections), key=lambda p: p[0]), [])
    timeline, omitted = build_timeline(selected, first)
    if digest is None:
        notes.append(f"{path}: no digest recorded for this path")
    return Investigation(
        target=target, target_kind="artifact", run=None, baseline=None,
        baseline_reason="not applicable to an artifact (compared with the previous version at "
                        "its path)" if reference else "not applicable to an artifact",
        first_anomaly=first, anomalies=tuple(anomalies), differences=(),
        causes=tuple(rank([cause] if cause else [])), timeline=tuple(timeline),
        timeline_omitted=omitted,
        lineage=(lineage.graph(digest),) if digest else (), events_read=len(pairs),
        warnings=tuple(notes))


def _investigate_run(target: str, baseline: str | None, *,
                     runs: dict[str, list[tuple[int, Event]]], lineage: Lineage,
                     pairs: list[tuple[int, Event]], trust: TrustOptions,
                     notes: list[str]) -> Investigation:
    bad = profile_run(target, runs[target], lineage)
    if baseline is not None:
        if baseline not in runs:
            raise UsageError(f"baseline run {clip(baseline, 120)!r} is not in the events",
                             remedy="name a run id recorded in the ledger (Identity.job)")
        if baseline == target:
            raise UsageError("the baseline must be another run than the one investigated")
        base: RunProfile | None = profile_run(baseline, runs[baseline], lineage)
        reason = "given with --baseline"
    else:
        profiles = [profile_run(r, evs, lineage, light=True) for r, evs in runs.items()
                    if r != target]
        base, reason = pick_baseline(bad, profiles)
        if base is not None:
            base = profile_run(base.run, runs[base.run], lineage)
    loss = loss_anomalies(bad.metrics, base.metrics if base is not None else None)
    first, anomalies = first_anomaly(bad.detections, loss)
    diffs = diff_runs(base, bad, lineage) if base is not None else []
    causes = artifact_causes(bad, base, lineage, first, trust) + guard_causes(bad, first)
    if base is not None:
        causes += difference_causes(bad, base, diffs)
    ranked = rank(causes)

    by_seq = dict(pairs)
    anomaly_seqs = {a.seq for a in anomalies}
    selected: list[tuple[int, Event, str]] = [
        (s, ev, "anomaly" if s in anomaly_seqs else "run") for s, ev in bad.events
        if ev.kind != EventKind.GUARD_METRIC or s in anomaly_seqs]
    graphs: list[dict[str, Any]] = []
    for load in bad.loads:
        if load.digest is None:
            continue
        related: list[ArtifactEvent] = [*lineage.producers_of(load.digest),
                                        *lineage.signatures_of(load.digest),
                                        *lineage.verifications_of(load.digest)]
        if load.path:
            related += [a for a in lineage.at_path(load.path) if a.role in ("signed", "produced")]
        selected += [(a.seq, by_seq[a.seq], "lineage") for a in related if a.seq in by_seq]
        if len(graphs) < 50:
            graphs.append(lineage.graph(load.digest))
    for c in ranked[:5]:
        selected += [(s, by_seq[s], "lineage") for s in c.evidence if s in by_seq]
    timeline, omitted = build_timeline(selected, first)
    return Investigation(
        target=target, target_kind="run", run=bad, baseline=base, baseline_reason=reason,
        first_anomaly=first, anomalies=tuple(anomalies), differences=tuple(diffs),
        causes=tuple(ranked), timeline=tuple(timeline), timeline_omitted=omitted,
        lineage=tuple(graphs), events_read=len(pairs), warnings=tuple(notes))


__all__ = ["Cause", "Investigation", "TrustOptions", "investigate"]
