"""Golden OMS v1.0 statements and checkpoint-statement tensor manifests.

ECDSA signatures are randomized, so the goldens are the signed *payloads* (byte-exact canonical
JSON) and the checkpoint statement's per-file manifests, not the bundles. To regenerate after an
intended format change, run and review the diff:

    TRAINGUARD_UPDATE_GOLDEN=1 python -m pytest tests/integrity/test_golden_manifest.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from integrity.signkit import make_model
from trainguard.integrity.attestations import AttestationFile, attestations_path
from trainguard.integrity.bundle import Bundle
from trainguard.integrity.keys import PrivateKey
from trainguard.integrity.manifest import Manifest, build_manifest
from trainguard.integrity.signing import sign

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("TRAINGUARD_UPDATE_GOLDEN") == "1"


def check(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_bytes(data)
    assert path.exists(), f"{path} missing; run with TRAINGUARD_UPDATE_GOLDEN=1 to create it"
    assert data == path.read_bytes(), (
        f"{name} differs from the golden file: if the format change is intended, rerun with "
        "TRAINGUARD_UPDATE_GOLDEN=1 and review the diff")


@pytest.mark.parametrize(("name", "kwargs"), [
    ("oms-files-sha256.json", {}),
    ("oms-shards-sha256.json", {"method": "shards", "shard_size": 16}),
    ("oms-files-blake2b.json", {"hash_type": "blake2b"}),
])
def test_oms_payload_is_stable(tmp_path: Path, name: str, kwargs: dict[str, object]) -> None:
    model = make_model(tmp_path)
    sig = sign(model, key=PrivateKey.generate(), **kwargs)  # type: ignore[arg-type]
    payload = Bundle.read(sig).payload
    check(name, payload)
    # the same bytes as building the manifest directly, and they round-trip
    assert build_manifest(model, **kwargs).payload() == payload  # type: ignore[arg-type]
    assert Manifest.from_statement(json.loads(payload)).payload() == payload


def test_resources_are_in_code_point_order(tmp_path: Path) -> None:
    names = [r.name for r in build_manifest(make_model(tmp_path)).resources]
    assert names == sorted(names)
    # '-' (0x2d) sorts before '/' (0x2f): the reference's path-component order would put a/b.txt
    # first
    assert names.index("a-b.txt") < names.index("a/b.txt")


def test_checkpoint_statement_files_are_stable(tmp_path: Path) -> None:
    model = make_model(tmp_path)
    sig = sign(model, key=PrivateKey.generate(), run={"run_id": "golden", "step": 1})
    att = AttestationFile.read(attestations_path(sig))
    st = json.loads(att.bundles[0].payload)
    assert st["predicateType"] == "https://trainguard.dev/checkpoint/v1"
    assert st["subject"] == json.loads(Bundle.read(sig).payload)["subject"]
    pred = st["predicate"]
    assert pred["run"]["run_id"] == "golden"
    assert pred["run"]["step"] == 1
    assert set(pred["producer"]) >= {"user", "host", "pid", "job", "git_commit", "signer"}
    check("checkpoint-files.json",
          json.dumps(pred["files"], indent=1, sort_keys=True).encode() + b"\n")


def seeded_key(seed: bytes) -> PrivateKey:
    """A deterministic P-256 key (test data only): the scalar is sha256(seed) mod n."""
    import hashlib

    from cryptography.hazmat.primitives.asymmetric import ec

    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    scalar = int.from_bytes(hashlib.sha256(seed).digest(), "big") % n
    return PrivateKey(ec.derive_private_key(scalar, ec.SECP256R1()))


def test_signatures_from_this_release_keep_verifying(tmp_path: Path) -> None:
    """A bundle and attestation file made once (committed) must verify in every later release."""
    import shutil

    from trainguard.integrity.trust import TrustPolicy
    from trainguard.integrity.verify import verify

    key = seeded_key(b"trainguard golden signer v1")
    model = make_model(tmp_path)
    sig = GOLDEN / "signed-v1.sig"
    if UPDATE:
        out = sign(model, key=key, run={"run_id": "golden", "step": 1})
        shutil.copyfile(out, sig)
        shutil.copyfile(attestations_path(out), attestations_path(sig))
    assert sig.exists(), f"{sig} missing; run with TRAINGUARD_UPDATE_GOLDEN=1 to create it"
    r = verify(model, sig, policy=TrustPolicy.trusting(keys=[key.public_key()]))
    assert r.ok, r.problems
    assert r.checkpoint is not None
    assert r.checkpoint["run"]["run_id"] == "golden"
