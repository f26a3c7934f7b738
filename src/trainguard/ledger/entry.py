"""Ledger entries: the bytes that become RFC 9162 leaves (format ``trainguard.ledger.entry`` v1).

An entry is the canonical JSON (:func:`trainguard.core.events.canonical_json`: sorted keys, no
whitespace, UTF-8) of::

    {"appended_at": 1764560000.123,       # seconds since the epoch, when the ledger stored it
     "event": {...},                      # Event.to_dict(): schema trainguard.event
     "index": 41,                         # its leaf index, 0-based, no gaps
     "prev": "<64 hex>",                  # leaf hash of entry index-1; 64 zeros for entry 0
     "v": 1}                              # this format's version

and its leaf hash is ``SHA-256(0x00 || entry)`` (RFC 9162 §2.1.1). The index inside the entry
makes a row moved to another position detectable without the tree; the ``prev`` link (a hash
chain) makes a deleted or inserted row detectable from the rows alone. Neither replaces a kept tree
head: someone who rewrites every entry and every link consistently is caught only by the root
(docs/ledger.md, "What tamper-evidence guarantees").

The format is versioned: readers accept the versions in :data:`SUPPORTED_VERSIONS` forever.
"""

from __future__ import annotations

import binascii
import functools
import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

from trainguard.core.events import EVENT_SCHEMA, EVENT_SCHEMA_VERSION, Event, canonical_json
from trainguard.core.identity import Identity
from trainguard.ledger.merkle import HASH_SIZE, LEAF_PREFIX, leaf_hash

ENTRY_FORMAT = "trainguard.ledger.entry"
ENTRY_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})
#: the ``prev`` link of entry 0
GENESIS_PREV = bytes(HASH_SIZE)
#: an entry larger than this is refused (a hostile client must not grow the database unbounded)
MAX_ENTRY_BYTES = 1 << 20


_sha256 = hashlib.sha256
#: json's C scanner (what json.loads ends in), used directly by parse_entry
_SCAN: Any = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


class EntryFormatError(ValueError):
    """Stored bytes are not a well-formed ledger entry."""


@dataclass(frozen=True)
class LedgerEntry:
    """One entry as read back from a ledger."""

    index: int
    event: Event
    #: RFC 9162 leaf hash of :attr:`raw`
    leaf_hash: bytes
    #: when the ledger stored it (seconds since the epoch)
    appended_at: float
    #: leaf hash of the previous entry (the hash chain)
    prev: bytes
    #: the exact bytes that were hashed
    raw: bytes

    def to_dict(self) -> dict[str, Any]:
        """JSON form for ``ledger show -f json`` and ``GET /v1/entries``."""
        return {"index": self.index, "leaf_hash": self.leaf_hash.hex(),
                "appended_at": self.appended_at, "prev": self.prev.hex(),
                "event": self.event.to_dict()}


def _c_encoder() -> Any:
    # The C encoder json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
    # allow_nan=False) uses, built once (as canonical_json does); no cycle markers: a cycle
    # raises RecursionError, and encode_event then takes canonical_json's path, which reports it.
    enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython always has _json
        return lambda value, _level: (enc.encode(value),)
    return make(None, enc.default, encode_basestring, None, ":", ",", True, False, False)


_ENCODE = _c_encoder()
#: the keys of Event.to_dict() the fast path below writes, in canonical (sorted) order
_EVENT_KEYS = ("details", "identity", "kind", "rule_id", "schema", "schema_version", "severity",
               "subject", "time")
_SCHEMA_VERSION_JSON = encode_basestring(EVENT_SCHEMA_VERSION)
#: (identity, its canonical JSON) of the last identity encoded: compared by object identity,
#: which is cheaper than hashing an 11-field dataclass for the lru_cache below
_LAST_IDENTITY: tuple[Identity, str] | None = None


@functools.lru_cache(maxsize=256)
def _identity_json_cached(identity: Identity) -> str:
    return "".join(_ENCODE(identity.to_dict(), 0))


def _identity_json(identity: Identity) -> str:
    # A process emits thousands of events under one identity: encode it once.
    global _LAST_IDENTITY  # noqa: PLW0603 - a one-slot cache, replaced atomically
    last = _LAST_IDENTITY
    if last is not None and last[0] is identity:
        return last[1]
    value = _identity_json_cached(identity)
    _LAST_IDENTITY = (identity, value)
    return value


def _fast_path_ok() -> bool:
    # If Event.to_dict() ever gains a field, fall back to the generic encoding rather than drop
    # it (the event schema only grows).
    sample = Event(kind="k", subject="s", identity=Identity(user="u", host="h", pid=1))
    return tuple(sorted(sample.to_dict())) == _EVENT_KEYS and EVENT_SCHEMA == "trainguard.event"


_FAST = _fast_path_ok()


