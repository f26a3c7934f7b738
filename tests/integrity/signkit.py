"""Builders for the signing tests: models, an internal CA, CRLs, trust policies.

Everything is made at test time with the real libraries (cryptography, safetensors, torch).
"""

from __future__ import annotations

import datetime as dt
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from trainguard.integrity.keys import PrivateKey

NOW = dt.datetime.now(dt.timezone.utc)


def safetensors_bytes(tensors: dict[str, list[float]]) -> bytes:
    """A safetensors file of float32 vectors, written byte by byte (deterministic)."""
    header: dict[str, Any] = {}
    data = b""
    for name, values in tensors.items():
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": [len(values)],
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def make_model(root: Path, name: str = "model") -> Path:
    """A small deterministic model directory: safetensors weights, config, tokenizer, nested."""
    d = root / name
    (d / "tokenizer").mkdir(parents=True)
    (d / "model.safetensors").write_bytes(safetensors_bytes(
        {"embed.weight": [0.5, -1.25, 2.0, 3.5], "head.weight": [1.0, 2.0], "head.bias": [0.0]}))
    (d / "config.json").write_text('{"hidden": 4, "layers": 1}\n')
    (d / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    (d / "a-b.txt").write_text("code point order: '-' sorts before '/'\n")
    (d / "a").mkdir()
    (d / "a" / "b.txt").write_text("nested\n")
    return d


def write_key(key: PrivateKey, path: Path) -> tuple[Path, Path]:
    key.save(path, path.with_suffix(".pub"))
    return path, path.with_suffix(".pub")


def _name(cn: str, email: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Lab"),
             x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if email:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, email))
    return x509.Name(attrs)


def _ku(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=sign, content_commitment=False, key_encipherment=False,
                         data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                         crl_sign=ca, encipher_only=False, decipher_only=False)


@dataclass
class CA:
    """An internal CA (root + intermediate) issuing per-person signing certificates."""

    root_key: Any
    root: x509.Certificate
    inter_key: Any
    inter: x509.Certificate
    revoked: list[int] = field(default_factory=list)
    serial: int = 100

    @classmethod
    def create(cls, cn: str = "Lab Root CA") -> CA:
        rk = ec.generate_private_key(ec.SECP256R1())
        root = cls._ca_cert(_name(cn), rk, _name(cn), rk, 1)
        ik = ec.generate_private_key(ec.SECP256R1())
        inter = cls._ca_cert(_name(cn + " Issuing"), ik, root.subject, rk, 2, pathlen=0)
        return cls(rk, root, ik, inter)

    @staticmethod
    def _ca_cert(subject: x509.Name, key: Any, issuer: x509.Name, issuer_key: Any, serial: int,
                 pathlen: int | None = None) -> x509.Certificate:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(key.public_key()).serial_number(serial)
                .not_valid_before(NOW - dt.timedelta(days=365))
                .not_valid_after(NOW + dt.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=pathlen), critical=True)
                .add_extension(_ku(sign=False, ca=True), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    issuer_key.public_key()), critical=False)
                .sign(issuer_key, hashes.SHA256()))

    def issue(self, cn: str, key: PrivateKey, *, email: str | None = None,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None,
              can_sign: bool = True) -> x509.Certificate:
        """A leaf certificate for ``key`` (code signing), valid a year around now by default."""
        self.serial += 1
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.inter.subject)
             .public_key(key.key.public_key()).serial_number(self.serial)
             .not_valid_before(not_before or NOW - dt.timedelta(days=30))
             .not_valid_after(not_after or NOW + dt.timedelta(days=335))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(_ku(sign=can_sign, ca=False), critical=True)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 self.inter_key.public_key()), critical=False))
        if can_sign:
            b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                critical=False)
        if email:
            b = b.add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                                critical=False)
        return b.sign(self.inter_key, hashes.SHA256())

    def crl(self, revoked: list[x509.Certificate], *, by_root: bool = False) -> bytes:
        """A PEM CRL of the issuing CA (or of the root) listing ``revoked``."""
        issuer, key = (self.root, self.root_key) if by_root else (self.inter, self.inter_key)
        b = (x509.CertificateRevocationListBuilder().issuer_name(issuer.subject)
             .last_update(NOW - dt.timedelta(hours=1)).next_update(NOW + dt.timedelta(days=7)))
        for c in revoked:
            b = b.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(c.serial_number)
                .revocation_date(NOW - dt.timedelta(minutes=5)).build())
        return b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def write(self, d: Path) -> tuple[Path, Path]:
        """root.pem and inter.pem under ``d``."""
        d.mkdir(parents=True, exist_ok=True)
        (d / "root.pem").write_bytes(self.root.public_bytes(serialization.Encoding.PEM))
        (d / "inter.pem").write_bytes(self.inter.public_bytes(serialization.Encoding.PEM))
        return d / "root.pem", d / "inter.pem"


def pem(cert: x509.Certificate, path: Path) -> Path:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


POLICY_TOML = """\
[trust]
project = "llm"
{extra}

[trust.roles.engineer]
[trust.roles.reviewer]
[trust.roles.intern]
cosign_by = ["reviewer"]

[trust.identities.alice]
key = "alice.pub"
roles = ["engineer"]

[trust.identities.rita]
key = "rita.pub"
roles = ["reviewer"]

[trust.identities.ivan]
key = "ivan.pub"
roles = ["intern"]

[trust.identities.eve]
key = "eve.pub"
roles = ["engineer"]

[[trust.rules]]
projects = ["llm"]
roles = ["engineer", "intern"]
"""


@dataclass
class Team:
    """Keys of alice (engineer), rita (reviewer), ivan (intern), eve (engineer, other project
    rules in some tests) and mallory (not in the policy), written under ``dir``."""

    dir: Path
    keys: dict[str, PrivateKey]

    @classmethod
    def create(cls, d: Path) -> Team:
        d.mkdir(parents=True, exist_ok=True)
        keys = {}
        for who in ("alice", "rita", "ivan", "eve", "mallory"):
            k = PrivateKey.generate("p256")
            write_key(k, d / f"{who}.key")
            keys[who] = k
        return cls(d, keys)

    def key(self, who: str) -> Path:
        return self.dir / f"{who}.key"

    def pub(self, who: str) -> Path:
        return self.dir / f"{who}.pub"

    def config(self, extra: str = "", text: str | None = None) -> Path:
        p = self.dir / "trainguard.toml"
        p.write_text(text if text is not None else POLICY_TOML.format(extra=extra))
        return p
