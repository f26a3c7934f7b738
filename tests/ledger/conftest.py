"""Ledger test fixtures: a ledger URL per store (SQLite file, real PostgreSQL schema).

PostgreSQL: ``$TRAINGUARD_TEST_POSTGRES_DSN`` if set, else a throwaway server started here with
initdb + pg_ctl (run as the ``postgres`` OS user through runuser when we are root) on a unix
socket in a temporary directory. The postgres tests skip only when no PostgreSQL binaries exist
(.ci/run turns that skip into a failure).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from ledger_helpers import new_pg_ledger_url

PG_ENV = "TRAINGUARD_TEST_POSTGRES_DSN"


def _pg_bindir() -> Path | None:
    for pattern in ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/usr/pgsql-*/bin"):
        for d in sorted(glob.glob(pattern), reverse=True):
            if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists():
                return Path(d)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_postgres(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@pytest.fixture(scope="session")
def pg_base_dsn() -> Iterator[str]:
    """A DSN (URL form) of a PostgreSQL server for the session."""
    env = os.environ.get(PG_ENV)
    if env:
        yield env
        return
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) and no $" + PG_ENV)
    tmp = Path(tempfile.mkdtemp(prefix="tg-pg-"))
    data, sock = tmp / "data", tmp / "s"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres", "postgres")
        shutil.chown(sock, "postgres", "postgres")
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                 "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True)
    opts = f"-k {sock} -c listen_addresses='' -p 5432 -c fsync=off -c max_connections=50"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w",
                                 "-l", str(tmp / "log"), "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql://postgres@/postgres?host={quote(str(sock))}&port=5432"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m",
                                     "immediate", "stop"]), capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new, empty ledger's URL on each store."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return new_pg_ledger_url(request.getfixturevalue("pg_base_dsn"))
