"""Signed tree heads (format ``trainguard.tree-head`` v1) and witness co-signatures.

A tree head commits to the whole ledger up to ``size`` entries through the RFC 9162 root hash. The
ledger's key signs the canonical JSON of::

    {"format": "trainguard.tree-head", "key_id": "<sha256 of the ledger key's PEM>",
     "origin": "<ledger id>", "root_hash": "<hex>", "size": N, "timestamp": T, "v": 1}

with ECDSA (integrity/keys.py). A *witness* keeps the last head it saw for each ledger, checks
that a new head extends it (an RFC 9162 §2.1.4 consistency proof), and only then adds its own
signature over::

    {"format": "trainguard.tree-head.cosignature", "head": <the signed body above>,
     "timestamp": T, "v": 1, "witness_key_id": "<hex>"}

A head kept outside the ledger's reach (by a witness, in CI artifacts, in a ticket) is what makes
later tampering detectable: ``Ledger.verify(against_head=head)``.

Example::

    from trainguard.integrity.keys import PrivateKey
    from trainguard.ledger import open_ledger
    key = PrivateKey.generate()
    head = open_ledger("ledger.db").sign_head(key)
    head.save("head.json")
    TreeHead.load("head.json").verify_signature(key.public_key())
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, VerificationError
from trainguard.core.events import canonical_json
from trainguard.integrity.keys import PrivateKey, PublicKey
from trainguard.ledger.merkle import HASH_SIZE, ProofError, verify_consistency

HEAD_FORMAT = "trainguard.tree-head"
COSIG_FORMAT = "trainguard.tree-head.cosignature"
HEAD_VERSION = 1
#: a head file larger than this is not a head (hostile input)
MAX_HEAD_FILE = 1 << 20
MAX_COSIGNATURES = 64
_MAX_SIG_B64 = 512  # a DER ECDSA P-521 signature is < 140 bytes


class HeadError(VerificationError):
    """A tree head is malformed, unsigned where a signature is required, or badly signed."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(value: object, what: str) -> bytes:
    if not isinstance(value, str) or len(value) > _MAX_SIG_B64:
        raise HeadError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise HeadError(f"{what} is not valid base64") from None


def _num(value: object, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value):
        raise HeadError(f"{what} must be a number")
    return float(value)


def _str(value: object, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise HeadError(f"{what} must be a string of at most {limit} characters")
    return value


@dataclass(frozen=True)
class Cosignature:
    """A witness's signature over a head it checked."""

    key_id: str
    timestamp: float
    signature: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"key_id": self.key_id, "timestamp": self.timestamp,
                "signature": _b64(self.signature)}


@dataclass(frozen=True)
class TreeHead:
    """The ledger's state: ``size`` entries with RFC 9162 root ``root_hash``."""

    size: int
    root_hash: bytes
    timestamp: float
    #: the ledger's id (random, fixed when the ledger is created)
    origin: str
    key_id: str | None = None
    signature: bytes | None = None
    cosignatures: tuple[Cosignature, ...] = ()

    @property
    def signed(self) -> bool:
        return self.signature is not None

    def body(self) -> dict[str, Any]:
        """The signed fields."""
        return {"format": HEAD_FORMAT, "v": HEAD_VERSION, "origin": self.origin,
                "size": self.size, "root_hash": self.root_hash.hex(),
                "timestamp": self.timestamp, "key_id": self.key_id}

    def signed_bytes(self) -> bytes:
        return canonical_json(self.body())

    def sign(self, key: PrivateKey) -> TreeHead:
        """This head signed with the ledger's key (drops earlier co-signatures: new body)."""
        pub = key.public_key()
        unsigned = replace(self, key_id=pub.key_id, signature=None, cosignatures=())
        return replace(unsigned, signature=key.sign(unsigned.signed_bytes()))

    def verify_signature(self, key: PublicKey) -> None:
        """Raise unless the ledger's signature verifies under ``key`` (fail closed: unsigned
        heads fail)."""
        if self.signature is None or self.key_id is None:
            raise HeadError("the tree head is not signed")
        if self.key_id != key.key_id:
            raise HeadError(f"the head was signed by key {self.key_id[:16]}, not by "
                            f"{key.key_id[:16]}")
        key.verify(self.signed_bytes(), self.signature)

    def _cosig_bytes(self, witness_key_id: str, timestamp: float) -> bytes:
        return canonical_json({"format": COSIG_FORMAT, "v": HEAD_VERSION, "head": self.body(),
                               "witness_key_id": witness_key_id, "timestamp": timestamp})

    def cosign(self, key: PrivateKey, *, timestamp: float | None = None) -> TreeHead:
        """Add a witness co-signature (replacing an earlier one by the same key)."""
        if self.signature is None:
            raise HeadError("only a signed head can be co-signed")
        pub = key.public_key()
        ts = time.time() if timestamp is None else timestamp
        cs = Cosignature(pub.key_id, ts, key.sign(self._cosig_bytes(pub.key_id, ts)))
        others = tuple(c for c in self.cosignatures if c.key_id != pub.key_id)
        return replace(self, cosignatures=(*others, cs))

    def verify_cosignature(self, key: PublicKey) -> Cosignature:
        """Raise unless ``key`` co-signed this head; return its co-signature."""
        for cs in self.cosignatures:
            if cs.key_id == key.key_id:
                key.verify(self._cosig_bytes(cs.key_id, cs.timestamp), cs.signature)
                return cs
        raise HeadError(f"no co-signature by witness key {key.key_id[:16]}")

    def to_dict(self) -> dict[str, Any]:
        out = self.body()
        out["signature"] = _b64(self.signature) if self.signature is not None else None
        out["cosignatures"] = [c.to_dict() for c in self.cosignatures]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TreeHead:
        """Parse and check the shape of a head (hostile input: every field is validated)."""
        if not isinstance(data, Mapping):
            raise HeadError("a tree head must be a JSON object")
        if data.get("format") != HEAD_FORMAT:
            raise HeadError(f"not a trainguard tree head (format {data.get('format')!r})")
        if data.get("v") != HEAD_VERSION:
            raise HeadError(f"unsupported tree head version {data.get('v')!r}")
        size = data.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size < 1 << 63:
            raise HeadError("size must be a non-negative integer")
        root = data.get("root_hash")
        try:
            root_b = bytes.fromhex(root) if isinstance(root, str) else b""
        except ValueError:
            root_b = b""
        if len(root_b) != HASH_SIZE:
            raise HeadError("root_hash must be 64 hex digits")
        key_id = data.get("key_id")
        sig = data.get("signature")
        cos = data.get("cosignatures") or []
        if not isinstance(cos, list) or len(cos) > MAX_COSIGNATURES:
            raise HeadError(f"cosignatures must be a list of at most {MAX_COSIGNATURES}")
        cosigs = []
        for i, c in enumerate(cos):
            if not isinstance(c, Mapping):
                raise HeadError(f"cosignatures[{i}] must be an object")
            cosigs.append(Cosignature(_str(c.get("key_id"), f"cosignatures[{i}].key_id"),
                                      _num(c.get("timestamp"), f"cosignatures[{i}].timestamp"),
                                      _unb64(c.get("signature"), f"cosignatures[{i}].signature")))
        return cls(size=size, root_hash=root_b, timestamp=_num(data.get("timestamp"), "timestamp"),
                   origin=_str(data.get("origin"), "origin"),
                   key_id=_str(key_id, "key_id") if key_id is not None else None,
                   signature=_unb64(sig, "signature") if sig is not None else None,
                   cosignatures=tuple(cosigs))

    @classmethod
    def from_json(cls, text: str | bytes) -> TreeHead:
        if len(text) > MAX_HEAD_FILE:
            raise HeadError("tree head is too large")
        try:
            return cls.from_dict(json.loads(text))
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            if isinstance(exc, HeadError):
                raise
            raise HeadError(f"tree head is not valid JSON: {exc}") from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> TreeHead:
        """Read a head file (``trainguard ledger head -o FILE``)."""
        p = Path(path)
        try:
            with p.open("rb") as fh:
                data = fh.read(MAX_HEAD_FILE + 1)
        except OSError as exc:
            raise InputError(f"cannot read tree head {path}: {exc.strerror or exc}") from None
        try:
            return cls.from_json(data)
        except HeadError as exc:
            raise HeadError(f"{path}: {exc.message}") from None

    def save(self, path: str | os.PathLike[str]) -> None:
        _atomic_write(Path(path), self.to_json())


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


