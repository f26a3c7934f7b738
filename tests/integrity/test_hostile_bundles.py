"""Hostile signature bundles and attestation files: a clean verification failure, never a crash.

Library: ``verify`` returns ok=False with TG-SIG-002 (or another rule) for anything malformed;
CLI: exit 1 (a signature that cannot be read does not verify) and no traceback; exit 2 only for
a file that cannot be read at all.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from integrity.signkit import Team, make_model
from trainguard.cli.main import main
from trainguard.integrity import bundle as bundle_mod
from trainguard.integrity import manifest as manifest_mod
from trainguard.integrity.attestations import attestations_path
from trainguard.integrity.signing import SigningMaterial, sign
from trainguard.integrity.trust import TrustPolicy
from trainguard.integrity.verify import verify


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Team, TrustPolicy]:
    team = Team.create(tmp_path / "keys")
    model = make_model(tmp_path)
    sig = sign(model, key=team.key("alice"))
    return model, sig, team, TrustPolicy.trusting(keys=[team.keys["alice"].public_key()])


def _payload(doc: dict[str, Any]) -> dict[str, Any]:
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))


Mutation = Callable[[dict[str, Any]], Any]

BUNDLE_MUTATIONS: dict[str, Mutation] = {
    "not an object": lambda d: [d],
    "media type": lambda d: {**d, "mediaType": "application/json"},
    "media type wrong type": lambda d: {**d, "mediaType": 3},
    "no envelope": lambda d: {k: v for k, v in d.items() if k != "dsseEnvelope"},
    "envelope is a list": lambda d: {**d, "dsseEnvelope": []},
    "material is a string": lambda d: {**d, "verificationMaterial": "x"},
    "no material": lambda d: {**d, "verificationMaterial": {}},
    "hint is a number": lambda d: {**d, "verificationMaterial": {"publicKey": {"hint": 1}}},
    "payload bad base64": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"],
                                                          "payload": "!!!not base64!!!"}},
    "payload is null": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"], "payload": None}},
    "no signatures": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"], "signatures": []}},
    "signature not object": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"],
                                                            "signatures": ["x"]}},
    "signature bad base64": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"], "signatures": [
        {"sig": "%%%", "keyid": ""}]}},
    "many signatures": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"], "signatures": [
        {"sig": "AA==", "keyid": ""}] * 1000}},
    "keyid is a list": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"], "signatures": [
        {**d["dsseEnvelope"]["signatures"][0], "keyid": []}]}},
    "certificate chain garbage": lambda d: {**d, "verificationMaterial": {
        "x509CertificateChain": {"certificates": [{"rawBytes": "AAAA"}]}}},
    "certificate chain empty": lambda d: {**d, "verificationMaterial": {
        "x509CertificateChain": {"certificates": []}}},
    "certificate chain long": lambda d: {**d, "verificationMaterial": {
        "x509CertificateChain": {"certificates": [{"rawBytes": "AAAA"}] * 100}}},
    "payload type": lambda d: {**d, "dsseEnvelope": {**d["dsseEnvelope"],
                                                    "payloadType": "text/plain"}},
}


@pytest.mark.parametrize("name", sorted(BUNDLE_MUTATIONS))
def test_malformed_bundle_is_a_verification_failure(
        setup: tuple[Path, Path, Team, TrustPolicy], name: str) -> None:
    model, sig, _team, policy = setup
    doc = json.loads(sig.read_bytes())
    sig.write_text(json.dumps(BUNDLE_MUTATIONS[name](doc)))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert {p.rule_id for p in r.problems} & {"TG-SIG-001", "TG-SIG-002", "TG-SIG-003",
                                               "TG-SIG-004"}


@pytest.mark.parametrize("raw", [
    b"", b"{", b"null", b"\xff\xfe garbage", b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000, b'{"mediaType": NaN}', b"\x00" * 1000,
], ids=["empty", "truncated", "null", "not utf-8", "deep lists", "deep objects", "NaN", "nul"])
def test_unparseable_bundle(setup: tuple[Path, Path, Team, TrustPolicy], raw: bytes) -> None:
    model, sig, _team, policy = setup
    sig.write_bytes(raw)
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert [p.rule_id for p in r.problems] == ["TG-SIG-002"]


def test_huge_bundle_is_refused_before_parsing(setup: tuple[Path, Path, Team, TrustPolicy]
                                               ) -> None:
    model, sig, _team, policy = setup
    doc = json.loads(sig.read_bytes())
    doc["dsseEnvelope"]["payload"] = "A" * (100 << 20)  # a 100 MB payload
    sig.write_text(json.dumps(doc))
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert "larger than" in r.problems[0].message


# Statements that are validly signed by a trusted key but hostile in content.
STATEMENT_MUTATIONS: dict[str, Mutation] = {
    "statement is a list": lambda s: [s],
    "wrong _type": lambda s: {**s, "_type": "https://in-toto.io/Statement/v0.1"},
    "wrong predicateType": lambda s: {**s, "predicateType": "x"},
    "two subjects": lambda s: {**s, "subject": s["subject"] * 2},
    "subject digest not hex": lambda s: {**s, "subject": [{"name": "m", "digest": {
        "sha256": "zz"}}]},
    "predicate is a string": lambda s: {**s, "predicate": "p"},
    "resources is an object": lambda s: {**s, "predicate": {**s["predicate"], "resources": {}}},
    "resource digest is a number": lambda s: {**s, "predicate": {
        **s["predicate"], "resources": [{"name": "a", "algorithm": "sha256", "digest": 1}]}},
    "path traversal": lambda s: _with_resources(s, [{"name": "../../etc/passwd",
                                                     "algorithm": "sha256", "digest": "00"}]),
    "absolute path": lambda s: _with_resources(s, [{"name": "/etc/passwd",
                                                    "algorithm": "sha256", "digest": "00"}]),
    "duplicate resource": lambda s: _with_resources(s, s["predicate"]["resources"][:1] * 2),
    "unknown method": lambda s: {**s, "predicate": {**s["predicate"], "serialization": {
        "method": "tensors", "hash_type": "sha256", "allow_symlinks": False}}},
    "unknown hash": lambda s: {**s, "predicate": {**s["predicate"], "serialization": {
        "method": "files", "hash_type": "md5", "allow_symlinks": False}}},
    "shard size negative": lambda s: {**s, "predicate": {**s["predicate"], "serialization": {
        "method": "shards", "hash_type": "sha256", "allow_symlinks": False, "shard_size": -1}}},
    "ignore paths not strings": lambda s: {**s, "predicate": {**s["predicate"], "serialization": {
        **s["predicate"]["serialization"], "ignore_paths": [1]}}},
    "root digest inconsistent": lambda s: {**s, "subject": [{"name": "m", "digest": {
        "sha256": "00" * 32}}]},
}


def _with_resources(s: dict[str, Any], resources: list[dict[str, Any]]) -> dict[str, Any]:
    import hashlib

    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) if isinstance(r["digest"], str)
                                   else b"" for r in resources)).hexdigest()
    return {**s, "subject": [{"name": "m", "digest": {"sha256": root}}],
            "predicate": {**s["predicate"], "resources": resources}}


@pytest.mark.parametrize("name", sorted(STATEMENT_MUTATIONS))
def test_signed_hostile_statement(setup: tuple[Path, Path, Team, TrustPolicy],
                                  name: str) -> None:
    model, sig, team, policy = setup
    st = _payload(json.loads(sig.read_bytes()))
    bad = json.dumps(STATEMENT_MUTATIONS[name](st)).encode()
    sig.write_bytes(SigningMaterial(team.keys["alice"]).sign_payload(bad).to_json())
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert [p.rule_id for p in r.problems] == ["TG-SIG-002"], r.problems


def test_huge_resource_list(setup: tuple[Path, Path, Team, TrustPolicy],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    model, sig, team, policy = setup
    monkeypatch.setattr(manifest_mod, "MAX_RESOURCES", 1000)
    st = _payload(json.loads(sig.read_bytes()))
    many = [{"name": f"f{i}", "algorithm": "sha256", "digest": "00" * 32} for i in range(1001)]
    bad = json.dumps(_with_resources(st, many)).encode()
    sig.write_bytes(SigningMaterial(team.keys["alice"]).sign_payload(bad).to_json())
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert "exceed the limit" in r.problems[0].message


def test_unsigned_hostile_payload_is_not_parsed(setup: tuple[Path, Path, Team, TrustPolicy],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The statement is parsed only after the signature verified."""
    model, sig, _team, policy = setup
    doc = json.loads(sig.read_bytes())
    doc["dsseEnvelope"]["payload"] = base64.b64encode(b"[" * 10_000).decode()
    sig.write_text(json.dumps(doc))
    calls: list[bytes] = []
    real = bundle_mod.parse_json

    def spy(raw: bytes, what: str) -> Any:
        calls.append(raw[:1])
        return real(raw, what)

    monkeypatch.setattr(bundle_mod, "parse_json", spy)
    r = verify(model, sig, policy=policy)
    assert [p.rule_id for p in r.problems] == ["TG-SIG-001"]
    assert b"[" not in calls  # bundles and the attestation file, never this payload


