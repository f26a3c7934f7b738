"""Hostile records: events are written by the jobs under investigation, so any field may be huge,
odd, missing or crafted. An investigation must finish (bounded work and output), escape what it
shows, and say clearly when there is nothing to investigate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from investigate.helpers import Clock, dig, ev, open_test_ledger, synthetic_events, who, write_jsonl
from trainguard.core.errors import InputError
from trainguard.core.events import EventKind
from trainguard.core.findings import Severity
from trainguard.investigate import investigate
from trainguard.investigate.html import render_html
from trainguard.investigate.render import render_json, render_text
from trainguard.investigate.sources import read_events_jsonl
from trainguard.investigate.timeline import MAX_TIMELINE

K = EventKind


def _all_renderings(target: str, events: list) -> tuple[str, str, str]:  # type: ignore[type-arg]
    inv = investigate(events, target)
    return render_text(inv), render_json(inv), render_html(inv)


def test_huge_and_deep_details_give_bounded_output() -> None:
    big = "A" * 2_000_000
    deep: dict = {}
    node = deep
    for _ in range(60):
        node["k"] = {}
        node = node["k"]
    wide = {f"key{i}": i for i in range(20_000)}
    r = who("alice", "R")
    events = [
        ev(K.RUN_STARTED, "R", {"config": {"deep": deep, "wide": wide, "big": big},
                                "hyperparameters": wide, "git_commit": big}, identity=r, t=1),
        ev(K.ARTIFACT_LOADED, dig("a"), {"path": big, "inputs": [dig("b")] * 50_000},
           identity=r, t=2),
        ev(K.GUARD_MONITOR, big, {"message": big, "step": 10**30}, identity=r, t=3,
           severity=Severity.HIGH, rule_id=big[:300]),
    ]
    text, js, html = _all_renderings("R", events)
    for out in (text, js, html):
        assert len(out) < 2_000_000
    json.loads(js)


def test_odd_types_unknown_kinds_and_missing_identities() -> None:
    events = [
        ev("weird.kind", "x", {"anything": [1, {"a": None}]}, t=1),
        ev(K.RUN_STARTED, "R", {"config": "not a dict", "hyperparameters": [1, 2],
                                "git_commit": 5, "lineage": {"x": 1}}, t=2),
        ev(K.ARTIFACT_LOADED, "R-input", {"run": "R", "path": 7, "digest": ["x"],
                                           "inputs": "sha256:nope"}, t=3),
        ev(K.ARTIFACT_SAVED, "sha256:" + "z" * 64, {"run": "R", "inputs": {"a": 1}}, t=4),
        ev(K.GUARD_METRIC, "m", {"run": "R", "step": "3", "loss": {"x": 1}}, t=5),
        ev(K.GUARD_METRIC, "m", {"run": "R", "step": True, "loss": 1.0}, t=6),
        ev(K.GUARD_METRIC, "m", {"run": "R", "step": 2.5, "loss": 1.0}, t=7),
        ev(K.GUARD_METRIC, "m", {"run": "R", "step": 1, "loss": 1.0, "lr": "fast"}, t=8),
        ev(K.GUARD_MONITOR, "m", {"run": "R"}, t=9, severity=Severity.MEDIUM),
    ]
    text, js, html = _all_renderings("R", events)
    doc = json.loads(js)
    assert doc["run"]["metric_points"] == 1
    assert doc["run"]["identity"] is None
    assert doc["anomalies"][0]["kind"] == "detection"
    assert "unknown" in text


def test_non_finite_loss_from_jsonl(tmp_path: Path) -> None:
    # canonical JSON cannot hold NaN, but a hand-written (or hostile) line can
    p = tmp_path / "events.jsonl"
    lines = [ev(K.RUN_STARTED, "R", identity=who("alice", "R"), t=1).to_json()]
    for step, loss in enumerate(["1.0", "0.9", "NaN", "Infinity", "-Infinity"]):
        d = json.loads(ev(K.GUARD_METRIC, "m", {"step": step, "loss": 0.0},
                          identity=who("alice", "R"), t=2 + step).to_json())
        lines.append(json.dumps(d).replace('"loss": 0.0', f'"loss": {loss}'))
    p.write_text("\n".join(lines) + "\n")
    inv = investigate(p, "R")
    assert inv.first_anomaly is not None
    assert inv.first_anomaly.kind == "loss_nonfinite"
    assert inv.first_anomaly.step == 2
    assert "nan" in render_html(inv)
    json.loads(render_json(inv))  # still valid JSON (no NaN token)


def test_bad_jsonl_lines_are_skipped_with_warnings(tmp_path: Path) -> None:
    p = write_jsonl(tmp_path / "e.jsonl", synthetic_events())
    good = p.read_text().splitlines()
    # an attacker appends junk in the middle, hoping to hide what follows
    bad = [*good[:5], "{not json", '{"schema": "other"}', "[1,2]", '{"kind": 1}',
           "\xff".encode("latin-1").decode("latin-1"), *good[5:]]
    p.write_text("\n".join(bad) + "\n")
    events, warnings = read_events_jsonl(p)
    assert len(events) == len(good)
    assert len(warnings) == 5
    inv = investigate(p, "B")
    assert inv.causes[0].identities[0].who.startswith("mallory")
    assert len(inv.warnings) == 5
    assert "skipped" in render_text(inv)


def test_unreadable_and_empty_sources(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        investigate(tmp_path / "missing.jsonl", "A")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(InputError, match="empty"):
        investigate(empty, "A")
    ledger = open_test_ledger(tmp_path / "empty.db")
    with pytest.raises(InputError, match="empty"):
        investigate(ledger, "A")
    ledger.close()


def test_terminal_escape_sequences_do_not_reach_the_terminal() -> None:
    r = who("alice\x1b[2J", "R")
    events = [ev(K.RUN_STARTED, "R", {"message": "\x1b]0;pwned\x07"}, identity=r, t=1),
              ev(K.GUARD_AUDIT, "\x1b[31mred", {"message": "a\rb\x00c"}, identity=r, t=2,
                 severity=Severity.HIGH)]
    text = render_text(investigate(events, "R"))
    assert "\x1b" not in text
    assert "\x00" not in text
    assert "\r" not in text
    assert "\\x1b" in text


@pytest.mark.slow
def test_hundred_thousand_events_finish_with_a_bounded_timeline() -> None:
    clock = Clock()
    events = synthetic_events(clock=clock)
    b = who("alice", "B")
    for i in range(100_000):
        kind = (K.GUARD_METRIC, K.GUARD_AUDIT, "custom.kind")[i % 3]
        events.append(ev(kind, f"s{i}", {"step": 100 + i, "loss": 0.5, "message": "m" * 50},
                         identity=b if i % 2 else who(f"u{i % 97}", f"job{i % 13}"), t=clock(),
                         severity=Severity.LOW if i % 1000 == 0 else None))
    inv = investigate(events, "B")
    assert inv.events_read == len(events)
    assert len(inv.timeline) <= MAX_TIMELINE
    assert inv.timeline_omitted > 0
    assert inv.causes[0].identities[0].who.startswith("mallory")
    assert len(render_html(inv)) < 5_000_000
