"""Investigations of runs and artifacts: baseline choice, first anomaly, differences, ranking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from investigate.helpers import Clock, dig, ev, synthetic_events, who
from trainguard.core.errors import InputError, UsageError
from trainguard.core.events import EventKind
from trainguard.core.findings import Severity
from trainguard.investigate import TrustOptions, investigate
from trainguard.investigate.causes import WEIGHTS
from trainguard.investigate.timeline import loss_anomalies, metric_points

K = EventKind


def test_tampered_input_ranks_first_with_its_producer() -> None:
    inv = investigate(synthetic_events(), "B")
    top = inv.causes[0]
    assert top.rank == 1
    assert top.category == "artifact"
    assert top.path == "ckpt/base.pt"
    assert top.digest == dig("base-evil")
    assert top.identities[0].role == "producer"
    assert top.identities[0].who.startswith("mallory@")
    assert any(a.role == "signed the original" and a.who == "alice" for a in top.identities)
    assert top.score == sum(WEIGHTS[k] for k in (
        "signature_mismatch", "producer_changed", "input_changed", "before_anomaly"))
    assert inv.baseline is not None
    assert inv.baseline.run == "A"
    assert inv.first_anomaly is not None
    assert inv.first_anomaly.kind == "loss_divergence"
    assert inv.first_anomaly.step == 0
    assert inv.suspicious
    assert inv.exit_code == 1
    assert [d.area for d in inv.differences] == ["inputs"]


def test_clean_run_is_not_suspicious() -> None:
    inv = investigate(synthetic_events(tamper=False), "B")
    assert inv.baseline is not None
    assert inv.baseline.run == "A"
    assert inv.causes == ()
    assert inv.anomalies == ()
    assert inv.exit_code == 0


def test_ranking_is_deterministic_and_does_not_depend_on_unrelated_order() -> None:
    events = synthetic_events()
    first = investigate(events, "B").to_dict()
    assert investigate(list(events), "B").to_dict() == first
    noise = [ev(K.GUARD_AUDIT, f"x{i}", identity=who("zed", "other"), t=5.0 + i)
             for i in range(5)]
    again = investigate(noise + events, "B")
    assert [c["title"] for c in first["causes"]] == [c.title for c in again.causes]


def test_tampered_artifact_outranks_code_change_and_low_detection() -> None:
    events = synthetic_events()
    clock = Clock(2_000_000_000.0)
    b = who("alice", "B", git_commit="f" * 40)
    events += [ev(K.GUARD_MONITOR, "run:B", {"message": "slow step", "step": 9},
                  identity=b, t=clock(), severity=Severity.LOW, rule_id="TG-GRD-900")]
    # B's events carry a new commit
    events = [e if e.kind != K.RUN_STARTED or e.subject != "B" else
              ev(e.kind, e.subject, {**e.details, "git_commit": "f" * 40}, identity=b, t=e.time)
              for e in events]
    inv = investigate(events, "B", baseline="A")
    cats = [c.category for c in inv.causes]
    assert cats[0] == "artifact"
    assert "code" in cats
    assert "guard" in cats
    assert inv.baseline_reason == "given with --baseline"


def test_baseline_skips_runs_with_detections_and_later_runs() -> None:
    clock = Clock()
    alice = who("alice")
    events = []
    for job, bad in (("r1", False), ("r2", True), ("r3", False), ("r4", False)):
        i = alice.with_(job=job)
        events.append(ev(K.RUN_STARTED, job, {"lineage": "exp-7"}, identity=i, t=clock()))
        if bad:
            events.append(ev(K.GUARD_TRIPWIRE, "AdamW.step", identity=i, t=clock(),
                             severity=Severity.CRITICAL, rule_id="TG-GRD-001"))
    inv = investigate(events, "r3")
    assert inv.baseline is not None
    assert inv.baseline.run == "r1"  # r2 had a detection, r4 is later
    assert "same declared lineage" in inv.baseline_reason
    assert investigate(events, "r1").baseline is None
    with pytest.raises(UsageError):
        investigate(events, "r3", baseline="nope")
    with pytest.raises(UsageError):
        investigate(events, "r3", baseline="r3")


def test_guard_detection_is_first_anomaly_and_a_cause() -> None:
    events = synthetic_events(tamper=False)
    b = who("alice", "B")
    t = next(e.time for e in events if e.kind == K.GUARD_METRIC and e.details["step"] == 3
             and e.identity is not None and e.identity.job == "B")
    events.append(ev(K.GUARD_TRIPWIRE, "torch.optim.AdamW.step",
                     {"message": "replaced", "step": 3, "replaced_by": "evil.py:12"},
                     identity=b, t=t + 0.5, severity=Severity.CRITICAL, rule_id="TG-GRD-002"))
    inv = investigate(events, "B")
    assert inv.first_anomaly is not None
    assert inv.first_anomaly.kind == "detection"
    assert inv.first_anomaly.rule_id == "TG-GRD-002"
    top = inv.causes[0]
    assert top.category == "guard"
    assert top.score == WEIGHTS["guard_critical"] + WEIGHTS["first_anomaly"]
    assert any("evil.py:12" in r for r in top.reasons)
    assert inv.baseline is not None  # A is clean; B's own detection does not matter


def test_runtime_lr_change_without_config_change() -> None:
    events = []
    for e in synthetic_events(tamper=False):
        if e.kind == K.GUARD_METRIC and e.identity and e.identity.job == "B" \
                and e.details["step"] >= 4:
            e = ev(e.kind, e.subject, {**e.details, "lr": 1.0}, identity=e.identity, t=e.time)
        events.append(e)
    inv = investigate(events, "B")
    [c] = [c for c in inv.causes if c.category == "hyperparameters"]
    assert c.score == WEIGHTS["lr_runtime"]
    assert "step 4" in c.title
    assert inv.suspicious


def test_low_trust_unknown_producer_and_verify_failure() -> None:
    d1, d2, d3 = dig("i1"), dig("i2"), dig("i3")
    r = who("alice", "R")
    events = [
        ev(K.ARTIFACT_SAVED, d1, {"path": "a.pt", "role": "intern"}, identity=who("ivan"), t=1),
        ev(K.ARTIFACT_VERIFY_FAILED, d3, {"path": "c.pt", "expected": d1},
           identity=who("bob"), t=2, severity=Severity.HIGH),
        ev(K.RUN_STARTED, "R", identity=r, t=3),
        ev(K.ARTIFACT_LOADED, d1, {"path": "a.pt"}, identity=r, t=4),
        ev(K.ARTIFACT_LOADED, d2, {"path": "b.pt"}, identity=r, t=5),
        ev(K.ARTIFACT_LOADED, d3, {"path": "c.pt"}, identity=r, t=6),
    ]
    inv = investigate(events, "R")
    by_path = {c.path: c for c in inv.causes}
    assert any("low-trust" in x for x in by_path["a.pt"].reasons)
    assert any("no job recorded producing" in x for x in by_path["b.pt"].reasons)
    assert any("verification failed" in x for x in by_path["c.pt"].reasons)
    assert inv.causes[0].path == "c.pt"
    trusted = investigate(events, "R", trust=TrustOptions(low_trust_roles=frozenset(),
                                                          trusted_users=frozenset({"alice"})))
    assert any("ivan" in x for x in {c.path: c for c in trusted.causes}["a.pt"].reasons)


def test_tampered_ancestor_scores_at_half_weight() -> None:
    good, evil, mid = dig("g"), dig("e"), dig("m")
    r = who("alice", "R")
    events = [
        ev(K.ARTIFACT_SIGNED, good, {"path": "base.pt"}, identity=who("alice"), t=1),
        ev(K.ARTIFACT_SAVED, evil, {"path": "base.pt"}, identity=who("mallory"), t=2),
        ev(K.ARTIFACT_SAVED, mid, {"path": "mid.pt", "inputs": [evil]}, identity=who("alice"),
           t=3),
        ev(K.ARTIFACT_SIGNED, mid, {"path": "mid.pt"}, identity=who("alice"), t=3.5),
        ev(K.RUN_STARTED, "R", identity=r, t=4),
        ev(K.ARTIFACT_LOADED, mid, {"path": "mid.pt"}, identity=r, t=5),
    ]
    inv = investigate(events, "R")
    [c] = inv.causes
    assert c.digest == evil
    assert "ancestor" in c.title
    assert c.score == WEIGHTS["signature_mismatch"] // 2
    assert c.identities[0].who.startswith("mallory")


def test_artifact_target_by_digest_hex_and_path(tmp_path: Path) -> None:
    events = synthetic_events()
    evil = dig("base-evil")
    for target in (evil, evil.removeprefix("sha256:"), "ckpt/base.pt"):
        inv = investigate(events, target)
        assert inv.target_kind == "artifact"
        assert inv.causes[0].identities[0].who.startswith("mallory")
        assert inv.lineage[0]["digest"] == evil
        assert [c["run"] for c in inv.lineage[0]["consumers"]] == ["B"]
    # a file on disk is hashed: bytes nobody recorded are named as such
    f = tmp_path / "base.pt"
    f.write_bytes(b"bytes written outside any job")
    events.append(ev(K.ARTIFACT_SIGNED, dig("x"), {"path": str(f)}, identity=who("alice"), t=1))
    inv = investigate(events, str(f))
    assert inv.target_kind == "artifact"
    assert inv.causes[0].score >= WEIGHTS["signature_mismatch"] + WEIGHTS["no_producer"]


def test_errors() -> None:
    with pytest.raises(InputError, match="empty"):
        investigate([], "A")
    with pytest.raises(InputError, match="no run or artifact"):
        investigate(synthetic_events(), "nope")


def test_loss_anomaly_rules() -> None:
    def pts(losses: list[object]) -> list:
        return metric_points((i, ev(K.GUARD_METRIC, "m", {"step": i, "loss": v}, t=float(i)))
                             for i, v in enumerate(losses))

    base = pts([1.0] * 6)
    # one outlier step is not a divergence; two consecutive are
    assert loss_anomalies(pts([1, 1, 2, 1, 1, 1]), base) == []
    [a] = loss_anomalies(pts([1, 1, 1, 2, 2, 1]), base)
    assert (a.kind, a.step) == ("loss_divergence", 3)
    [a] = loss_anomalies(pts([1, 1, 1, 1, 1, 3]), base)  # the last shared step counts alone
    assert a.step == 5
    [a] = loss_anomalies(pts([1, 1, 1, 1, 1, 1, 50]), None)
    assert a.kind == "loss_spike"
    kinds = [a.kind for a in loss_anomalies(pts([1, "nan", None, 1]), base)]
    assert kinds == ["loss_nonfinite"]
    [a] = loss_anomalies(pts([1, None, "Infinity"]), base)
    assert a.step == 2
    assert loss_anomalies(pts([None, 1, None, 1]), base) == []  # null: no loss known yet


def test_json_is_serialisable_and_complete() -> None:
    doc = json.loads(json.dumps(investigate(synthetic_events(), "B").to_dict()))
    assert doc["schema"] == "trainguard.investigation"
    assert doc["causes"][0]["identities"][0]["identity"]["user"] == "mallory"
    assert doc["first_anomaly"]["kind"] == "loss_divergence"
    assert doc["baseline"]["run"] == "A"


def test_oms_manifest_signatures_from_the_signer() -> None:
    """integrity/signing.py names the manifest's root digest (files: count): a one-file manifest
    is checked through sha256(file digest); a larger one is not compared (no false alarm)."""
    import hashlib

    good, evil = dig("g"), dig("e")

    def root(d: str) -> str:
        return "sha256:" + hashlib.sha256(bytes.fromhex(d.split(":")[1])).hexdigest()

    r = who("alice", "R")

    def run_loading(d: str, sig: dict, path: str = "m.pt") -> list:
        return [ev(K.ARTIFACT_SAVED, d, {"path": path}, identity=who("alice"), t=1),
                ev(K.ARTIFACT_SIGNED, sig.pop("subject"), sig, identity=who("alice"), t=2),
                ev(K.RUN_STARTED, "R", identity=r, t=3),
                ev(K.ARTIFACT_LOADED, d, {"path": path}, identity=r, t=4)]

    one_file = {"path": "m.pt", "files": 1, "method": "files", "signer": "alice"}
    assert investigate(run_loading(good, {**one_file, "subject": root(good)}), "R").causes == ()
    [c] = investigate(run_loading(evil, {**one_file, "subject": root(good)}), "R").causes
    assert c.score == WEIGHTS["signature_mismatch"]
    many = {"path": "model", "files": 3, "method": "files", "subject": root(good)}
    assert investigate(run_loading(evil, dict(many), "model/w.pt"), "R").causes == ()