@pytest.mark.parametrize("raw", [b"{", b'{"mediaType": "x"}', json.dumps({
    "mediaType": "application/vnd.trainguard.attestations.v1+json", "bundles": {}}).encode(),
    json.dumps({"mediaType": "application/vnd.trainguard.attestations.v1+json",
                "bundles": [{"mediaType": 1}]}).encode()],
    ids=["truncated", "wrong media type", "bundles not a list", "bad bundle"])
def test_hostile_attestation_file(setup: tuple[Path, Path, Team, TrustPolicy],
                                  raw: bytes) -> None:
    model, sig, _team, policy = setup
    attestations_path(sig).write_bytes(raw)
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert [p.rule_id for p in r.problems] == ["TG-SIG-010"]


def test_cli_hostile_bundle_exits_1_without_traceback(
        setup: tuple[Path, Path, Team, TrustPolicy], capsys: pytest.CaptureFixture[str]) -> None:
    model, sig, team, _policy = setup
    for raw in (b"{", b"[" * 100_000, json.dumps({"mediaType": 1}).encode()):
        sig.write_bytes(raw)
        code = main(["verify", str(model), "-s", str(sig), "--key", str(team.pub("alice"))])
        out = capsys.readouterr()
        assert code == 1
        assert "Traceback" not in out.err + out.out
        assert "TG-SIG-002" in out.out


def test_cli_unreadable_signature_exits_2(setup: tuple[Path, Path, Team, TrustPolicy],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, sig, team, _policy = setup
    code = main(["verify", str(model), "-s", str(sig) + ".missing", "--key",
                 str(team.pub("alice"))])
    out = capsys.readouterr()
    assert code == 2
    assert "Traceback" not in out.err
    assert "cannot read" in out.err
    sig.unlink()
    sig.mkdir()
    assert main(["verify", str(model), "-s", str(sig), "--key", str(team.pub("alice"))]) == 2


def test_keyless_bundle_is_refused_plainly(setup: tuple[Path, Path, Team, TrustPolicy]) -> None:
    model, sig, _team, policy = setup
    doc = json.loads(sig.read_bytes())
    doc["verificationMaterial"]["tlogEntries"] = [{"logIndex": "1"}]
    sig.write_text(json.dumps(doc))
    r = verify(model, sig, policy=policy)
    assert [p.rule_id for p in r.problems] == ["TG-SIG-004"]
    assert "keyless verification is not implemented" in r.problems[0].message
