"""Named, transactional schema migrations, recorded in a table (after sqlite-utils' migrations).

Each migration runs once, in its own transaction together with the row that records it in
``trainguard_migrations``; a migration that fails leaves no trace. Names are never reused or
edited: a schema change is a new migration appended to the list. Both stores share the list of
names (with dialect-specific SQL), so a ledger moved from SQLite to PostgreSQL reads the same.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

MIGRATIONS_TABLE = "trainguard_migrations"


@dataclass(frozen=True)
class Migration:
    name: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


# SQLite keeps the hashed entries lean (one table page touched per append: the single-writer
# rate depends on it) and fills the query table lazily, in batches, when a query runs.
_SQLITE = (
    "CREATE TABLE ledger_entries (idx INTEGER PRIMARY KEY, leaf_hash BLOB NOT NULL, "
    "entry BLOB NOT NULL)",
    "CREATE TABLE ledger_query (idx INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
    "subject TEXT NOT NULL, job TEXT, time REAL NOT NULL)",
    "CREATE INDEX ledger_query_kind ON ledger_query (kind)",
    "CREATE INDEX ledger_query_subject ON ledger_query (subject)",
    "CREATE INDEX ledger_query_job ON ledger_query (job)",
    "CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)
_COLS_POSTGRES = ("idx BIGINT PRIMARY KEY, leaf_hash BYTEA NOT NULL, entry BYTEA NOT NULL, "
                  "kind TEXT NOT NULL, subject TEXT NOT NULL, job TEXT, "
                  "time DOUBLE PRECISION NOT NULL, appended_at DOUBLE PRECISION NOT NULL")
_INDEXES = ("CREATE INDEX ledger_entries_kind ON ledger_entries (kind)",
            "CREATE INDEX ledger_entries_subject ON ledger_entries (subject)",
            "CREATE INDEX ledger_entries_job ON ledger_entries (job)")

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        "0001_entries",
        sqlite=_SQLITE,
        postgres=(f"CREATE TABLE ledger_entries ({_COLS_POSTGRES})", *_INDEXES,
                  "CREATE TABLE ledger_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                  # The sequencer: one row, locked FOR UPDATE by each append transaction. A
                  # SEQUENCE would skip numbers on rollback and leave gaps in leaf indices.
                  "CREATE TABLE ledger_state (id INTEGER PRIMARY KEY CHECK (id = 1), "
                  "size BIGINT NOT NULL, last_hash BYTEA NOT NULL)",
                  "INSERT INTO ledger_state VALUES (1, 0, "
                  "'\\x0000000000000000000000000000000000000000000000000000000000000000')"),
    ),
)


def apply_sqlite(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply pending migrations to a sqlite3 connection in autocommit mode; return their names.

    ``BEGIN IMMEDIATE`` takes the write lock first, so two processes opening a new ledger at once
    serialize and the second sees the first's record.
    """
    conn.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
                 "(name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
    applied: list[str] = []
    for m in migrations:
        conn.execute("BEGIN IMMEDIATE")
        try:
            done = conn.execute(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = ?",  # noqa: S608 - a constant
                                (m.name,)).fetchone()
            if done is None:
                for stmt in m.sqlite:
                    conn.execute(stmt)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, ?)",  # noqa: S608
                             (m.name, time.time()))
                applied.append(m.name)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    return applied


def apply_postgres(conn: Any, migrations: tuple[Migration, ...] = MIGRATIONS) -> list[str]:
    """Apply pending migrations to a psycopg connection (autocommit); return their names.

    A transaction-scoped advisory lock serializes concurrent migrators (PostgreSQL DDL is
    transactional, so a failed migration rolls back with its record).
    """
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7286451093)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
                     "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)")
        for m in migrations:
            done = conn.execute(f"SELECT 1 FROM {MIGRATIONS_TABLE} WHERE name = %s",  # noqa: S608 - a constant
                                (m.name,)).fetchone()
            if done is not None:
                continue
            with conn.transaction():  # a savepoint per migration
                for stmt in m.postgres:
                    conn.execute(stmt)
                conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (%s, %s)",  # noqa: S608
                             (m.name, time.time()))
            applied.append(m.name)
    return applied
