"""Signed tree heads: export, offline verification, witness co-signatures; OpenLineage export."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_helpers import make_event

from trainguard.core.events import Event, EventKind
from trainguard.integrity.keys import PrivateKey, SignatureInvalid
from trainguard.ledger import open_ledger
from trainguard.ledger.heads import HeadError, TreeHead, Witness
from trainguard.ledger.merkle import ProofError
from trainguard.ledger.openlineage import to_openlineage


def test_head_file_round_trip_and_offline_verification(tmp_path: Path) -> None:
    key = PrivateKey.generate()
    with open_ledger(tmp_path / "l.db") as led:
        led.append_many([make_event(i) for i in range(5)])
        head = led.sign_head(key)
    head.save(tmp_path / "head.json")
    loaded = TreeHead.load(tmp_path / "head.json")
    assert loaded == head
    loaded.verify_signature(key.public_key())
    # any signed field changed -> the signature fails
    from dataclasses import replace

    for changed in (replace(loaded, size=6), replace(loaded, root_hash=b"\x00" * 32),
                    replace(loaded, timestamp=1.0), replace(loaded, origin="other")):
        with pytest.raises(SignatureInvalid):
            changed.verify_signature(key.public_key())
    with pytest.raises(HeadError, match="not signed"):
        replace(loaded, signature=None).verify_signature(key.public_key())
    with pytest.raises(HeadError, match="signed by key"):
        loaded.verify_signature(PrivateKey.generate().public_key())


def test_witness_cosigns_extensions_and_refuses_truncation_and_forks(tmp_path: Path) -> None:
    ledger_key, wkey = PrivateKey.generate(), PrivateKey.generate()
    led = open_ledger(tmp_path / "l.db")
    led.append_many([make_event(i) for i in range(5)])
    witness = Witness(wkey, tmp_path / "state")
    h5 = led.sign_head(ledger_key)
    r = witness.witness(h5, ledger_key=ledger_key.public_key(), proofs=led.consistency_proof_path)
    assert r.status == "first"
    r.head.verify_cosignature(wkey.public_key())
    led.append_many([make_event(i) for i in range(5, 12)])
    h12 = led.sign_head(ledger_key)
    r = witness.witness(h12, ledger_key=ledger_key.public_key(),
                        proofs=led.consistency_proof_path)
    assert r.status == "extended"
    assert r.previous is not None
    assert r.previous.size == 5
    # the cosigned head survives a file round trip
    r.head.save(tmp_path / "c.json")
    TreeHead.load(tmp_path / "c.json").verify_cosignature(wkey.public_key())
    # the old head again: the ledger "shrank"
    with pytest.raises(ProofError, match="shrank"):
        witness.witness(h5, ledger_key=ledger_key.public_key())
    # a fork: another ledger history signed with the same key and origin
    from dataclasses import replace

    forked = replace(h12, root_hash=b"\x01" * 32).sign(ledger_key)
    with pytest.raises(ProofError):
        witness.witness(forked, ledger_key=ledger_key.public_key(),
                        proofs=led.consistency_proof_path)
    bigger = replace(led.head(), size=13, root_hash=b"\x02" * 32).sign(ledger_key)
    with pytest.raises(ProofError):
        witness.witness(bigger, proofs=lambda m, n: led.consistency_proof(m, 12).path)
    # an unsigned head, or one signed by another key, is refused
    with pytest.raises(HeadError):
        witness.witness(led.head())
    with pytest.raises(HeadError, match="earlier heads"):
        witness.witness(led.sign_head(PrivateKey.generate()))
    led.close()


def test_openlineage_export(tmp_path: Path) -> None:
    with open_ledger(tmp_path / "l.db") as led:
        led.append(make_event(0, kind=EventKind.RUN_STARTED, job="j1"))
        led.append(make_event(1, kind=EventKind.ARTIFACT_LOADED, job="j1"))
        led.append(make_event(2, kind=EventKind.ARTIFACT_SAVED, job="j1"))
        led.append(make_event(3, kind=EventKind.GUARD_METRIC, job="j1"))
        led.append(Event(kind=EventKind.RUN_FINISHED, subject="j1", details={"status": "failed"},
                         identity=make_event(0, job="j1").identity, time=5.0))
        events = list(to_openlineage(led.entries(), origin=led.ledger_id))
    assert [e["eventType"] for e in events] == ["START", "RUNNING", "RUNNING", "FAIL"]
    assert len({e["run"]["runId"] for e in events}) == 1
    assert events[1]["inputs"][0]["name"] == make_event(1).subject
    assert events[2]["outputs"][0]["name"] == make_event(2).subject
    assert events[2]["outputs"][0]["facets"]["trainguard_path"]["path"] == "ckpt-2.pt"
    assert all(e["job"]["name"] == "j1" and e["schemaURL"].startswith("https://openlineage.io")
               for e in events)
    assert events[2]["run"]["facets"]["trainguard"]["index"] == 2
