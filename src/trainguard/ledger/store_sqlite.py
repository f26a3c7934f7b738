"""The SQLite store: one file, WAL journal, several writer processes.

Appends run under SQLite's single write lock, taken before the last index is checked or read,
so writers from any number of processes serialize and every index is the previous one plus one
(no gaps, one linear hash chain). A writer remembers the tail of its own last append: the next
single append is one conditional INSERT (inserted only if the table still ends there), anything
else a ``BEGIN IMMEDIATE`` transaction that reads the tail first (docs/ledger.md, "Stores").
WAL lets readers (proofs, queries, the audit) run while a writer appends. ``synchronous=NORMAL``
(the default here) keeps every committed entry through a process crash (``kill -9``);
``synchronous="full"`` also survives power loss, at a cost per commit.

SQLite's locking needs a local file system: WAL does not work on NFS, Lustre or GPFS. Cluster
jobs send events to ``trainguard ledger serve`` instead (client.py).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError, TamperError, UsageError
from trainguard.ledger.entry import (
    GENESIS_PREV,
    EntryFormatError,
    build_entries,
    columns_from_event_dict,
    parse_entry,
)
from trainguard.ledger.migrations import apply_sqlite
from trainguard.ledger.store import (
    AuditRow,
    Ledger,
    Row,
    as_bytes,
    new_ledger_id,
)

_SYNC = {"off": "OFF", "normal": "NORMAL", "full": "FULL"}
#: one entry, inserted only while the last row is the given index (-1: the table is empty)
_INSERT_IF_TAIL = ("INSERT INTO ledger_entries SELECT ?, ?, ? "
                   "WHERE coalesce((SELECT max(idx) FROM ledger_entries), -1) = ?")


class SqliteLedger(Ledger):
    """A ledger in a SQLite database file (created with its directory if missing)."""

    def __init__(self, path: str | Path, *, synchronous: str = "normal",
                 busy_timeout: float = 60.0, create: bool = True) -> None:
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        if synchronous.lower() not in _SYNC:
            raise UsageError(f"synchronous must be one of {', '.join(_SYNC)}")
        if not create and not self.path.exists():
            raise InputError(f"no ledger at {self.path}",
                             remedy="create one with `trainguard ledger init`")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        #: (size, last leaf hash) after this connection's last append (None: unknown)
        self._tail: tuple[int, bytes] | None = None
        try:
            # isolation_level=None: autocommit, transactions only where we BEGIN them.
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout,
                                         isolation_level=None, check_same_thread=False)
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()
            if mode is None or str(mode[0]).lower() != "wal":
                raise InputError(f"{self.path}: SQLite cannot use WAL here (a network file "
                                 f"system?)", remedy="use `trainguard ledger serve` instead")
            self._conn.execute(f"PRAGMA synchronous = {_SYNC[synchronous.lower()]}")
            # Checkpoint the WAL every ~40 MB rather than every 4 MB: fewer, larger copies into
            # the main file roughly double the one-commit-per-append rate.
            self._conn.execute("PRAGMA wal_autocheckpoint = 10000")
            self._cursor = self._conn.cursor()
            self.applied_migrations = apply_sqlite(self._conn)
            self._ledger_id = self._init_id()
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise InputError(f"{self.path} is not a usable ledger database: {exc}",
                             remedy="restore it from a backup; verify it against a kept head"
                             ) from None

    def _close_quietly(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _init_id(self) -> str:
        self._conn.execute("INSERT OR IGNORE INTO ledger_meta VALUES ('ledger_id', ?)",
                           (new_ledger_id(),))
        row = self._conn.execute("SELECT value FROM ledger_meta WHERE key = 'ledger_id'"
                                 ).fetchone()
        return str(row[0])

    @property
    def ledger_id(self) -> str:
        return self._ledger_id

    def close(self) -> None:
        with self._lock:
            self._close_quietly()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{self.path}: cannot read the ledger: {exc}") from None

    def _read_tail(self) -> tuple[int, bytes]:
        last = self._conn.execute("SELECT idx, leaf_hash FROM ledger_entries "
                                  "ORDER BY idx DESC LIMIT 1").fetchone()
        return (last[0] + 1, as_bytes(last[1])) if last else (0, GENESIS_PREV)

    def _append_rows(self, encoded: Sequence[tuple[bytes, tuple[str, str, str | None, float]]],
                     appended_at: float) -> list[int]:
        events = [e for e, _ in encoded]
        with self._lock:
            tail = self._tail
            if tail is not None and len(events) == 1:
                # Fast path, one statement: chained to the tail of this connection's last
                # append, inserted only if that is still the table's last row. An autocommit
                # statement is its own write transaction (SQLite takes the write lock, waiting
                # on busy_timeout, before it reads), so the check and the insert see the same
                # state and no other writer can commit in between: no gap, a linear chain.
                rows = _rows(tail, appended_at, events)
                try:
                    cur = self._cursor.execute(_INSERT_IF_TAIL, (*rows[0], tail[0] - 1))
                except sqlite3.DatabaseError as exc:
                    self._tail = None
                    raise InputError(f"{self.path}: cannot append: {exc}") from None
                if cur.rowcount == 1:
                    self._tail = (rows[0][0] + 1, rows[0][1])
                    return [rows[0][0]]
            # Another writer (or anything else) moved the tail, or a batch: read the tail under
            # the write lock and insert in one transaction.
            rows = self._append_locked(events, appended_at)
            self._tail = (rows[-1][0] + 1, rows[-1][1])
            return [r[0] for r in rows]

    def _append_locked(self, events: list[bytes],
                       appended_at: float) -> list[tuple[int, bytes, bytes]]:
        conn, cur = self._conn, self._cursor
        self._tail = None
        try:
            cur.execute("BEGIN IMMEDIATE")  # the write lock, before reading the tail
            try:
                rows = _rows(self._read_tail(), appended_at, events)
                cur.executemany("INSERT INTO ledger_entries VALUES (?, ?, ?)", rows)
                cur.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path}: cannot append: {exc}") from None
        return rows

    def _size(self) -> int:
        row = self._exec("SELECT max(idx) FROM ledger_entries")
        return 0 if not row or row[0][0] is None else int(row[0][0]) + 1

    def _read_rows(self, start: int, end: int) -> list[Row]:
        rows = self._exec("SELECT idx, entry, leaf_hash FROM ledger_entries "
                          "WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
        return [(int(i), as_bytes(e), as_bytes(h)) for i, e, h in rows]

    def _read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        pos = start
        for i, h in self._exec("SELECT idx, leaf_hash FROM ledger_entries "
                               "WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)):
            if type(h) is not bytes:
                h = as_bytes(h)
            if i != pos or len(h) != 32:
                raise TamperError(f"{self.path}: entry {pos} is missing or damaged",
                                  changes=[f"entry {pos}: missing or damaged"])
            out.append(h)
            pos += 1
        return out

    def _catch_up_query_index(self) -> None:
        """Fill ``ledger_query`` (kind, subject, job, time) for entries appended since the last
        query, in batches under the write lock (appends stay one-page transactions)."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    while True:
                        last = conn.execute("SELECT max(idx) FROM ledger_query").fetchone()[0]
                        rows = conn.execute("SELECT idx, entry FROM ledger_entries WHERE idx > ? "
                                            "ORDER BY idx LIMIT 5000",
                                            (-1 if last is None else last,)).fetchall()
                        if not rows:
                            break
                        conn.executemany("INSERT INTO ledger_query VALUES (?, ?, ?, ?, ?)",
                                         [(i, *_columns(i, raw)) for i, raw in rows])
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as exc:
                raise InputError(f"{self.path}: cannot index the ledger: {exc}") from None

    def _query_rows(self, where: list[tuple[str, Any]], after: int, limit: int) -> list[Row]:
        if after < 0:
            self._catch_up_query_index()
        clauses = ["q.idx > ?"] + [f"q.{col} ?" for col, _ in where]
        params: list[Any] = [after] + [v for _, v in where]
        # column names and operators are constants from Ledger.query; values are parameters
        rows = self._exec("SELECT e.idx, e.entry, e.leaf_hash FROM ledger_query q "  # noqa: S608
                          "JOIN ledger_entries e ON e.idx = q.idx WHERE "
                          + " AND ".join(clauses) + " ORDER BY q.idx LIMIT ?", [*params, limit])
        return [(int(i), as_bytes(e), as_bytes(h)) for i, e, h in rows]

    def _audit_rows(self, after: int, limit: int) -> list[AuditRow]:
        # Entries not yet in the query table come back with NULL columns (nothing to compare).
        rows = self._exec("SELECT e.idx, e.entry, e.leaf_hash, q.kind, q.subject, q.job, q.time "
                          "FROM ledger_entries e LEFT JOIN ledger_query q ON q.idx = e.idx "
                          "WHERE e.idx > ? ORDER BY e.idx LIMIT ?", (after, limit))
        return rows  # sqlite3 rows are already tuples


def _rows(tail: tuple[int, bytes], appended_at: float,
          events: list[bytes]) -> list[tuple[int, bytes, bytes]]:
    """(index, leaf hash, entry) rows continuing the chain from ``tail`` (size, last hash)."""
    start = tail[0]
    return [(i, h, raw) for i, (raw, h)
            in enumerate(build_entries(start, tail[1], appended_at, events), start)]


def _columns(idx: int, raw: bytes) -> tuple[Any, Any, Any, Any]:
    try:
        data = parse_entry(as_bytes(raw))
    except EntryFormatError as exc:
        raise TamperError(f"entry {idx} is malformed: {exc}",
                          changes=[f"entry {idx}: malformed ({exc})"]) from None
    kind, subject, job, t = columns_from_event_dict(data["event"])
    if not isinstance(kind, str) or not isinstance(subject, str):
        raise TamperError(f"entry {idx} has no event kind or subject",
                          changes=[f"entry {idx}: malformed event"])
    return kind, subject, job, t