def encode_event(event: Event) -> bytes:
    """Canonical JSON of the event: the same bytes as ``canonical_json(event.to_dict())``
    (tested), assembled from parts with the identity encoded once per process. Done before
    taking the writer lock: it is the costly part of an append."""
    ident = event.identity
    if not _FAST or ident is None or type(ident) is not Identity:
        return canonical_json(event.to_dict())
    try:
        ident_json = _identity_json(ident)
        details = "".join(_ENCODE(dict(event.details), 0))
    except (TypeError, RecursionError):  # unhashable identity field, cycle: the generic path
        return canonical_json(event.to_dict())
    t = event.time
    time_json = float.__repr__(t) if type(t) is float and math.isfinite(t) else \
        "".join(_ENCODE(t, 0))
    sev = event.severity
    return "".join((
        '{"details":', details,
        ',"identity":', ident_json,
        ',"kind":', encode_basestring(event.kind),
        ',"rule_id":', "null" if event.rule_id is None else encode_basestring(event.rule_id),
        ',"schema":"trainguard.event","schema_version":', _SCHEMA_VERSION_JSON,
        ',"severity":', "null" if sev is None else encode_basestring(sev.label),
        ',"subject":', encode_basestring(event.subject),
        ',"time":', time_json, "}",
    )).encode("utf-8")


def _float_json(value: float) -> bytes:
    value = float(value)
    if not math.isfinite(value):
        raise EntryFormatError("appended_at must be finite")
    return float.__repr__(value).encode("ascii")  # what json.dumps writes for a finite float


def build_entry(index: int, prev: bytes, appended_at: float, event_json: bytes) -> bytes:
    """The entry bytes for an already-encoded event.

    Assembled by concatenation (keys in canonical order) rather than re-encoding the event: the
    result is byte-identical to ``canonical_json`` of the decoded entry (tested).
    """
    return build_entries(index, prev, appended_at, [event_json])[0][0]


def build_entries(start: int, prev: bytes, appended_at: float,
                  event_jsons: list[bytes]) -> list[tuple[bytes, bytes]]:
    """(entry bytes, leaf hash) for consecutive entries from ``start``, each linked to the one
    before by its ``prev`` field (the writer's hot loop: one prefix, no re-encoding)."""
    head = b'{"appended_at":' + _float_json(appended_at) + b',"event":'
    version = b'","v":' + str(ENTRY_VERSION).encode("ascii") + b"}"
    out: list[tuple[bytes, bytes]] = []
    join, sha, hexlify = b"".join, _sha256, binascii.hexlify
    for index, event_json in enumerate(event_jsons, start):
        if len(event_json) > MAX_ENTRY_BYTES:
            raise EntryFormatError(f"event is {len(event_json)} bytes; the limit is "
                                   f"{MAX_ENTRY_BYTES}")
        raw = join((head, event_json, b',"index":%d,"prev":"' % index, hexlify(prev), version))
        prev = sha(LEAF_PREFIX + raw).digest()  # leaf_hash(raw), RFC 9162 §2.1.1, inlined
        out.append((raw, prev))
    return out


def parse_entry(raw: bytes) -> dict[str, Any]:
    """Decode and check the shape of entry bytes; raises :class:`EntryFormatError`."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EntryFormatError(f"not JSON: {exc}") from None
    try:
        # The decoder json.loads uses, minus its Python wrappers (whitespace regexes): entries
        # are canonical, without surrounding whitespace. Anything else (whitespace, trailing
        # data, an error) goes through json.loads, which accepts or rejects as it always did.
        data, end = _SCAN(text, 0)
        if end != len(text):
            raise ValueError("trailing data")
    except (ValueError, StopIteration, RecursionError):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise EntryFormatError(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise EntryFormatError("not a JSON object")
    if data.get("v") not in SUPPORTED_VERSIONS:
        raise EntryFormatError(f"unsupported entry version {data.get('v')!r}")
    index = data.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise EntryFormatError("index must be a non-negative integer")
    prev = data.get("prev")
    if not isinstance(prev, str) or len(prev) != 2 * HASH_SIZE:
        raise EntryFormatError("prev must be 64 hex digits")
    try:
        bytes.fromhex(prev)
    except ValueError:
        raise EntryFormatError("prev must be 64 hex digits") from None
    at = data.get("appended_at")
    if not isinstance(at, (int, float)) or isinstance(at, bool):
        raise EntryFormatError("appended_at must be a number")
    if not isinstance(data.get("event"), dict):
        raise EntryFormatError("event must be an object")
    return data


def decode_entry(raw: bytes, *, stored_leaf_hash: bytes | None = None) -> LedgerEntry:
    """A :class:`LedgerEntry` from entry bytes (the leaf hash is recomputed unless given)."""
    data = parse_entry(raw)
    try:
        event = Event.from_dict(data["event"])
    except (ValueError, TypeError) as exc:
        raise EntryFormatError(f"event: {exc}") from None
    return LedgerEntry(index=data["index"], event=event,
                       leaf_hash=stored_leaf_hash if stored_leaf_hash is not None
                       else leaf_hash(raw),
                       appended_at=float(data["appended_at"]), prev=bytes.fromhex(data["prev"]),
                       raw=bytes(raw))


def query_columns(event: Event) -> tuple[str, str, str | None, float]:
    """(kind, subject, job, time): the indexed columns a store keeps beside the entry bytes."""
    job = event.identity.job if event.identity is not None else None
    return event.kind, event.subject, job if isinstance(job, str) else None, float(event.time)


def columns_from_event_dict(event: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """The same columns read from a decoded entry, normalised the way a store indexes them (the
    audit compares the two)."""
    ident = event.get("identity")
    job = ident.get("job") if isinstance(ident, dict) else None
    t = event.get("time")
    return (event.get("kind"), event.get("subject"), job if isinstance(job, str) else None,
            float(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else 0.0)
