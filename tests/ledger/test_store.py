"""The Ledger API on every store (SQLite and real PostgreSQL): appends, reads, queries, proofs,
heads, and the audit catching each kind of tampering against an earlier head."""

from __future__ import annotations

import json

import pytest
from ledger_helpers import execute_raw, make_event

from trainguard.core.errors import TamperError
from trainguard.core.events import Event, canonical_json
from trainguard.core.findings import Severity
from trainguard.core.identity import Identity
from trainguard.integrity.keys import PrivateKey
from trainguard.ledger import open_ledger
from trainguard.ledger.entry import GENESIS_PREV, build_entry, encode_event, parse_entry
from trainguard.ledger.merkle import leaf_hash, root_of, verify_consistency, verify_inclusion


def _filled(url: str, n: int = 10):  # type: ignore[no-untyped-def]
    led = open_ledger(url)
    assert led.append_many([make_event(i) for i in range(n)]) == list(range(n))
    return led


def test_append_read_back_and_chain(ledger_url: str) -> None:
    with open_ledger(ledger_url) as led:
        assert led.size == 0
        assert led.append(make_event(0)) == 0
        assert led.append_many([make_event(i) for i in (1, 2, 3)]) == [1, 2, 3]
        assert led.append_many([]) == []
        entries = list(led.entries())
        assert [e.index for e in entries] == [0, 1, 2, 3]
        assert [e.event for e in entries] == [make_event(i) for i in range(4)]
        assert entries[0].prev == GENESIS_PREV
        for a, b in zip(entries, entries[1:]):
            assert b.prev == a.leaf_hash
        for e in entries:
            assert e.leaf_hash == leaf_hash(e.raw)
            # the stored bytes are exactly the canonical JSON of the decoded entry
            assert canonical_json(json.loads(e.raw)) == e.raw
        assert list(led.entries(1, 3)) == entries[1:3]
        assert led.entry(2) == entries[2]


def test_entry_encoding_matches_canonical_json() -> None:
    for i in range(5):
        ev = make_event(i)
        assert encode_event(ev) == canonical_json(ev.to_dict())
    raw = build_entry(7, b"\x11" * 32, 1764547200.25, encode_event(make_event(7)))
    data = parse_entry(raw)
    assert canonical_json(data) == raw
    assert data["index"] == 7
    assert data["v"] == 1
    assert data["prev"] == "11" * 32


def test_query_filters(ledger_url: str) -> None:
    with open_ledger(ledger_url) as led:
        led.append_many([make_event(i) for i in range(5)])
        led.append_many([make_event(i, kind="artifact.loaded", job="job-2") for i in range(5, 8)])
        led.append(make_event(8, kind="guard.monitor", job="job-2"))
        assert [e.index for e in led.query(kind="artifact.loaded")] == [5, 6, 7]
        assert [e.index for e in led.query(kind="artifact.*")] == list(range(8))
        assert [e.index for e in led.query(job="job-2")] == [5, 6, 7, 8]
        assert [e.index for e in led.query(subject=make_event(3).subject)] == [3]
        t0 = make_event(0).time
        assert [e.index for e in led.query(since=t0 + 2, until=t0 + 6)] == [2, 3, 4, 5]
        assert [e.index for e in led.query(job="job-2", kind="guard.monitor")] == [8]
        assert [e.index for e in led.query(limit=2)] == [0, 1]
        assert list(led.query(job="nobody")) == []
        # entries appended after a query are found by the next one
        led.append(make_event(9, kind="artifact.loaded"))
        assert [e.index for e in led.query(kind="artifact.loaded")] == [5, 6, 7, 9]


def test_heads_and_proofs(ledger_url: str) -> None:
    with _filled(ledger_url, 37) as led:
        key = PrivateKey.generate()
        head = led.sign_head(key)
        head.verify_signature(key.public_key())
        hashes = [e.leaf_hash for e in led.entries()]
        assert head.size == 37
        assert head.root_hash == root_of(hashes)
        for i in range(37):
            p = led.inclusion_proof(i, 37)
            verify_inclusion(hashes[i], i, 37, p.path, head.root_hash)
        old = led.head()
        led.append_many([make_event(i) for i in range(37, 50)])
        new = led.head()
        for m in (0, 1, 16, 36, 37):
            c = led.consistency_proof(m, new.size)
            verify_consistency(m, new.size, root_of(hashes[:m]), new.root_hash, c.path)
        led.consistency_proof(old.size).verify(old.root_hash, new.root_hash)
        # a second handle (another process, in real life) sees the same tree
        with open_ledger(ledger_url) as other:
            assert other.head().root_hash == new.root_hash
            assert other.ledger_id == led.ledger_id
        assert led.verify(against_head=head, public_key=key.public_key()).size == 50


def test_migrations_recorded_once(ledger_url: str) -> None:
    a = open_ledger(ledger_url)
    assert a.applied_migrations == ["0001_entries"]  # type: ignore[attr-defined]
    b = open_ledger(ledger_url)
    assert b.applied_migrations == []  # type: ignore[attr-defined]
    a.close()
    b.close()


