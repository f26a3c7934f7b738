"""Sigstore bundle v0.3 (JSON) around a DSSE envelope: reading, writing, PAE.

Only the parts OMS v1.0 offline signing uses: ``verificationMaterial`` is either a public-key hint
(hex sha256 of the key's PEM) or an X.509 certificate chain (leaf first, DER, base64);
``dsseEnvelope`` carries the base64 payload, its type and the signatures; ``tlogEntries`` is
empty. Reading is strict and bounded: hostile bundles (huge, deeply nested, wrong types, bad
base64) raise :class:`MalformedBundle`, a :class:`VerificationError` (a signature that cannot be
read is a signature that does not verify).

Example::

    from trainguard.integrity.bundle import Bundle, pae
    b = Bundle.read(Path("model.sig"))
    signed_bytes = pae(b.payload_type, b.payload)     # what the signature covers
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, VerificationError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: earlier bundle versions with the same JSON shape for what offline signing uses
_ACCEPTED_MEDIA_TYPES = (BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3")
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: a bundle file larger than this is refused before parsing (a manifest of ~300k resources)
MAX_BUNDLE_BYTES = 64 << 20
MAX_SIGNATURES = 16
MAX_CHAIN = 10


class MalformedBundle(VerificationError):
    """The signature file is not a well-formed Sigstore bundle v0.3 with a DSSE envelope."""

    remedy = "the signature file is corrupt or not an OMS v1.0 bundle; re-sign the model"


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 Pre-Authentication Encoding (secure-systems-lab/dsse protocol.md):
    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`` with decimal ASCII lengths (in bytes)."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def b64decode(text: Any, what: str) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, as protobuf JSON accepts both)."""
    if not isinstance(text, str):
        raise MalformedBundle(f"{what} must be a base64 string")
    try:
        if "-" in text or "_" in text:
            return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MalformedBundle(f"{what} is not valid base64") from None


