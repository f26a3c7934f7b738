"""Interoperability with the OpenSSF reference signer, ``model-signing`` (OMS v1.0), both ways.

Bundles trainguard writes verify with model-signing's library and CLI (key, certificate, shards,
co-signatures); bundles model-signing writes verify with trainguard. model-signing 1.1.1 imports
pyOpenSSL without declaring it; the test environment installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from integrity.signkit import CA, Team, make_model, pem
from trainguard.integrity.attestations import AttestationFile
from trainguard.integrity.bundle import Bundle
from trainguard.integrity.keys import PrivateKey
from trainguard.integrity.signing import cosign, sign
from trainguard.integrity.trust import TrustPolicy
from trainguard.integrity.verify import verify

pytest.importorskip("OpenSSL")
model_signing = pytest.importorskip("model_signing")

CLI = [sys.executable, "-m", "model_signing"]


def ms(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=120,
                          check=False)


@pytest.fixture
def team(tmp_path: Path) -> Team:
    return Team.create(tmp_path / "keys")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path)


# --- trainguard -> model-signing ---------------------------------------------------------------
def test_our_key_bundle_verifies_with_reference_library_and_cli(model: Path, team: Team) -> None:
    sig = sign(model, key=team.key("alice"))
    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=team.pub("alice")).verify(model, sig)
    done = ms("verify", "key", model, "--signature", sig, "--public_key", team.pub("alice"))
    assert done.returncode == 0, done.stderr
    # and the reference notices tampering of our bundle's model too
    (model / "config.json").write_text("{}\n")
    done = ms("verify", "key", model, "--signature", sig, "--public_key", team.pub("alice"))
    assert done.returncode == 1
    assert "config.json" in done.stderr


def test_our_shards_bundle_verifies_with_reference_library(model: Path, team: Team) -> None:
    sig = sign(model, key=team.key("alice"), method="shards", shard_size=8)
    # the reference library reads the hashing settings from the signature (the CLI does not)
    model_signing.verifying.Config().use_elliptic_key_verifier(
        public_key=team.pub("alice")).verify(model, sig)


def test_our_blake2b_bundle_matches_the_reference_format(model: Path, team: Team,
                                                          tmp_path: Path) -> None:
    ours = sign(model, key=team.key("alice"), hash_type="blake2b")
    ref = tmp_path / "ref-blake2.sig"
    (model_signing.signing.Config().use_elliptic_key_signer(private_key=team.key("alice"))
     .set_hashing_config(model_signing.hashing.Config().use_file_serialization(
         hashing_algorithm="blake2")).sign(model, ref))
    a = json.loads(Bundle.read(ours).payload)["predicate"]
    b = json.loads(Bundle.read(ref).payload)["predicate"]
    assert a["serialization"]["hash_type"] == b["serialization"]["hash_type"] == "blake2b"
    assert sorted(a["resources"], key=lambda r: r["name"]) == sorted(
        b["resources"], key=lambda r: r["name"])
    # Reference defect (model-signing 1.1.1): it writes hash_type "blake2b" but its verifier
    # only knows "blake2", so it cannot verify blake2 bundles at all, not even its own.
    with pytest.raises(ValueError, match="blake2b"):
        model_signing.verifying.Config().use_elliptic_key_verifier(
            public_key=team.pub("alice")).verify(model, ref)


def test_our_certificate_bundle_verifies_with_reference(model: Path, team: Team,
                                                        tmp_path: Path) -> None:
    ca = CA.create()
    root, inter = ca.write(tmp_path / "ca")
    cert = pem(ca.issue("Alice", team.keys["alice"]), tmp_path / "alice.crt")
    sig = sign(model, key=team.key("alice"), cert=cert, chain=[inter])
    assert len(Bundle.read(sig).cert_chain) == 2
    done = ms("verify", "certificate", model, "--signature", sig, "--certificate_chain", root)
    assert done.returncode == 0, done.stderr


def test_our_cosignature_is_itself_an_oms_bundle(model: Path, team: Team, tmp_path: Path) -> None:
    sig = sign(model, key=team.key("ivan"))
    att = cosign(model, sig, team.key("rita"))
    co = AttestationFile.read(att).bundles[-1]
    extracted = tmp_path / "rita.sig"
    extracted.write_bytes(co.to_json())
    done = ms("verify", "key", model, "--signature", extracted, "--public_key", team.pub("rita"))
    assert done.returncode == 0, done.stderr


# --- model-signing -> trainguard ---------------------------------------------------------------
def test_reference_key_bundle_verifies_with_ours(model: Path, team: Team, tmp_path: Path) -> None:
    sig = tmp_path / "ref.sig"
    done = ms("sign", "key", model, "--private_key", team.key("alice"), "--signature", sig)
    assert done.returncode == 0, done.stderr
    policy = TrustPolicy.trusting(keys=[team.keys["alice"].public_key()])
    r = verify(model, sig, policy=policy)
    assert r.ok, r.problems
    assert r.checkpoint is None  # no trainguard statement beside a reference bundle
    from trainguard.cli.main import main

    assert main(["verify", str(model), "-s", str(sig), "--key", str(team.pub("alice"))]) == 0
    # its signer-chosen git ignore paths are the ones our default policy accepts
    ser = json.loads(Bundle.read(sig).payload)["predicate"]["serialization"]
    assert set(ser["ignore_paths"]) == {".git", ".gitattributes", ".github", ".gitignore"}
    (model / "tokenizer" / "vocab.txt").write_text("z\n")
    r = verify(model, sig, policy=policy)
    assert not r.ok
    assert r.changes[0]["file"] == "tokenizer/vocab.txt"
    # and another key does not verify it
    other = TrustPolicy.trusting(keys=[PrivateKey.generate().public_key()])
    assert not verify(model, sig, policy=other).ok


def test_reference_signature_inside_the_model_dir(model: Path, team: Team) -> None:
    sig = model / "model.sig"
    done = ms("sign", "key", model, "--private_key", team.key("alice"), "--signature", sig)
    assert done.returncode == 0, done.stderr
    policy = TrustPolicy.trusting(keys=[team.keys["alice"].public_key()])
    assert verify(model, sig, policy=policy).ok


def test_reference_shards_and_blake2_bundles_verify_with_ours(model: Path, team: Team,
                                                              tmp_path: Path) -> None:
    (model / "empty.txt").write_bytes(b"")  # no shard: outside what a shards signature covers
    policy = TrustPolicy.trusting(keys=[team.keys["alice"].public_key()])
    for name, hashing in [
        ("shards", model_signing.hashing.Config().use_shard_serialization(shard_size=8)),
        ("blake2", model_signing.hashing.Config().use_file_serialization(
            hashing_algorithm="blake2")),
    ]:
        sig = tmp_path / f"{name}.sig"
        (model_signing.signing.Config().use_elliptic_key_signer(private_key=team.key("alice"))
         .set_hashing_config(hashing).sign(model, sig))
        r = verify(model, sig, policy=policy)
        assert r.ok, (name, r.problems)


def test_reference_certificate_bundle_verifies_with_ours(model: Path, team: Team,
                                                         tmp_path: Path) -> None:
    ca = CA.create()
    root, inter = ca.write(tmp_path / "ca")
    cert = pem(ca.issue("Alice", team.keys["alice"], email="alice@lab.example"),
               tmp_path / "alice.crt")
    sig = tmp_path / "ref-cert.sig"
    done = ms("sign", "certificate", model, "--private_key", team.key("alice"),
              "--signing_certificate", cert, "--certificate_chain", inter, "--signature", sig)
    assert done.returncode == 0, done.stderr
    from trainguard.integrity.certs import load_certs

    policy = TrustPolicy.trusting(ca_roots=load_certs(root), emails=["alice@lab.example"])
    r = verify(model, sig, policy=policy)
    assert r.ok, r.problems
    assert r.signers[0].subject == "CN=Alice,O=Lab"
    wrong = TrustPolicy.trusting(ca_roots=load_certs(root), subjects=["CN=Bob,O=Lab"])
    assert not verify(model, sig, policy=wrong).ok


def test_reference_cli_verifies_a_copy_signed_by_the_trainguard_cli(model: Path, team: Team,
                                                                    tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(model, copy)
    from trainguard.cli.main import main

    assert main(["sign", str(copy), "--key", str(team.key("alice"))]) == 0
    done = ms("verify", "key", copy, "--signature", tmp_path / "copy.sig", "--public_key",
              team.pub("alice"))
    assert done.returncode == 0, done.stderr