# --- tampering: every change detected against an earlier head -----------------------------------

def _rewrite_from(url: str, start: int) -> None:
    """The strongest attack on the rows alone: edit entry ``start`` and rebuild every later
    entry, index, prev link and leaf hash consistently."""
    with open_ledger(url) as led:
        entries = list(led.entries())
    prev = entries[start - 1].leaf_hash if start else GENESIS_PREV
    for e in entries[start:]:
        data = json.loads(e.raw)
        event = data["event"]
        if e.index == start:
            event["details"]["path"] = "evil.pt"
        raw = build_entry(e.index, prev, data["appended_at"], canonical_json(event))
        h = leaf_hash(raw)
        execute_raw(url, "UPDATE ledger_entries SET entry = ?, leaf_hash = ? WHERE idx = ?",
                    (raw, h, e.index))
        prev = h
    if url.startswith("postgresql://"):
        execute_raw(url, "UPDATE ledger_state SET last_hash = ? WHERE id = 1", (prev,))


def _edit(url: str) -> None:
    with open_ledger(url) as led:
        raw = led.entry(3).raw
    execute_raw(url, "UPDATE ledger_entries SET entry = ? WHERE idx = 3",
                (raw.replace(b"ckpt-3.pt", b"evil-3.pt"),))


def _swap(url: str) -> None:
    execute_raw(url, "UPDATE ledger_entries SET idx = -1 WHERE idx = 3")
    execute_raw(url, "UPDATE ledger_entries SET idx = 3 WHERE idx = 5")
    execute_raw(url, "UPDATE ledger_entries SET idx = 5 WHERE idx = -1")


TAMPERINGS = {
    "edit": (_edit, "edited"),
    "delete": (lambda url: execute_raw(url, "DELETE FROM ledger_entries WHERE idx = 3"),
               "missing"),
    "swap": (_swap, "reordered"),
    "truncate": (lambda url: execute_raw(url, "DELETE FROM ledger_entries WHERE idx >= 7"),
                 "truncated"),
    "rewrite-chain": (lambda url: _rewrite_from(url, 3), "do not match the kept head"),
}


@pytest.mark.parametrize("how", list(TAMPERINGS))
def test_tampering_detected_against_earlier_head(ledger_url: str, how: str) -> None:
    key = PrivateKey.generate()
    with _filled(ledger_url, 10) as led:
        head = led.sign_head(key)
        led.verify(against_head=head, public_key=key.public_key())
    tamper, expected = TAMPERINGS[how]
    tamper(ledger_url)
    with open_ledger(ledger_url) as led:
        with pytest.raises(TamperError) as info:
            led.verify(against_head=head, public_key=key.public_key())
        text = "\n".join(info.value.changes)
        assert expected in text, text
        assert any("kept head" in c for c in info.value.changes) or how in ("delete", "truncate")
        # appending afterwards does not hide it
        if how != "truncate" or not ledger_url.startswith("postgresql://"):
            led.append(make_event(99))
        with pytest.raises(TamperError):
            led.verify(against_head=head)


def test_consistent_rewrite_passes_without_head_only(ledger_url: str) -> None:
    """What tamper-evidence does NOT give: without a kept head a fully consistent rewrite of the
    rows verifies. This is why heads must be kept elsewhere (docs/ledger.md)."""
    with _filled(ledger_url, 10) as led:
        head = led.head()
    _rewrite_from(ledger_url, 0)
    with open_ledger(ledger_url) as led:
        assert led.verify().size == 10
        with pytest.raises(TamperError):
            led.verify(against_head=head)


def test_head_of_other_ledger_or_bad_signature(ledger_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from trainguard.core.errors import VerificationError

    key, other_key = PrivateKey.generate(), PrivateKey.generate()
    with _filled(ledger_url, 4) as led:
        head = led.sign_head(key)
        with pytest.raises(VerificationError):
            led.verify(against_head=head, public_key=other_key.public_key())
        foreign = open_ledger(tmp_path / "other.db")
        foreign.append_many([make_event(i) for i in range(4)])
        with pytest.raises(TamperError, match="tampered"):
            foreign.verify(against_head=head)
        foreign.close()


@pytest.mark.parametrize("event", [
    make_event(1),
    Event(kind="x.y", subject="ü/ø \"quoted\"\n", details={"z": [1, 2.5, None, {"b": 1, "a": "é"}]},
          identity=make_event(0).identity, time=5, severity=Severity.HIGH, rule_id="TG-LED-001"),
    Event(kind="k", subject="s", details={}, identity=None, time=0.1),
    Event(kind="k", subject="s", identity=Identity(user="u", host="h", pid=1, rank=3),
          time=1e-300),
])
def test_fast_event_encoding_is_canonical(event: Event) -> None:
    assert encode_event(event) == canonical_json(event.to_dict())
