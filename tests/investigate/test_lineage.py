"""Lineage: producers, signers, verifications, consumers, ancestry, from events and the ledger."""

from __future__ import annotations

import json
from pathlib import Path

from investigate.helpers import dig, ev, open_test_ledger, who
from trainguard.core.events import EventKind
from trainguard.ledger.lineage import (
    LOADED,
    PRODUCED,
    REFUSED,
    SIGNED,
    Lineage,
    normalize_digest,
    run_of,
)

K = EventKind


def test_normalize_digest() -> None:
    h = "AB" * 32
    assert normalize_digest(f"sha256:{h}") == f"sha256:{h.lower()}"
    assert normalize_digest(h) == f"sha256:{h.lower()}"
    assert normalize_digest("sha256:xyz") is None
    assert normalize_digest("ckpt.pt") is None
    assert normalize_digest(12) is None
    assert normalize_digest("sha256:" + "a" * 5000) is None


def test_run_of_prefers_details_then_run_subject_then_job() -> None:
    assert run_of(ev(K.GUARD_METRIC, "x", {"run": "r1"}, identity=who("a", "j"))) == "r1"
    assert run_of(ev(K.RUN_STARTED, "r2", identity=who("a", "j"))) == "r2"
    assert run_of(ev(K.GUARD_METRIC, "x", identity=who("a", "j"))) == "j"
    assert run_of(ev(K.GUARD_METRIC, "x")) is None


def test_producers_signers_consumers_and_verifications() -> None:
    d = dig("ckpt")
    lin = Lineage.build([
        ev(K.ARTIFACT_SAVED, d, {"path": "out/ckpt.pt", "inputs": [dig("base")]},
           identity=who("alice", "train-1")),
        ev(K.ARTIFACT_SIGNED, d, {"path": "out/ckpt.pt"}, identity=who("alice", signer="a@x")),
        ev(K.ARTIFACT_VERIFIED, d, {"path": "out/ckpt.pt"}, identity=who("bob", "eval-1")),
        ev(K.ARTIFACT_LOADED, d, {"path": "out/ckpt.pt"}, identity=who("bob", "eval-1")),
        # guard.load names the file as subject and the digest in details
        ev(K.GUARD_LOAD, "out/ckpt.pt", {"digest": d}, identity=who("carol", "eval-2")),
        ev(K.ARTIFACT_LOAD_REFUSED, d, {"path": "out/ckpt.pt"}, identity=who("dave", "x")),
        ev(K.SCAN_COMPLETED, d),  # not a lineage event
    ])
    [prod] = lin.producers_of(d)
    assert prod.role == PRODUCED
    assert prod.identity is not None
    assert prod.identity.user == "alice"
    assert prod.run == "train-1"
    assert prod.inputs == (dig("base"),)
    [sig] = lin.signatures_of(d)
    assert (sig.role, sig.signer, sig.who) == (SIGNED, "a@x", "a@x")
    assert [v.role for v in lin.verifications_of(d)] == ["verified"]
    consumers = lin.consumers_of(d)
    assert [(c.role, c.run) for c in consumers] == [
        (LOADED, "eval-1"), (LOADED, "eval-2"), (REFUSED, "x")]
    assert [a.digest for a in lin.loads_by_run("eval-2")] == [d]
    assert [a.digest for a in lin.produced_by_run("train-1")] == [d]
    assert lin.digests_at_path("out/./ckpt.pt") == [d]
    assert lin.artifacts() == [d]
    assert lin.events_for("sha256:" + "0" * 64) == []


def test_ancestry_descendants_and_cycles() -> None:
    a, b, c, x = dig("a"), dig("b"), dig("c"), dig("x")
    lin = Lineage.build([
        ev(K.ARTIFACT_SAVED, b, {"inputs": [a]}),
        ev(K.ARTIFACT_SAVED, c, {"inputs": [b, {"digest": x, "path": "data.bin"}, "junk", 7]}),
        ev(K.ARTIFACT_SAVED, a, {"inputs": [c]}),  # a hostile log may hold a cycle
    ])
    assert lin.inputs_of(c) == [b, x]
    assert lin.ancestry(c) == [(b, 1), (x, 1), (a, 2)]
    assert lin.descendants(a) == [b, c]
    assert lin.ancestry(c, max_depth=1) == [(b, 1), (x, 1)]
    assert lin.ancestry("not a digest") == []


def test_directory_signature_indexes_each_file() -> None:
    root, f1 = dig("root"), dig("f1")
    lin = Lineage.build([ev(K.ARTIFACT_SIGNED, root, {
        "path": "models/m", "file_digests": {"model.safetensors": f1, "bad": "nope", "x": 3}},
        identity=who("alice"))])
    [s] = lin.signatures_of(f1)
    assert s.path == "models/m/model.safetensors"
    sigs, by_name = lin.signed_at_path("models/m/model.safetensors")
    assert len(sigs) == 1
    assert by_name is False
    sigs, by_name = lin.signed_at_path("elsewhere/model.safetensors")
    assert len(sigs) == 1
    assert by_name is True


def test_lineage_from_real_ledger_uses_leaf_indices(tmp_path: Path) -> None:
    d = dig("ckpt")
    ledger = open_test_ledger(tmp_path / "ledger.db")
    ledger.append(ev(K.RUN_STARTED, "r1", identity=who("alice", "r1"), t=1.0))
    ledger.append(ev(K.ARTIFACT_SAVED, d, {"path": "c.pt"}, identity=who("alice", "r1"), t=2.0))
    lin = Lineage.build(ledger)
    ledger.close()
    [p] = lin.producers_of(d)
    assert p.seq == 1
    graph = lin.graph(d)
    json.dumps(graph)  # JSON-ready
    assert graph["producers"][0]["who"] == "alice@alice-node[job=r1]"
    assert graph["paths"] == ["c.pt"]


def test_guard_load_gate_events_count_as_loads() -> None:
    d = dig("w")
    lin = Lineage.build([
        # guard/loaders.py: the verified bytes are then loaded by this process
        ev(K.ARTIFACT_VERIFIED, d, {"path": "w.pt", "loader": "torch.load"},
           identity=who("alice", "J")),
        # a refused load names the file under "file"
        ev(K.GUARD_LOAD, "x.pt", {"file": "x.pt"}, identity=who("alice", "J")),
    ])
    assert [(a.role, a.path) for a in lin.loads_by_run("J")] == [(LOADED, "w.pt"),
                                                                (LOADED, "x.pt")]
    assert [a.role for a in lin.verifications_of(d)] == ["verified"]
