"""Certificate signing with an internal CA: chain, subject/e-mail pinning, validity, CRLs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from integrity.signkit import CA, NOW, make_model, pem
from trainguard.core.config import load_config
from trainguard.core.errors import UsageError
from trainguard.integrity.certs import CertificateError, CertificateExpired, load_certs
from trainguard.integrity.keys import PrivateKey
from trainguard.integrity.signing import SigningMaterial, sign
from trainguard.integrity.trust import TrustPolicy
from trainguard.integrity.verify import VerifyResult, verify

POLICY = """\
[trust]
ca_roots = ["ca/root.pem"]
crls = {crls}
{extra}

[trust.roles.engineer]

[trust.identities.alice]
subject = "CN=Alice,O=Lab"
roles = ["engineer"]

[trust.identities.bob]
email = "bob@lab.example"
roles = ["engineer"]

[[trust.rules]]
roles = ["engineer"]
"""


class Setup:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ca = CA.create()
        self.root, self.inter = self.ca.write(tmp / "ca")
        self.model = make_model(tmp)
        self.alice_key = PrivateKey.generate()
        self.alice_key.save(tmp / "alice.key")
        self.alice = pem(self.ca.issue("Alice", self.alice_key), tmp / "alice.crt")

    def policy(self, *, crls: list[str] | None = None, extra: str = "") -> TrustPolicy:
        cfg = self.tmp / "trainguard.toml"
        cfg.write_text(POLICY.format(crls=repr(crls or []).replace("'", '"'), extra=extra))
        return TrustPolicy.from_config(load_config(cfg))

    def sign(self, cert: Path | None = None, key: Path | None = None) -> Path:
        return sign(self.model, key=key or self.tmp / "alice.key", cert=cert or self.alice,
                    chain=[self.inter])


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def rules(r: VerifyResult) -> set[str]:
    return {p.rule_id for p in r.problems}


def test_certificate_signature_verifies(s: Setup) -> None:
    r = verify(s.model, s.sign(), policy=s.policy())
    assert r.ok, r.problems
    assert r.signers[0].name == "alice"
    assert r.signers[0].kind == "certificate"
    assert r.signers[0].subject == "CN=Alice,O=Lab"


def test_email_pin(s: Setup) -> None:
    bob_key = PrivateKey.generate()
    bob_key.save(s.tmp / "bob.key")
    bob = pem(s.ca.issue("Bob", bob_key, email="bob@lab.example"), s.tmp / "bob.crt")
    assert verify(s.model, s.sign(bob, s.tmp / "bob.key"), policy=s.policy()).ok
    carol_key = PrivateKey.generate()
    carol_key.save(s.tmp / "carol.key")
    carol = pem(s.ca.issue("Carol", carol_key, email="carol@lab.example"), s.tmp / "carol.crt")
    r = verify(s.model, s.sign(carol, s.tmp / "carol.key"), policy=s.policy())
    assert rules(r) == {"TG-SIG-003"}  # a valid certificate, but not a trusted identity


def test_expired_certificate_is_refused_at_verification(s: Setup) -> None:
    sig = s.sign()
    later = NOW + dt.timedelta(days=400)
    r = verify(s.model, sig, policy=s.policy(), now=later)
    assert rules(r) == {"TG-SIG-005"}
    # with certificate_time = "signing" the signed signing time is what counts
    r = verify(s.model, sig, policy=s.policy(extra='certificate_time = "signing"'), now=later)
    assert r.ok, r.problems


def test_signing_with_an_expired_certificate_is_refused(s: Setup) -> None:
    old = pem(s.ca.issue("Alice", s.alice_key, not_before=NOW - dt.timedelta(days=60),
                         not_after=NOW - dt.timedelta(days=1)), s.tmp / "old.crt")
    with pytest.raises(CertificateExpired):
        s.sign(old)
    future = pem(s.ca.issue("Alice", s.alice_key, not_before=NOW + dt.timedelta(days=1)),
                 s.tmp / "future.crt")
    with pytest.raises(CertificateExpired):
        s.sign(future)


def test_expired_certificate_bundle_made_anyway_is_refused(s: Setup) -> None:
    """The reference validates at the leaf's notBefore, so it accepts this bundle; we do not."""
    old = s.ca.issue("Alice", s.alice_key, not_before=NOW - dt.timedelta(days=60),
                     not_after=NOW - dt.timedelta(days=1))
    from trainguard.integrity.certs import to_der
    from trainguard.integrity.manifest import build_manifest

    material = SigningMaterial(s.alice_key, (to_der(old), to_der(s.ca.inter)))
    sig = s.tmp / "old.sig"
    sig.write_bytes(material.sign_payload(build_manifest(s.model).payload()).to_json())
    assert rules(verify(s.model, sig, policy=s.policy())) == {"TG-SIG-005"}


