"""Sign and verify: every tamper class is detected and located, and the trust policy decides.

Policies come from a real trainguard.toml (signkit.POLICY_TOML): alice engineer, rita reviewer,
ivan intern (needs a reviewer's co-signature), eve engineer, mallory unknown.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from integrity.signkit import Team, make_model
from trainguard.core.config import load_config
from trainguard.core.errors import InputError, PolicyError, TamperError, UsageError
from trainguard.core.events import Event, EventKind
from trainguard.integrity.attestations import AttestationFile, attestations_path
from trainguard.integrity.bundle import Bundle
from trainguard.integrity.manifest import build_manifest
from trainguard.integrity.signing import cosign, sign
from trainguard.integrity.trust import TrustPolicy
from trainguard.integrity.verify import VerifyResult, verify


class ListSink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team.create(tmp_path / "keys")


@pytest.fixture
def policy(team: Team) -> TrustPolicy:
    return TrustPolicy.from_config(load_config(team.config()))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path)


def rules(r: VerifyResult) -> set[str]:
    return {p.rule_id for p in r.problems}


def file_changes(r: VerifyResult) -> set[tuple[str, str]]:
    return {(c["change"], c["file"]) for c in r.changes if c["kind"] == "file"}


def test_signed_model_verifies(model: Path, team: Team, policy: TrustPolicy) -> None:
    sink = ListSink()
    sig = sign(model, key=team.key("alice"), run={"step": 7}, sink=sink)
    assert sig == model.with_name("model.sig")
    r = verify(model, sig, policy=policy, sink=sink)
    assert r.ok, r.problems
    assert r.files_checked == 5
    assert [s.name for s in r.signers] == ["alice"]
    assert r.signers[0].roles == ("engineer",)
    assert r.checkpoint is not None
    assert r.checkpoint["run"]["step"] == 7
    assert r.checkpoint["producer"]["signer"] == team.keys["alice"].public_key().key_id
    assert [e.kind for e in sink.events] == [EventKind.ARTIFACT_SIGNED, EventKind.ARTIFACT_VERIFIED]
    assert sink.events[1].subject == f"sha256:{r.root_digest}"
    r.raise_for_failure()  # no exception


def test_flipped_byte_in_tensor_is_located(model: Path, team: Team, policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    st = model / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[-3] ^= 0x01  # inside head.bias (the last tensor)
    st.write_bytes(bytes(data))
    sink = ListSink()
    r = verify(model, sig, policy=policy, sink=sink)
    assert not r.ok
    assert file_changes(r) == {("modified", "model.safetensors")}
    tensors = [(c["name"], c["change"]) for c in r.changes if c["kind"] == "tensor"]
    assert tensors == [("head.bias", "changed")]
    assert {"TG-INT-001", "TG-INT-004"} <= rules(r)
    assert sink.events[0].kind == EventKind.ARTIFACT_VERIFY_FAILED
    assert sink.events[0].rule_id in {"TG-INT-001", "TG-INT-004"}
    with pytest.raises(TamperError) as exc:
        r.raise_for_failure()
    assert any("head.bias" in c for c in exc.value.changes)


@pytest.mark.parametrize("change", ["added", "missing", "renamed"])
def test_added_removed_renamed_files(model: Path, team: Team, policy: TrustPolicy,
                                     change: str) -> None:
    sig = sign(model, key=team.key("alice"))
    if change == "added":
        (model / "pytorch_model.bin").write_bytes(b"extra loader target")
        expected = {("added", "pytorch_model.bin")}
    elif change == "missing":
        (model / "tokenizer" / "vocab.txt").unlink()
        expected = {("missing", "tokenizer/vocab.txt")}
    else:
        (model / "config.json").rename(model / "config.old.json")
        expected = {("renamed", "config.json")}
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert file_changes(r) == expected
    if change == "renamed":
        assert r.changes[0]["to"] == "config.old.json"


def test_signature_of_another_model_fails(tmp_path: Path, team: Team,
                                          policy: TrustPolicy) -> None:
    a = make_model(tmp_path / "a")
    b = make_model(tmp_path / "b")
    (b / "config.json").write_text('{"hidden": 8, "layers": 1}\n')
    sig_a = sign(a, key=team.key("alice"))
    r = verify(b, sig_a, policy=policy)
    assert not r.ok
    assert file_changes(r) == {("modified", "config.json")}


def test_signature_from_unknown_key_fails(model: Path, team: Team, policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("mallory"))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert rules(r) == {"TG-SIG-003"}
    assert r.changes == ()  # nothing signed by an unknown key is trusted enough to compare


def test_forged_statement_fails_signature_check(model: Path, team: Team,
                                                policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    (model / "config.json").write_text('{"hidden": 4, "layers": 99}\n')
    # The attacker re-hashes the model into a new statement but cannot sign it as alice.
    forged = build_manifest(model, ignore_paths=[])
    doc = json.loads(sig.read_bytes())
    doc["dsseEnvelope"]["payload"] = base64.b64encode(forged.payload()).decode()
    sig.write_text(json.dumps(doc))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert rules(r) == {"TG-SIG-001"}


def test_signature_swapped_for_another_signers(model: Path, team: Team,
                                               policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    other = sign(model, key=team.key("eve"), output=model.parent / "eve.sig")
    # eve's bundle claims alice's key hint: the signature does not verify under alice's key
    doc, theirs = json.loads(sig.read_bytes()), json.loads(other.read_bytes())
    doc["dsseEnvelope"]["signatures"] = theirs["dsseEnvelope"]["signatures"]
    sig.write_text(json.dumps(doc))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert rules(r) == {"TG-SIG-001"}


def test_partial_verification_checks_only_listed_files(model: Path, team: Team,
                                                       policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    (model / "config.json").write_text("changed\n")
    (model / "extra.bin").write_bytes(b"x")
    r = verify(model, sig, policy=policy, files=["model.safetensors"])
    assert r.ok
    assert r.files_checked == 1
    r = verify(model, sig, policy=policy, files=["model.safetensors", "config.json"])
    assert not r.ok
    assert file_changes(r) == {("modified", "config.json")}
    r = verify(model, sig, policy=policy, files=["extra.bin"])
    assert not r.ok
    assert file_changes(r) == {("unsigned", "extra.bin")}


def test_precomputed_digests_and_held_bytes(model: Path, team: Team, policy: TrustPolicy) -> None:
    import hashlib

    sig = sign(model, key=team.key("alice"))
    data = (model / "model.safetensors").read_bytes()
    good = hashlib.sha256(data).digest()
    r = verify(model, sig, policy=policy, files=["model.safetensors"],
               digests={"model.safetensors": good})
    assert r.ok
    r = verify(model, sig, policy=policy, files=["model.safetensors"],
               digests={"model.safetensors": hashlib.sha256(b"other").digest()})
    assert not r.ok
    assert file_changes(r) == {("modified", "model.safetensors")}
    # the bytes a loader holds are what is checked, not the file on disk
    (model / "model.safetensors").write_bytes(b"replaced after reading")
    r = verify(model, sig, policy=policy, files=["model.safetensors"],
               contents={"model.safetensors": data})
    assert r.ok


def test_shards_method_detects_change_in_one_shard(model: Path, team: Team,
                                                   policy: TrustPolicy) -> None:
    (model / "empty.txt").write_bytes(b"")  # an empty file has no shard (format limitation)
    sig = sign(model, key=team.key("alice"), method="shards", shard_size=16)
    doc = json.loads(Bundle.read(sig).payload)
    assert doc["predicate"]["serialization"]["shard_size"] == 16
    assert verify(model, sig, policy=policy).ok
    st = model / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[20] ^= 0xFF
    st.write_bytes(bytes(data))
    r = verify(model, sig, policy=policy)
    change = next(c for c in r.changes if c["kind"] == "file")
    assert change["file"] == "model.safetensors"
    assert change["shards"] == ["16:32"]
    # precomputed whole-file digests cannot be compared with shard digests
    with pytest.raises(UsageError):
        verify(model, sig, policy=policy, files=["model.safetensors"],
               digests={"model.safetensors": b"\0" * 32})


def test_signature_inside_model_dir(model: Path, team: Team, policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"), output=model / "model.sig")
    ser = json.loads(Bundle.read(sig).payload)["predicate"]["serialization"]
    assert "model.sig" in ser["ignore_paths"]
    assert "model.sig.trainguard.json" in ser["ignore_paths"]
    assert verify(model, sig, policy=policy).ok


# --- trust policy --------------------------------------------------------------------------
def test_signer_chosen_ignore_path_is_refused(model: Path, team: Team,
                                              policy: TrustPolicy) -> None:
    (model / "optimizer").mkdir()
    (model / "optimizer" / "state.bin").write_bytes(b"adam")
    sig = sign(model, key=team.key("alice"), ignore_paths=["optimizer"])
    (model / "optimizer" / "state.bin").write_bytes(b"swapped later")
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert "TG-SIG-008" in rules(r)
    assert ("added", "optimizer/state.bin") in file_changes(r)  # not ignored either
    accepting = TrustPolicy.from_config(load_config(team.config(
        extra='accept_ignore_paths = [".git", ".gitattributes", ".github", ".gitignore", '
              '"optimizer"]')))
    assert verify(model, sig, policy=accepting).ok


def test_policy_without_rules_refuses_everything(model: Path, team: Team) -> None:
    sig = sign(model, key=team.key("alice"))
    empty = TrustPolicy()
    r = verify(model, sig, policy=empty)
    assert not r.ok
    only_identities = TrustPolicy.from_section(
        {"roles": {"engineer": {}}, "identities": {"alice": {"key": "alice.pub",
                                                            "roles": ["engineer"]}}},
        base_dir=team.dir)
    r = verify(model, sig, policy=only_identities)
    assert not r.ok
    assert rules(r) == {"TG-SIG-007"}


def test_role_not_allowed_for_project_or_path(model: Path, team: Team) -> None:
    cfg = team.config().read_text().replace('projects = ["llm"]\nroles = ["engineer", "intern"]',
                                            'projects = ["llm"]\nroles = ["engineer"]\n'
                                            f'paths = ["{model.parent.as_posix()}/released/*"]')
    pol = TrustPolicy.from_config(load_config(team.config(text=cfg)))
    sig = sign(model, key=team.key("alice"))
    r = verify(model, sig, policy=pol)
    assert not r.ok
    assert rules(r) == {"TG-SIG-007"}
    released = model.parent / "released" / "model"
    shutil.copytree(model, released)
    sig2 = sign(released, key=team.key("alice"))
    assert verify(released, sig2, policy=pol).ok
    assert not verify(released, sig2, policy=pol, project="vision").ok


def test_intern_needs_reviewer_cosign(model: Path, team: Team, policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("ivan"))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert rules(r) == {"TG-SIG-009"}
    with pytest.raises(PolicyError):
        r.raise_for_failure()
    # a co-signature by another engineer is not a reviewer's
    cosign(model, sig, team.key("eve"))
    assert rules(verify(model, sig, policy=policy)) == {"TG-SIG-009"}
    sink = ListSink()
    cosign(model, sig, team.key("rita"), sink=sink)
    assert sink.events[0].kind == EventKind.ARTIFACT_COSIGNED
    r = verify(model, sig, policy=policy)
    assert r.ok, r.problems
    assert [(s.name, s.role) for s in r.signers] == [("ivan", "signer"), ("eve", "cosigner"),
                                                      ("rita", "cosigner")]
    # the co-signature covers the model as signed: a later change still fails
    (model / "config.json").write_text("{}\n")
    assert not verify(model, sig, policy=policy).ok


def test_cosign_refuses_a_changed_model_and_the_signers_own_key(model: Path, team: Team) -> None:
    sig = sign(model, key=team.key("ivan"))
    with pytest.raises(UsageError):
        cosign(model, sig, team.key("ivan"))
    (model / "config.json").write_text("{}\n")
    with pytest.raises(TamperError):
        cosign(model, sig, team.key("rita"))


def test_cosignature_of_another_payload_is_refused(tmp_path: Path, team: Team,
                                                   policy: TrustPolicy) -> None:
    a, b = make_model(tmp_path / "a"), make_model(tmp_path / "b")
    (b / "config.json").write_text("{}\n")
    sig_a = sign(a, key=team.key("ivan"))
    sig_b = sign(b, key=team.key("ivan"))
    cosign(b, sig_b, team.key("rita"))
    # move rita's co-signature of model b into model a's attestation file
    att_b = AttestationFile.read(attestations_path(sig_b))
    att_a = AttestationFile.read(attestations_path(sig_a))
    att_a.with_bundle(att_b.bundles[-1]).write(attestations_path(sig_a))
    r = verify(a, sig_a, policy=policy)
    assert not r.ok
    assert {"TG-SIG-009", "TG-SIG-010"} <= rules(r)


def test_checkpoint_statement_from_another_signer_is_refused(model: Path, team: Team,
                                                             policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    other = sign(model, key=team.key("eve"), output=model.parent / "eve.sig")
    shutil.copyfile(attestations_path(other), attestations_path(sig))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert rules(r) == {"TG-SIG-010"}


def test_require_checkpoint_statement(model: Path, team: Team) -> None:
    pol = TrustPolicy.from_config(load_config(team.config(
        extra="require_checkpoint_statement = true")))
    sig = sign(model, key=team.key("alice"), checkpoint=False)
    assert rules(verify(model, sig, policy=pol)) == {"TG-SIG-010"}
    sig = sign(model, key=team.key("alice"))
    assert verify(model, sig, policy=pol).ok


def test_missing_inputs_are_input_errors(model: Path, team: Team, policy: TrustPolicy) -> None:
    with pytest.raises(InputError):
        verify(model, model.parent / "nope.sig", policy=policy)
    with pytest.raises(InputError):
        verify(model.parent / "nope", model.parent / "nope.sig", policy=policy)
    with pytest.raises(UsageError):
        sign(model)


def test_result_json_shape(model: Path, team: Team, policy: TrustPolicy) -> None:
    sig = sign(model, key=team.key("alice"))
    (model / "a" / "b.txt").write_text("changed\n")
    d: dict[str, Any] = verify(model, sig, policy=policy).to_dict()
    json.dumps(d)
    assert d["ok"] is False
    assert d["schema"] == "trainguard.verify"
    assert d["problems"][0]["rule_id"] == "TG-INT-001"
    assert d["changes"][0] == {"kind": "file", "change": "modified", "file": "a/b.txt",
                               "expected": d["changes"][0]["expected"],
                               "actual": d["changes"][0]["actual"]}


def test_symlinks_and_fifos_are_changes_not_crashes(model: Path, team: Team,
                                                    policy: TrustPolicy, tmp_path: Path) -> None:
    import os

    sig = sign(model, key=team.key("alice"))
    outside = tmp_path / "outside.json"
    outside.write_text('{"hidden": 4, "layers": 1}\n')
    (model / "config.json").unlink()
    (model / "config.json").symlink_to(outside)
    os.mkfifo(model / "pipe")
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert file_changes(r) == {("modified", "config.json"), ("added", "pipe")}
    r = verify(model, sig, policy=policy, files=["config.json"])
    assert file_changes(r) == {("modified", "config.json")}
    # the model path itself may be a symlink (latest -> step-1000)
    (model / "config.json").unlink()
    (model / "pipe").unlink()
    shutil.copyfile(outside, model / "config.json")
    latest = tmp_path / "latest"
    latest.symlink_to(model)
    assert verify(latest, sig, policy=policy).ok


def test_single_file_model(tmp_path: Path, team: Team, policy: TrustPolicy) -> None:
    f = tmp_path / "weights.safetensors"
    shutil.copyfile(make_model(tmp_path / "src") / "model.safetensors", f)
    sig = sign(f, key=team.key("alice"))
    assert sig == tmp_path / "weights.safetensors.sig"
    st = json.loads(Bundle.read(sig).payload)
    assert st["subject"][0]["name"] == "weights.safetensors"
    assert [r["name"] for r in st["predicate"]["resources"]] == ["."]
    r = verify(f, sig, policy=policy)
    assert r.ok, r.problems
    assert r.checkpoint is not None
    f.write_bytes(f.read_bytes()[:-1] + b"\x01")
    r = verify(f, sig, policy=policy)
    assert file_changes(r) == {("modified", ".")}
    assert [c["name"] for c in r.changes if c["kind"] == "tensor"] == ["head.bias"]
