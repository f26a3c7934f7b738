"""X.509 certificates from an internal CA: chain building, identity, validity, revocation (CRL).

Semantics (docs/signing.md, "Certificates"):

- A signing certificate must chain to one of the configured CA roots (RFC 5280 §6 path
  validation by ``cryptography``'s verifier: CA basic constraints and key usage per the web PKI
  profile for issuers; the leaf is checked here instead: KeyUsage ``digitalSignature`` or
  ExtendedKeyUsage ``codeSigning``, as the reference tool requires).
- Validity: at signing, the certificate must be valid *now* (``trainguard sign`` refuses an
  expired or not-yet-valid certificate). At verification, the certificate is checked at the time
  the trust policy names: ``"verify"`` (default: now, so an expired certificate is refused even
  if it was valid when it signed) or ``"signing"`` (the signing time claimed in the signed
  trainguard statement; the claim is the signer's, so use it only when keys are kept offline).
  The reference tool checks at the leaf's notBefore, which accepts every expired certificate.
- Revocation: every certificate of the chain below the root is looked up in the configured CRLs
  (RFC 5280 §5; a CRL counts only if its issuer signature verifies). A revoked certificate is
  refused whatever its revocation date. With ``require_crl`` each issuer must have a CRL whose
  nextUpdate is in the future.

Example::

    from trainguard.integrity.certs import load_certs, verify_chain
    roots = load_certs(Path("ca/root.pem"))
    ident = verify_chain(leaf_der, [], roots, at=datetime.now(timezone.utc), crls=[])
    print(ident.subject, ident.emails)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, PolicyError, VerificationError


class CertificateError(VerificationError):
    """The certificate chain does not validate (unknown CA, bad signature, unusable leaf)."""

    remedy = "sign with a certificate issued by a CA listed in [trust] ca_roots"


class CertificateExpired(PolicyError):
    """The signing certificate is not valid at the time the policy checks it."""

    remedy = "re-sign with a current certificate (`trainguard sign --cert`)"


class CertificateRevoked(PolicyError):
    """A certificate in the chain is listed in a CRL."""

    remedy = "the signer's certificate was revoked; do not use this artifact, find who signed it"


@dataclass(frozen=True)
class CertIdentity:
    """Who a certificate names, and its lifetime."""

    subject: str  # RFC 4514 string, e.g. "CN=Alice,O=Lab"
    emails: tuple[str, ...]
    issuer: str
    serial: int
    fingerprint: str  # hex sha256 of the DER
    not_before: dt.datetime
    not_after: dt.datetime

    def to_dict(self) -> dict[str, Any]:
        return {"subject": self.subject, "emails": list(self.emails), "issuer": self.issuer,
                "serial": str(self.serial), "fingerprint": self.fingerprint,
                "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat()}


def _x509() -> Any:
    from cryptography import x509

    return x509


def load_certs(path: Path) -> list[Any]:
    """All PEM certificates in a file; InputError if there are none or it cannot be read."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read certificate file {path}: {exc.strerror or exc}") from None
    try:
        certs = list(_x509().load_pem_x509_certificates(data))
    except ValueError as exc:
        raise InputError(f"{path}: not PEM certificates: {exc}") from None
    return certs


def load_crls(paths: Iterable[Path]) -> list[Any]:
    """CRLs from PEM or DER files."""
    x509 = _x509()
    out = []
    for p in paths:
        try:
            data = p.read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read CRL {p}: {exc.strerror or exc}") from None
        try:
            crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
                   else x509.load_der_x509_crl(data))
        except ValueError as exc:
            raise InputError(f"{p}: not a CRL: {exc}") from None
        out.append(crl)
    return out


def parse_der(der: bytes) -> Any:
    try:
        return _x509().load_der_x509_certificate(der)
    except ValueError as exc:
        raise CertificateError(f"certificate in the bundle is not valid DER: {exc}") from None