def test_revoked_certificate_is_refused(s: Setup) -> None:
    sig = s.sign()
    leaf = load_certs(s.alice)[0]
    (s.tmp / "ca" / "crl.pem").write_bytes(s.ca.crl([leaf]))
    r = verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem"]))
    assert rules(r) == {"TG-SIG-006"}
    # a CRL that does not list it changes nothing
    (s.tmp / "ca" / "crl.pem").write_bytes(s.ca.crl([]))
    assert verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem"])).ok


def test_forged_crl_is_ignored_and_require_crl(s: Setup) -> None:
    sig = s.sign()
    other = CA.create()  # same subject names, different keys: its CRL must not count
    leaf = load_certs(s.alice)[0]
    (s.tmp / "ca" / "crl.pem").write_bytes(other.crl([leaf]))
    assert verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem"])).ok
    r = verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem"], extra="require_crl = true"))
    assert rules(r) == {"TG-SIG-004"}
    # every issuer of the chain needs a current CRL: the issuing CA's and the root's
    (s.tmp / "ca" / "crl.pem").write_bytes(s.ca.crl([]))
    r = verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem"], extra="require_crl = true"))
    assert rules(r) == {"TG-SIG-004"}
    assert "Lab Root CA,O=Lab" in r.problems[0].message
    (s.tmp / "ca" / "root-crl.pem").write_bytes(s.ca.crl([], by_root=True))
    assert verify(s.model, sig, policy=s.policy(crls=["ca/crl.pem", "ca/root-crl.pem"],
                                                extra="require_crl = true")).ok


def test_certificate_from_another_ca_is_refused(s: Setup) -> None:
    rogue = CA.create("Lab Root CA")
    _, rogue_inter = rogue.write(s.tmp / "rogue")
    cert = pem(rogue.issue("Alice", s.alice_key), s.tmp / "rogue-alice.crt")
    sig = sign(s.model, key=s.tmp / "alice.key", cert=cert, chain=[rogue_inter])
    assert rules(verify(s.model, sig, policy=s.policy())) == {"TG-SIG-004"}


def test_certificate_that_may_not_sign(s: Setup) -> None:
    cert = pem(s.ca.issue("Alice", s.alice_key, can_sign=False), s.tmp / "nosign.crt")
    with pytest.raises(CertificateError):
        s.sign(cert)


def test_certificate_must_match_key(s: Setup) -> None:
    other = PrivateKey.generate()
    other.save(s.tmp / "other.key")
    with pytest.raises(UsageError):
        s.sign(s.alice, s.tmp / "other.key")


def test_signing_checks_the_chain_when_roots_are_given(s: Setup) -> None:
    rogue = CA.create()
    with pytest.raises(CertificateError):
        sign(s.model, key=s.tmp / "alice.key", cert=s.alice, chain=[s.inter],
             ca_roots=[rogue.root])


def test_no_ca_roots_configured(s: Setup) -> None:
    sig = s.sign()
    pol = TrustPolicy.from_section({"roles": {"e": {}}, "identities": {
        "alice": {"subject": "CN=Alice,O=Lab", "roles": ["e"]}}, "rules": [{"roles": ["e"]}]})
    assert rules(verify(s.model, sig, policy=pol)) == {"TG-SIG-004"}
