"""The PostgreSQL store (psycopg 3, imported lazily): for teams sharing one ledger.

One sequencer assigns leaf indices: the single row of ``ledger_state`` (size, last leaf hash) is
locked ``FOR UPDATE`` by each append transaction, which inserts its entries and advances the row
before committing. Writers serialize on that row lock; a rolled-back append leaves the row as it
was, so indices never skip (a ``SEQUENCE`` would: sequences are not transactional). Batched
appends (``append_many``) pay that round trip once per batch.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from trainguard.core.errors import InputError, TamperError
from trainguard.integrity.keys import PublicKey
from trainguard.ledger.heads import TreeHead
from trainguard.ledger.migrations import apply_postgres
from trainguard.ledger.store import (
    AuditResult,
    AuditRow,
    Ledger,
    Row,
    chain_rows,
    new_ledger_id,
)

_INSERT = ("INSERT INTO ledger_entries (idx, leaf_hash, entry, kind, subject, job, time, "
           "appended_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)")


def _redact(dsn: str) -> str:
    # Never print a password from a DSN.
    import re

    return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", re.sub(r"password=\S+", "password=***", dsn))


class PostgresLedger(Ledger):
    """A ledger in a PostgreSQL database (tables created by migrations on first use)."""

    def __init__(self, dsn: str, *, connect_timeout: int = 10) -> None:
        super().__init__()
        self.location = _redact(dsn)
        try:
            import psycopg
        except ImportError:
            raise InputError("the PostgreSQL store needs psycopg 3",
                             remedy="pip install 'trainguard[postgres]'") from None
        self._psycopg = psycopg
        self._lock = threading.RLock()
        try:
            self._conn: Any = psycopg.connect(dsn, autocommit=True,
                                              connect_timeout=connect_timeout)
            self.applied_migrations = apply_postgres(self._conn)
            self._conn.execute("INSERT INTO ledger_meta VALUES ('ledger_id', %s) "
                               "ON CONFLICT DO NOTHING", (new_ledger_id(),))
            row: Any = self._conn.execute("SELECT value FROM ledger_meta WHERE key = "
                                          "'ledger_id'").fetchone()
            self._ledger_id = str(row[0])
        except psycopg.Error as exc:
            raise InputError(f"cannot open the PostgreSQL ledger {self.location}: "
                             f"{str(exc).strip()}") from None

    @property
    def ledger_id(self) -> str:
        return self._ledger_id

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            try:
                return list(self._conn.execute(sql, params).fetchall())
            except self._psycopg.Error as exc:
                raise InputError(f"{self.location}: {str(exc).strip()}") from None

    def _append_rows(self, encoded: Sequence[tuple[bytes, tuple[str, str, str | None, float]]],
                     appended_at: float) -> list[int]:
        with self._lock:
            conn = self._conn
            try:
                with conn.transaction():
                    # The sequencer: this row lock orders every append transaction.
                    size, last = conn.execute("SELECT size, last_hash FROM ledger_state "
                                              "WHERE id = 1 FOR UPDATE").fetchone()
                    rows = chain_rows(int(size), bytes(last), appended_at, encoded)
                    with conn.cursor() as cur:
                        if len(rows) > 64:
                            # COPY is several times faster than INSERTs for large batches.
                            with cur.copy("COPY ledger_entries (idx, leaf_hash, entry, kind, "
                                          "subject, job, time, appended_at) FROM STDIN") as cp:
                                for r in rows:
                                    cp.write_row(r)
                        else:
                            cur.executemany(_INSERT, rows)
                    conn.execute("UPDATE ledger_state SET size = %s, last_hash = %s "
                                 "WHERE id = 1", (rows[-1][0] + 1, rows[-1][1]))
            except self._psycopg.Error as exc:
                raise InputError(f"{self.location}: cannot append: {str(exc).strip()}") from None
            return [r[0] for r in rows]

    def _size(self) -> int:
        # The sequencer's count, not max(idx): a deleted tail must not lower the size the
        # next append uses (the audit reports the missing rows).
        return int(self._exec("SELECT size FROM ledger_state WHERE id = 1")[0][0])

    def _read_rows(self, start: int, end: int) -> list[Row]:
        rows = self._exec("SELECT idx, entry, leaf_hash FROM ledger_entries "
                          "WHERE idx >= %s AND idx < %s ORDER BY idx", (start, end))
        return [(int(i), bytes(e), bytes(h)) for i, e, h in rows]

    def _read_leaf_hashes(self, start: int, end: int) -> list[bytes]:
        out: list[bytes] = []
        pos = start
        for i, h in self._exec("SELECT idx, leaf_hash FROM ledger_entries "
                               "WHERE idx >= %s AND idx < %s ORDER BY idx", (start, end)):
            if i != pos or len(h) != 32:
                raise TamperError(f"{self.location}: entry {pos} is missing or damaged",
                                  changes=[f"entry {pos}: missing or damaged"])
            out.append(bytes(h))
            pos += 1
        if pos != end:
            raise TamperError(f"{self.location}: entry {pos} is missing",
                              changes=[f"entry {pos}: missing"])
        return out

    def _query_rows(self, where: list[tuple[str, Any]], after: int, limit: int) -> list[Row]:
        clauses = ["idx > %s"] + [f"{col} %s" for col, _ in where]
        params: list[Any] = [after] + [v for _, v in where]
        # column names and operators are constants from Ledger.query; values are parameters
        rows = self._exec("SELECT idx, entry, leaf_hash FROM ledger_entries WHERE "  # noqa: S608
                          + " AND ".join(clauses) + " ORDER BY idx LIMIT %s", [*params, limit])
        return [(int(i), bytes(e), bytes(h)) for i, e, h in rows]

    def _audit_rows(self, after: int, limit: int) -> list[AuditRow]:
        rows = self._exec("SELECT idx, entry, leaf_hash, kind, subject, job, time "
                          "FROM ledger_entries WHERE idx > %s ORDER BY idx LIMIT %s",
                          (after, limit))
        return [(int(r[0]), bytes(r[1]), bytes(r[2]), r[3], r[4], r[5], r[6]) for r in rows]

    def verify(self, against_head: TreeHead | None = None, *,
               public_key: PublicKey | None = None) -> AuditResult:
        """As :meth:`Ledger.verify`, plus: the sequencer's size matches the rows."""
        result = super().verify(against_head, public_key=public_key)
        seq = self._size()
        if seq != result.size:
            raise TamperError(f"ledger {self.location} was tampered with",
                              changes=[f"the sequencer counts {seq} entries but {result.size} "
                                       f"rows exist: entries were deleted or inserted"])
        return result
