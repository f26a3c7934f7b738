"""The ledger interface shared by every store (SQLite, PostgreSQL, HTTP client).

A store implements a handful of primitives (append rows under its writer lock, read rows in index
order, filter rows); :class:`Ledger` builds everything else on them the same way for every store:
entries, queries, tree heads, inclusion and consistency proofs (from an in-memory
:class:`~trainguard.ledger.merkle.MerkleTree` synchronised from stored leaf hashes), and the
audit (:meth:`Ledger.verify`), which recomputes everything from the entry bytes and trusts no
stored hash.
"""

from __future__ import annotations

import abc
import hashlib
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from trainguard.core.errors import TamperError, UsageError
from trainguard.core.events import Event
from trainguard.integrity.keys import PrivateKey, PublicKey
from trainguard.ledger.entry import (
    GENESIS_PREV,
    EntryFormatError,
    LedgerEntry,
    build_entries,
    columns_from_event_dict,
    decode_entry,
    encode_event,
    parse_entry,
    query_columns,
)
from trainguard.ledger.heads import TreeHead
from trainguard.ledger.merkle import (
    LEAF_PREFIX,
    ConsistencyProof,
    InclusionProof,
    MerkleTree,
)

#: rows read per round trip when iterating
PAGE = 2000
#: rows per round trip in the audit (fewer, larger fetches)
AUDIT_PAGE = 10_000
#: at most this many differences are listed in a TamperError (the count is always given)
MAX_CHANGES = 50

#: a stored row: (index, entry bytes, stored leaf hash)
Row = tuple[int, bytes, bytes]
#: a row ready to insert: (index, leaf hash, entry, kind, subject, job, time, appended_at)
NewRow = tuple[int, bytes, bytes, str, str, "str | None", float, float]
#: a row as audited: Row + the indexed columns (kind, subject, job, time)
AuditRow = tuple[int, bytes, bytes, Any, Any, Any, Any]


def chain_rows(start: int, prev: bytes, appended_at: float,
               encoded: Sequence[tuple[bytes, tuple[str, str, str | None, float]]]
               ) -> list[NewRow]:
    """Entries ``start, start+1, ...`` linked by ``prev`` hashes, ready to insert.

    Called by a store while it holds its writer lock: that is what makes indices gap-free and
    the chain linear across processes.
    """
    built = build_entries(start, prev, appended_at, [e for e, _ in encoded])
    return [(start + i, h, raw, kind, subject, job, t, appended_at)
            for i, ((raw, h), (_, (kind, subject, job, t)))
            in enumerate(zip(built, encoded, strict=True))]


@dataclass(frozen=True)
class AuditResult:
    """What :meth:`Ledger.verify` checked (it raises TamperError instead when something is off)."""

    size: int
    root_hash: bytes
    #: the kept head checked against, if any
    head: TreeHead | None
    #: whether that head's signature was checked
    head_signature_checked: bool

    def to_dict(self) -> dict[str, Any]:
        return {"ok": True, "size": self.size, "root_hash": self.root_hash.hex(),
                "checked_against_head": self.head.to_dict() if self.head else None,
                "head_signature_checked": self.head_signature_checked}


def as_bytes(value: Any) -> bytes:
    """A BLOB column as bytes: a tampered row may hold TEXT or NULL instead (SQLite is typeless).
    """
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def new_ledger_id() -> str:
    return f"trainguard-ledger-{uuid.uuid4()}"