#: (first, second) -> consistency proof path between the two sizes
ProofSource = Callable[[int, int], Sequence[bytes]]


@dataclass(frozen=True)
class WitnessResult:
    head: TreeHead
    previous: TreeHead | None
    #: "first" (trust on first use), "same" (unchanged) or "extended" (proof checked)
    status: str


class Witness:
    """Keeps the last head seen per ledger (a small JSON file per origin) and co-signs heads
    that extend it. The state directory is the witness's memory: keep it off the ledger's host.
    """

    def __init__(self, key: PrivateKey, state_dir: str | os.PathLike[str]) -> None:
        self.key = key
        self.state_dir = Path(state_dir)

    def _state_path(self, origin: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in origin)[:128]
        return self.state_dir / f"{safe or 'ledger'}.json"

    def last_head(self, origin: str) -> TreeHead | None:
        p = self._state_path(origin)
        return TreeHead.load(p) if p.exists() else None

    def witness(self, head: TreeHead, *, ledger_key: PublicKey | None = None,
                proofs: ProofSource | None = None) -> WitnessResult:
        """Check ``head`` against the last kept one and co-sign it.

        1. The head must be signed; with ``ledger_key`` its signature must verify, and a ledger
           key differing from the one seen before is refused (no silent key rotation).
        2. Against the last kept head: a smaller size is a truncation; the same size must have
           the same root; a larger size needs a consistency proof from ``proofs`` that verifies
           (RFC 9162 §2.1.4.2).
        3. Co-sign and keep the new head.
        """
        if head.signature is None or head.key_id is None:
            raise HeadError("refusing to co-sign an unsigned tree head")
        if ledger_key is not None:
            head.verify_signature(ledger_key)
        prev = self.last_head(head.origin)
        status = "first"
        if prev is not None:
            if prev.key_id != head.key_id:
                raise HeadError(f"ledger {head.origin} signed with key {str(head.key_id)[:16]}, "
                                f"but earlier heads with {str(prev.key_id)[:16]}",
                                remedy="if the ledger key was rotated on purpose, move the "
                                       "witness state file aside after checking why")
            if head.size < prev.size:
                raise ProofError(f"ledger {head.origin} shrank from {prev.size} to {head.size} "
                                 f"entries: truncated or forked")
            if head.size == prev.size:
                verify_consistency(prev.size, head.size, prev.root_hash, head.root_hash, [])
                status = "same"
            else:
                if proofs is None:
                    raise ProofError(f"a consistency proof from {prev.size} to {head.size} is "
                                     f"needed to co-sign", remedy="pass --ledger or --proof")
                path = list(proofs(prev.size, head.size))
                verify_consistency(prev.size, head.size, prev.root_hash, head.root_hash, path)
                status = "extended"
        cosigned = head.cosign(self.key)
        cosigned.save(self._state_path(head.origin))
        return WitnessResult(cosigned, prev, status)