def identity_of(cert: Any) -> CertIdentity:
    """Subject, e-mail addresses (SAN rfc822Name and the subject's emailAddress), lifetime."""
    x509 = _x509()
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    emails: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        emails += [str(e) for e in san.value.get_values_for_type(x509.RFC822Name)]
    except x509.ExtensionNotFound:
        pass
    emails += [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)]
    return CertIdentity(
        subject=cert.subject.rfc4514_string(), emails=tuple(dict.fromkeys(emails)),
        issuer=cert.issuer.rfc4514_string(), serial=int(cert.serial_number),
        fingerprint=hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest(),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc)


def check_leaf_usage(cert: Any) -> None:
    """The leaf may sign: KeyUsage digitalSignature, or ExtendedKeyUsage codeSigning."""
    x509 = _x509()
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature:
            return
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING in eku:
            return
    except x509.ExtensionNotFound:
        pass
    raise CertificateError(f"certificate {cert.subject.rfc4514_string()} may not sign (no "
                           "digitalSignature key usage or codeSigning extended key usage)")


def check_time(ident: CertIdentity, at: dt.datetime, when: str) -> None:
    if at > ident.not_after:
        raise CertificateExpired(f"certificate {ident.subject} expired at "
                                 f"{ident.not_after.isoformat()} ({when} {at.isoformat()})")
    if at < ident.not_before:
        raise CertificateExpired(f"certificate {ident.subject} is not valid before "
                                 f"{ident.not_before.isoformat()} ({when} {at.isoformat()})")


def verify_chain(leaf_der: bytes, intermediates_der: Sequence[bytes], roots: Sequence[Any], *,
                 at: dt.datetime, crls: Sequence[Any] = (), require_crl: bool = False,
                 when: str = "checked at") -> CertIdentity:
    """Validate leaf -> intermediates -> one of ``roots`` at time ``at``; then revocation.

    Raises CertificateExpired, CertificateRevoked (policy refusals) or CertificateError.
    """
    if not roots:
        raise CertificateError("no CA roots are configured: certificate signatures cannot be "
                               "checked", remedy="set [trust] ca_roots in trainguard.toml")
    leaf = parse_der(leaf_der)
    inter = [parse_der(d) for d in intermediates_der]
    ident = identity_of(leaf)
    check_time(ident, at, when)
    check_leaf_usage(leaf)
    from cryptography.x509.verification import (
        ExtensionPolicy,
        PolicyBuilder,
        Store,
    )
    from cryptography.x509.verification import VerificationError as _VE

    builder = (PolicyBuilder().store(Store(list(roots))).time(at).max_chain_depth(8)
               .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                                   ee_policy=ExtensionPolicy.permit_all()))
    try:
        chain = builder.build_client_verifier().verify(leaf, inter).chain
    except _VE as exc:
        raise CertificateError(f"certificate {ident.subject} does not chain to a trusted CA "
                               f"root: {exc}") from None
    check_revocation(chain, crls, at=at, require_crl=require_crl)
    return ident


def check_revocation(chain: Sequence[Any], crls: Sequence[Any], *, at: dt.datetime,
                     require_crl: bool = False) -> None:
    """Refuse a chain in which a certificate (all but the root) is listed in a valid CRL."""
    for cert, issuer in itertools.pairwise(chain):
        usable = [c for c in crls if c.issuer == issuer.subject
                  and c.is_signature_valid(issuer.public_key())]
        for crl in usable:
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None:
                raise CertificateRevoked(
                    f"certificate {cert.subject.rfc4514_string()} (serial "
                    f"{cert.serial_number:x}) was revoked at "
                    f"{entry.revocation_date_utc.isoformat()} by {issuer.subject.rfc4514_string()}")
        if require_crl:
            fresh = [c for c in usable if c.next_update_utc is None or c.next_update_utc >= at]
            if not fresh:
                raise CertificateError(
                    f"no current CRL from {issuer.subject.rfc4514_string()} "
                    "([trust] require_crl is set)",
                    remedy="add the CA's latest CRL to [trust] crls")


def cert_matches_key(cert_der: bytes, public_pem: bytes) -> bool:
    """True if the certificate certifies this public key."""
    from cryptography.hazmat.primitives import serialization

    pub = parse_der(cert_der).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return bool(pem == public_pem)


def public_pem_of(cert_der: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(parse_der(cert_der).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def to_der(cert: Any) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return bytes(cert.public_bytes(Encoding.DER))
