"""The fast encoders and decoders give exactly the bytes and errors of the reference ones
(json.dumps / json.loads / dataclasses.asdict), and the SQLite writer's cached chain tail never
produces a gap or a broken link when other connections write in between."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from ledger_helpers import make_event

from trainguard.core.errors import InputError
from trainguard.core.events import Event, canonical_json
from trainguard.core.findings import Severity
from trainguard.core.identity import Identity
from trainguard.ledger.entry import build_entries, encode_event, parse_entry
from trainguard.ledger.store_sqlite import SqliteLedger


def _reference(value: Any) -> bytes:
    # canonical_json as it was first written (the definition the ledger's hashes rest on)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _reference_dict(event: Event) -> dict[str, Any]:
    return {"schema": "trainguard.event", "schema_version": "1.0", "kind": event.kind,
            "time": event.time, "subject": event.subject,
            "severity": event.severity.label if event.severity is not None else None,
            "rule_id": event.rule_id,
            "identity": dataclasses.asdict(event.identity) if event.identity else None,
            "details": dict(event.details)}


FULL = Identity(user="bob \u00e9", host="n\"2", pid=7, job="4711", rank=3, world_size=8,
                local_rank=1, scheduler="slurm", git_commit="ab" * 20, env_digest="sha256:00",
                signer="ci@example.org")
SAMPLE = [
    make_event(0),
    make_event(1, kind="guard.tripwire", job="j\u2603"),
    Event(kind="k", subject="s"),
    Event(kind="artifact.loaded", subject="/p/\u00fc\n\t\"\\", identity=FULL, time=1e-7,
          details={"z": [1, 2.5, -0.0, 10**30, True, None, {"b": "\u0000", "a": []}],
                   "\u00e9": {"nested": {"deep": [[]]}}, "big": 1.7976931348623157e308},
          severity=Severity.parse("high"), rule_id="TG-GRD-001"),
    Event(kind="x.y", subject="", identity=FULL, time=1764547200, details={"n": -3}),
    Event(kind="x.y", subject="s", identity=Identity(user="u", host="h", pid=1), time=0.1 + 0.2),
]


@pytest.mark.parametrize("event", SAMPLE, ids=range(len(SAMPLE)))
def test_event_bytes_unchanged(event: Event) -> None:
    ref = _reference(_reference_dict(event))
    assert event.to_dict() == _reference_dict(event)
    assert canonical_json(event.to_dict()) == ref
    assert event.to_json().encode("utf-8") == ref
    assert encode_event(event) == ref
    assert encode_event(event) == ref  # a second time: from the identity caches
    assert Event.from_dict(json.loads(ref)) == event


def test_to_dict_returns_a_fresh_identity_dict() -> None:
    ev = make_event(3)
    first = ev.to_dict()
    first["identity"]["user"] = "mallory"
    assert ev.to_dict()["identity"]["user"] == "alice"
    assert canonical_json(ev.to_dict()) == _reference(_reference_dict(ev))


@pytest.mark.parametrize("value", [
    "a\u00e9\n\"", 1, 1.5, None, True, [1, {"b": 2, "a": [3.25e100, -0.0]}], (1, 2),
    {"\u00e9": "\u00fc", "x": {"y": []}}, {1: 2, 3: 4}, {True: 1}, {None: 2},
])
def test_canonical_json_matches_json_dumps(value: Any) -> None:
    assert canonical_json(value) == _reference(value)


def _cycle() -> dict[str, Any]:
    d: dict[str, Any] = {}
    d["self"] = d
    return d


def _deep() -> list[Any]:
    v: list[Any] = []
    for _ in range(100_000):
        v = [v]
    return v


@pytest.mark.parametrize("value", [
    float("nan"), {"a": float("inf")}, {"a": object()}, {(1,): 2}, {"\ud800": 1}, {"a": 1, 2: 3},
    _cycle(), _deep(),
], ids=["nan", "inf", "object", "tuple-key", "surrogate", "mixed-keys", "cycle", "deep"])
def test_canonical_json_errors_match_json_dumps(value: Any) -> None:
    with pytest.raises(Exception) as ref:  # noqa: PT011 - compared below
        _reference(value)
    with pytest.raises(Exception) as got:  # noqa: PT011
        canonical_json(value)
    assert (type(got.value), str(got.value)) == (type(ref.value), str(ref.value))
    # and after an error the encoder still works (no stale cycle markers)
    assert canonical_json({"a": [1]}) == b'{"a":[1]}'


def test_parse_entry_agrees_with_json_loads() -> None:
    raw = build_entries(5, b"\x22" * 32, 1.25, [encode_event(make_event(5))])[0][0]
    assert parse_entry(raw) == json.loads(raw)
    # json.loads' leniency (surrounding whitespace) is kept; trailing data is still refused
    assert parse_entry(b" " + raw + b"\n") == json.loads(raw)
    for bad in (raw + b"x", raw[:-1], b"\xff" + raw, raw + raw):
        with pytest.raises(ValueError, match="not JSON"):
            parse_entry(bad)


def test_cached_tail_follows_other_writers(tmp_path: Path) -> None:
    """Two connections (as two processes would) alternate appends: each one's cached tail goes
    stale when the other commits, the conditional insert notices, and it chains onto the other's
    entries; no gaps, one chain."""
    path = tmp_path / "l.db"
    a, b = SqliteLedger(path), SqliteLedger(path)
    order = [a, a, b, a, b, b, a]
    got = [w.append(make_event(i)) for i, w in enumerate(order)]
    got += a.append_many([make_event(i) for i in range(7, 10)])
    got += b.append_many([make_event(i) for i in range(10, 12)])
    assert got == list(range(12))
    a.verify()
    entries = list(b.entries())
    assert [e.event for e in entries] == [make_event(i) for i in range(12)]
    for x, y in zip(entries, entries[1:]):
        assert y.prev == x.leaf_hash
    # A plain sqlite3 connection (not a ledger) deleting the tail is noticed too: the next
    # append chains onto what the table really holds rather than the cached tail.
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM ledger_entries WHERE idx = 11")
    conn.commit()
    conn.close()
    assert a.append(make_event(99)) == 11
    assert list(a.entries(11))[0].prev == entries[10].leaf_hash
    a.verify()
    a.close()
    b.close()


def test_failed_append_drops_the_cached_tail(tmp_path: Path) -> None:
    led = SqliteLedger(tmp_path / "l.db")
    led.append(make_event(0))
    slow = SqliteLedger(tmp_path / "l.db", busy_timeout=0.05)
    assert slow.append(make_event(1)) == 1  # its tail is cached now
    conn = sqlite3.connect(tmp_path / "l.db", isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    with pytest.raises(InputError, match="cannot append"):
        slow.append(make_event(2))
    conn.execute("ROLLBACK")
    conn.close()
    assert led.append(make_event(2)) == 2
    assert slow.append(make_event(3)) == 3
    led.verify()
    led.close()
    slow.close()