class Ledger(abc.ABC):
    """An append-only, tamper-evident log of :class:`~trainguard.core.events.Event`\\ s."""

    #: where it lives (a path or URL), for messages
    location: str = ""

    def __init__(self) -> None:
        self._tree = MerkleTree()
        self._tree_lock = threading.Lock()

    # -- primitives each store implements ------------------------------------------------------
    @abc.abstractmethod
    def _append_rows(self, encoded: Sequence[tuple[bytes, tuple[str, str, str | None, float]]],
                     appended_at: float) -> list[int]:
        """Under the store's writer lock: read the last (index, leaf hash), insert
        :func:`chain_rows`, commit; return the new indices."""

    @abc.abstractmethod
    def _size(self) -> int: ...

    @abc.abstractmethod
    def _read_rows(self, start: int, end: int) -> list[Row]:
        """Rows with start <= index < end, in index order."""

    @abc.abstractmethod
    def _read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        """Stored leaf hashes of entries start..end-1 in order (gap-free, else TamperError)."""

    @abc.abstractmethod
    def _query_rows(self, where: list[tuple[str, Any]], after: int, limit: int) -> list[Row]:
        """Rows matching every ``(column op, value)`` with index > after, in index order."""

    @abc.abstractmethod
    def _audit_rows(self, after: int, limit: int) -> list[AuditRow]:
        """All columns of rows with index > after (by index order, gaps included)."""

    @property
    @abc.abstractmethod
    def ledger_id(self) -> str:
        """The ledger's id (the ``origin`` of its tree heads)."""

    def close(self) -> None:  # noqa: B027 - optional for stores without connections
        """Release connections."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the Ledger API ------------------------------------------------------------------------
    def append(self, event: Event) -> int:
        """Append one event (one transaction); return its index."""
        return self.append_many([event])[0]

    def append_many(self, events: Iterable[Event]) -> list[int]:
        """Append events in one transaction (all or none); return their indices, in order."""
        try:
            encoded = [(encode_event(e), query_columns(e)) for e in events]
        except (ValueError, TypeError) as exc:  # NaN time, a non-JSON detail value
            raise UsageError(f"event cannot be logged: {exc}") from None
        if not encoded:
            return []
        return self._append_rows(encoded, time.time())

    @property
    def size(self) -> int:
        """Number of entries."""
        return self._size()

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[LedgerEntry]:
        """Entries start..end-1 in index order (read in pages)."""
        stop = self._size() if end is None else end
        pos = max(0, start)
        while pos < stop:
            rows = self._read_rows(pos, min(stop, pos + PAGE))
            if not rows:
                break
            for idx, raw, lh in rows:
                yield _decode(idx, raw, lh)
            pos = rows[-1][0] + 1

    def entry(self, index: int) -> LedgerEntry:
        rows = self._read_rows(index, index + 1)
        if not rows:
            raise UsageError(f"no entry {index} (the ledger has {self._size()})")
        return _decode(*rows[0])

    def query(self, kind: str | None = None, subject: str | None = None,  # noqa: PLR0917
              job: str | None = None,
              since: float | None = None, until: float | None = None,
              limit: int | None = None) -> Iterator[LedgerEntry]:
        """Entries matching every given filter, in index order. ``kind`` may end in ``*``
        (prefix: ``artifact.*``); ``since``/``until`` bound the event time (seconds)."""
        where: list[tuple[str, Any]] = []
        if kind is not None:
            if kind.endswith("*"):
                prefix = kind[:-1]
                where += [("kind >=", prefix), ("kind <", prefix + "\U0010ffff")]
            else:
                where.append(("kind =", kind))
        if subject is not None:
            where.append(("subject =", subject))
        if job is not None:
            where.append(("job =", job))
        if since is not None:
            where.append(("time >=", float(since)))
        if until is not None:
            where.append(("time <", float(until)))
        after, left = -1, limit if limit is not None else -1
        while left != 0:
            page = PAGE if left < 0 else min(PAGE, left)
            rows = self._query_rows(where, after, page)
            for idx, raw, lh in rows:
                yield _decode(idx, raw, lh)
            if left > 0:
                left -= len(rows)
            if len(rows) < page:
                return
            after = rows[-1][0]

    # -- the tree ------------------------------------------------------------------------------
    def _tree_at(self, size: int) -> MerkleTree:
        """The in-memory tree, synchronised to at least ``size`` leaves from stored hashes."""
        with self._tree_lock:
            have = self._tree.size
            if have < size:
                hashes = self._read_leaf_hashes(have, size)
                if len(hashes) != size - have:
                    raise UsageError(f"the ledger has fewer than {size} entries")
                self._tree.extend(hashes)
            return self._tree

    def _synced(self, n: int) -> MerkleTree:
        # The cached tree holds committed entries only, so sizes within it need no round trip
        # to the store (a proof is then pure memory work: tens of microseconds).
        if n > self._tree.size and n > self._size():
            raise UsageError(f"the ledger has fewer than {n} entries")
        return self._tree_at(n)

    def root_hash(self, size: int | None = None) -> bytes:
        n = self._size() if size is None else size
        return self._tree_at(n).root(n)

    def head(self) -> TreeHead:
        """The current (unsigned) tree head."""
        n = self._size()
        return TreeHead(size=n, root_hash=self._tree_at(n).root(n), timestamp=time.time(),
                        origin=self.ledger_id)

    def sign_head(self, key: PrivateKey) -> TreeHead:
        """The current tree head signed with the ledger's key."""
        return self.head().sign(key)

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """Proof that entry ``index`` is in the tree of ``size`` entries (default: current)."""
        n = self._size() if size is None else size
        if not 0 <= index < n:
            raise UsageError(f"no entry {index} in a tree of size {n}")
        tree = self._synced(n)
        return InclusionProof(index=index, size=n, leaf_hash=tree.leaf(index),
                              path=tuple(tree.inclusion_proof(index, n)),
                              root_hash=tree.root(n))

    def consistency_proof(self, first: int, second: int | None = None) -> ConsistencyProof:
        """Proof that the tree of ``second`` entries (default: current) extends the first."""
        n = self._size() if second is None else second
        if not 0 <= first <= n:
            raise UsageError(f"no consistency proof from size {first} to {n}")
        tree = self._synced(n)
        return ConsistencyProof(first=first, second=n, first_root=tree.root(first),
                                second_root=tree.root(n),
                                path=tuple(tree.consistency_proof(first, n)))

    def consistency_proof_path(self, first: int, second: int) -> list[bytes]:
        """Just the path: a :data:`~trainguard.ledger.heads.ProofSource` for witnesses."""
        return list(self.consistency_proof(first, second).path)

    # -- the audit -----------------------------------------------------------------------------
    def verify(self, against_head: TreeHead | None = None, *,
               public_key: PublicKey | None = None) -> AuditResult:
        """Re-read every entry and check the ledger; raise TamperError listing what changed.

        Checked from the rows alone: indices gap-free from 0, each entry's bytes hash to its
        stored leaf hash, each entry records its own index and the previous entry's leaf hash
        (the chain), and the indexed query columns match the entry. Against a kept head: the
        ledger is at least as long, and the root of its first ``head.size`` entries recomputed
        from the entry bytes equals the head's root (with ``public_key``, the head's signature
        is checked first). Only the head check catches a consistently rewritten history.
        """
        sig_checked = False
        if against_head is not None and public_key is not None:
            against_head.verify_signature(public_key)
            sig_checked = True
        changes: list[str] = []
        extra = 0

        def note(msg: str) -> None:
            nonlocal extra
            if len(changes) < MAX_CHANGES:
                changes.append(msg)
            else:
                extra += 1

        hashes: list[bytes] = []
        expected, prev_hex, after = 0, GENESIS_PREV.hex(), -1
        sha = hashlib.sha256
        while True:
            rows = self._audit_rows(after, AUDIT_PAGE)
            # The hot loop of the audit (100k entries: ~0.5 s): hash the raw bytes, parse them
            # once with json's C scanner (parse_entry), compare; no Event objects are built.
            for idx, raw, stored, kind, subject, job, t in rows:
                if idx != expected:
                    note(f"entries {expected}..{idx - 1} are missing (deleted)" if idx > expected
                         else f"entry index {idx} is out of order")
                    expected = idx
                if type(raw) is not bytes:
                    raw = as_bytes(raw)
                h = sha(LEAF_PREFIX + raw).digest()  # leaf_hash(raw), RFC 9162 §2.1.1
                if stored != h and as_bytes(stored) != h:
                    note(f"entry {idx}: content does not match its stored leaf hash (edited)")
                try:
                    data = parse_entry(raw)
                except EntryFormatError as exc:
                    note(f"entry {idx}: malformed ({exc})")
                else:
                    if data["index"] != idx:
                        note(f"entry {idx}: records index {data['index']} (moved or reordered)")
                    if data["prev"] != prev_hex:
                        note(f"entry {idx}: hash chain broken (the previous entry was changed, "
                             f"deleted or reordered)")
                    if kind is not None and \
                            columns_from_event_dict(data["event"]) != (kind, subject, job, t):
                        note(f"entry {idx}: indexed columns (kind, subject, job, time) do not "
                             f"match the entry (queries would give wrong answers)")
                hashes.append(h)
                prev_hex = h.hex()
                expected += 1
            if len(rows) < AUDIT_PAGE:
                break
            after = rows[-1][0]
        tree = MerkleTree(hashes)  # bulk: one pass per level
        size = tree.size
        root = tree.root()
        if against_head is not None:
            if against_head.origin != self.ledger_id:
                note(f"the head is for ledger {against_head.origin}, this is {self.ledger_id}")
            if against_head.size > size:
                note(f"the ledger has {size} entries but the kept head has {against_head.size}: "
                     f"entries were deleted or the ledger was truncated")
            elif tree.root(against_head.size) != against_head.root_hash:
                note(f"the first {against_head.size} entries do not match the kept head (root "
                     f"{tree.root(against_head.size).hex()[:16]}..., head "
                     f"{against_head.root_hash.hex()[:16]}...): entries were edited, deleted, "
                     f"reordered or the history rewritten")
        if changes:
            if extra:
                changes.append(f"... and {extra} more")
            raise TamperError(f"ledger {self.location or self.ledger_id} was tampered with: "
                              f"{len(changes) + extra - (1 if extra else 0)} problem(s)",
                              changes=changes,
                              remedy="restore the ledger from a backup that verifies against the "
                                     "kept head, and investigate who had write access")
        return AuditResult(size=size, root_hash=root, head=against_head,
                           head_signature_checked=sig_checked)


def _decode(idx: int, raw: bytes, lh: bytes) -> LedgerEntry:
    try:
        return decode_entry(as_bytes(raw), stored_leaf_hash=as_bytes(lh))
    except EntryFormatError as exc:
        raise TamperError(f"entry {idx} is malformed: {exc}",
                          changes=[f"entry {idx}: malformed ({exc})"],
                          remedy="run `trainguard ledger verify` against a kept head") from None
