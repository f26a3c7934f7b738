"""Signing keys: EC P-256 / P-384 (ECDSA) through ``cryptography``, PEM files on disk.

Private keys come from files (optionally encrypted; the password from an environment variable,
never a command-line flag). A public key's id is the hex sha256 of its PEM text, which is also the
OpenSSF model-signing "verification material hint" for key-signed bundles.

Example::

    from trainguard.integrity.keys import PrivateKey
    key = PrivateKey.generate("p256")
    key.save("signing.key", "signing.pub")
    sig = key.sign(b"payload")
    key.public_key().verify(b"payload", sig)      # raises SignatureInvalid if it does not match
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, VerificationError

#: the environment variable that holds a private key's password, when the key is encrypted
PASSWORD_ENV = "TRAINGUARD_KEY_PASSWORD"  # noqa: S105 - a variable name, not a secret

_CURVES = {"p256": "SECP256R1", "p384": "SECP384R1", "p521": "SECP521R1"}
_HASH_FOR_CURVE = {"secp256r1": "SHA256", "secp384r1": "SHA384", "secp521r1": "SHA512"}


class SignatureInvalid(VerificationError):
    """A signature does not verify under the given public key."""

    remedy = "the content or the signature was changed, or it was signed by another key"


def _ec() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec


def _hash_for(curve_name: str) -> Any:
    from cryptography.hazmat.primitives import hashes

    return getattr(hashes, _HASH_FOR_CURVE.get(curve_name, "SHA256"))()


@dataclass(frozen=True)
class PublicKey:
    """An EC public key with its PEM text and id."""

    key: Any  # cryptography EllipticCurvePublicKey
    pem: bytes

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError) as exc:
            raise InputError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, _ec().EllipticCurvePublicKey):
            raise InputError("only EC public keys (P-256, P-384, P-521) are supported")
        return cls(key=key, pem=_public_pem(key))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PublicKey:
        try:
            return cls.from_pem(Path(path).read_bytes())
        except OSError as exc:
            raise InputError(f"cannot read public key {path}: {exc.strerror or exc}") from None

    @property
    def key_id(self) -> str:
        """Hex sha256 of the PEM text (the OMS v1.0 key hint)."""
        return hashlib.sha256(self.pem).hexdigest()

    @property
    def curve(self) -> str:
        return str(self.key.curve.name)

    def verify(self, data: bytes, signature: bytes) -> None:
        """Check an ECDSA (DER) signature over ``data``; raises :class:`SignatureInvalid`."""
        from cryptography.exceptions import InvalidSignature

        try:
            self.key.verify(signature, data, _ec().ECDSA(_hash_for(self.curve)))
        except InvalidSignature:
            raise SignatureInvalid(f"signature does not verify under key {self.key_id[:16]}")\
                from None


def _public_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return bytes(key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo))


@dataclass(frozen=True)
class PrivateKey:
    """An EC private key able to sign."""

    key: Any  # cryptography EllipticCurvePrivateKey

    @classmethod
    def generate(cls, curve: str = "p256") -> PrivateKey:
        ec = _ec()
        try:
            curve_cls = getattr(ec, _CURVES[curve.lower()])
        except KeyError:
            raise InputError(f"unknown curve {curve!r} (use p256, p384 or p521)") from None
        return cls(key=ec.generate_private_key(curve_cls()))

    @classmethod
    def from_pem(cls, pem: bytes, password: bytes | None = None) -> PrivateKey:
        from cryptography.hazmat.primitives import serialization

        try:
            key = serialization.load_pem_private_key(pem, password=password)
        except TypeError as exc:  # encrypted without password, or password for a plain key
            raise InputError(f"cannot load private key: {exc}",
                             remedy=f"set {PASSWORD_ENV} to the key's password") from None
        except ValueError as exc:
            raise InputError(f"not a usable PEM private key: {exc}") from None
        if not isinstance(key, _ec().EllipticCurvePrivateKey):
            raise InputError("only EC private keys (P-256, P-384, P-521) are supported")
        return cls(key=key)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrivateKey:
        """Load a PEM private key (an encrypted one: password from ``$TRAINGUARD_KEY_PASSWORD``)."""
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise InputError(f"cannot read private key {path}: {exc.strerror or exc}") from None
        pw = os.environ.get(PASSWORD_ENV)
        return cls.from_pem(pem, pw.encode() if pw and b"ENCRYPTED" in pem else None)

    def public_key(self) -> PublicKey:
        pub = self.key.public_key()
        return PublicKey(key=pub, pem=_public_pem(pub))

    def sign(self, data: bytes) -> bytes:
        """ECDSA signature (DER) over ``data`` with the curve's matching hash."""
        return bytes(self.key.sign(data, _ec().ECDSA(_hash_for(self.key.curve.name))))

    def save(self, private_path: str | os.PathLike[str],
             public_path: str | os.PathLike[str] | None = None,
             *, password: bytes | None = None) -> None:
        """Write the key as PKCS#8 PEM (mode 0600), and the public key beside it if asked."""
        from cryptography.hazmat.primitives import serialization

        enc: Any = (serialization.BestAvailableEncryption(password) if password
                    else serialization.NoEncryption())
        pem = self.key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8, enc)
        fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        if public_path is not None:
            Path(public_path).write_bytes(self.public_key().pem)