def parse_json(raw: bytes, what: str) -> Any:
    """Bounded JSON parsing for untrusted documents: size first; hostile nesting ends in the
    decoder's RecursionError (CPython's json checks its recursion depth), caught here."""
    if len(raw) > MAX_BUNDLE_BYTES:
        raise MalformedBundle(f"{what} is {len(raw)} bytes, over the limit of {MAX_BUNDLE_BYTES}")
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedBundle(f"{what} is not valid JSON: {str(exc)[:200]}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


@dataclass(frozen=True)
class Signature:
    """One DSSE signature: DER ECDSA bytes and the optional key id."""

    sig: bytes
    keyid: str = ""


@dataclass(frozen=True)
class Bundle:
    """A parsed Sigstore bundle v0.3 holding one DSSE envelope."""

    payload: bytes
    signatures: tuple[Signature, ...]
    payload_type: str = PAYLOAD_TYPE
    #: hex sha256 of the signer's public key PEM (key signing), or None
    key_hint: str | None = None
    #: DER certificates, leaf first (certificate signing); empty for key signing
    cert_chain: tuple[bytes, ...] = ()
    media_type: str = BUNDLE_MEDIA_TYPE
    #: transparency-log entries (Sigstore keyless bundles have them; offline signing has none)
    tlog_entries: int = 0

    def signed_bytes(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        if self.cert_chain:
            vm: dict[str, Any] = {"x509CertificateChain": {"certificates": [
                {"rawBytes": base64.b64encode(c).decode()} for c in self.cert_chain]}}
        else:
            vm = {"publicKey": {"hint": self.key_hint or ""}}
        vm["tlogEntries"] = []
        return {
            "mediaType": self.media_type,
            "verificationMaterial": vm,
            "dsseEnvelope": {
                "payload": base64.b64encode(self.payload).decode(),
                "payloadType": self.payload_type,
                "signatures": [{"sig": base64.b64encode(s.sig).decode(), "keyid": s.keyid}
                               for s in self.signatures],
            },
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode("utf-8")

    def statement(self) -> Any:
        """The payload parsed as JSON (bounded); MalformedBundle if it is not JSON."""
        if self.payload_type != PAYLOAD_TYPE:
            raise MalformedBundle(f"DSSE payloadType {self.payload_type!r:.80} is not "
                                  f"{PAYLOAD_TYPE}")
        return parse_json(self.payload, "DSSE payload")

    @classmethod
    def from_dict(cls, data: Any) -> Bundle:
        """Validate a parsed bundle; MalformedBundle names the first thing that is wrong."""
        if not isinstance(data, dict):
            raise MalformedBundle("bundle must be a JSON object")
        media = data.get("mediaType")
        if media not in _ACCEPTED_MEDIA_TYPES:
            raise MalformedBundle(f"mediaType {media!r:.80} is not {BUNDLE_MEDIA_TYPE}")
        vm = data.get("verificationMaterial")
        env = data.get("dsseEnvelope")
        if not isinstance(vm, dict):
            raise MalformedBundle("verificationMaterial must be an object")
        if not isinstance(env, dict):
            raise MalformedBundle("bundle has no dsseEnvelope object (message signatures are "
                                  "not OMS v1.0)")
        hint: str | None = None
        chain: list[bytes] = []
        if "x509CertificateChain" in vm:
            xc = vm["x509CertificateChain"]
            certs = xc.get("certificates") if isinstance(xc, dict) else None
            if not isinstance(certs, list) or not certs or len(certs) > MAX_CHAIN:
                raise MalformedBundle(f"x509CertificateChain.certificates must list 1 to "
                                      f"{MAX_CHAIN} certificates")
            for i, c in enumerate(certs):
                if not isinstance(c, dict):
                    raise MalformedBundle(f"certificates[{i}] must be an object")
                chain.append(b64decode(c.get("rawBytes"), f"certificates[{i}].rawBytes"))
        elif "certificate" in vm:  # bundle v0.3 single leaf certificate
            c = vm["certificate"]
            if not isinstance(c, dict):
                raise MalformedBundle("verificationMaterial.certificate must be an object")
            chain.append(b64decode(c.get("rawBytes"), "certificate.rawBytes"))
        elif "publicKey" in vm:
            pk = vm["publicKey"]
            if not isinstance(pk, dict):
                raise MalformedBundle("verificationMaterial.publicKey must be an object")
            h = pk.get("hint")
            if h is not None and not isinstance(h, str):
                raise MalformedBundle("publicKey.hint must be a string")
            hint = h or None
        else:
            raise MalformedBundle("verificationMaterial has no publicKey or certificate chain")
        tlog = vm.get("tlogEntries", [])
        if not isinstance(tlog, list):
            raise MalformedBundle("verificationMaterial.tlogEntries must be a list")
        payload = b64decode(env.get("payload"), "dsseEnvelope.payload")
        ptype = env.get("payloadType")
        if not isinstance(ptype, str):
            raise MalformedBundle("dsseEnvelope.payloadType must be a string")
        sigs = env.get("signatures")
        if not isinstance(sigs, list) or not sigs or len(sigs) > MAX_SIGNATURES:
            raise MalformedBundle(f"dsseEnvelope.signatures must list 1 to {MAX_SIGNATURES} "
                                  "signatures")
        parsed = []
        for i, s in enumerate(sigs):
            if not isinstance(s, dict):
                raise MalformedBundle(f"signatures[{i}] must be an object")
            keyid = s.get("keyid", "")
            if not isinstance(keyid, str):
                raise MalformedBundle(f"signatures[{i}].keyid must be a string")
            parsed.append(Signature(b64decode(s.get("sig"), f"signatures[{i}].sig"), keyid))
        return cls(payload=payload, signatures=tuple(parsed), payload_type=ptype,
                   key_hint=hint, cert_chain=tuple(chain), media_type=media,
                   tlog_entries=len(tlog))

    @classmethod
    def from_json(cls, raw: bytes) -> Bundle:
        return cls.from_dict(parse_json(raw, "signature bundle"))

    @classmethod
    def read(cls, path: Path) -> Bundle:
        """Read a bundle file; InputError if it cannot be read, MalformedBundle if it is bad."""
        return cls.from_json(read_limited(path, "signature"))


def read_limited(path: Path, what: str) -> bytes:
    """Read at most MAX_BUNDLE_BYTES (+1 to detect more) from a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        import stat as _stat

        if not _stat.S_ISREG(st.st_mode):
            raise InputError(f"{what} {path} is not a regular file")
        chunks = []
        left = MAX_BUNDLE_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise InputError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > MAX_BUNDLE_BYTES:
        raise MalformedBundle(f"{what} {path} is larger than {MAX_BUNDLE_BYTES} bytes")
    return data
