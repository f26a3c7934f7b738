"""Helpers shared by the ledger tests (imported by name: tests/ledger is on sys.path)."""

from __future__ import annotations

import uuid
from urllib.parse import quote

from trainguard.core.events import Event, EventKind
from trainguard.core.identity import Identity


def new_pg_ledger_url(base: str) -> str:
    """A fresh schema on the server, as a DSN whose search_path points at it."""
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


def execute_raw(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run SQL directly against a store (what an attacker with database access does)."""
    if url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), params)
    else:
        import sqlite3

        conn = sqlite3.connect(url)
        conn.execute(sql, params)
        conn.commit()
        conn.close()


def make_event(i: int, kind: str = EventKind.ARTIFACT_SAVED, job: str = "job-1") -> Event:
    ident = Identity(user="alice", host="node1", pid=100, job=job, rank=0)
    return Event(kind=kind, subject=f"sha256:{i:064x}", details={"path": f"ckpt-{i}.pt", "i": i},
                 identity=ident, time=1764547200.0 + i)
