"""The ledger: a tamper-evident record of what happened to models and who did it.

An append-only RFC 9162 Merkle log of :class:`~trainguard.core.events.Event`\\ s, kept in SQLite
(default), PostgreSQL, or behind ``trainguard ledger serve``; signed tree heads, witness
co-signatures, inclusion and consistency proofs, and an audit that detects any edit, deletion,
reordering or truncation against a kept head. docs/ledger.md describes the formats.

Example::

    from trainguard.core.events import Event, EventKind
    from trainguard.integrity.keys import PrivateKey
    from trainguard.ledger import open_ledger

    ledger = open_ledger("ledger.db")               # or "postgresql://...", "http://host:8080"
    i = ledger.append(Event.now(EventKind.ARTIFACT_SAVED, "sha256:ab12", {"path": "ckpt.pt"}))
    key = PrivateKey.generate()
    head = ledger.sign_head(key)                    # keep it somewhere the ledger cannot reach
    ledger.inclusion_proof(i, head.size).verify(head.root_hash)
    ledger.verify(against_head=head, public_key=key.public_key())   # raises TamperError
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from trainguard.core.errors import ConfigError, UsageError
from trainguard.ledger.entry import LedgerEntry
from trainguard.ledger.heads import TreeHead, Witness
from trainguard.ledger.merkle import ConsistencyProof, InclusionProof, ProofError
from trainguard.ledger.store import AuditResult, Ledger

__all__ = [
    "AuditResult",
    "ConsistencyProof",
    "InclusionProof",
    "Ledger",
    "LedgerEntry",
    "ProofError",
    "TreeHead",
    "Witness",
    "default_ledger_url",
    "open_ledger",
]

#: environment variable naming the ledger (a path or URL); wins over trainguard.toml
LEDGER_ENV = "TRAINGUARD_LEDGER"
#: environment variable holding the bearer token for an HTTP ledger (never a flag)
TOKEN_ENV = "TRAINGUARD_LEDGER_TOKEN"  # noqa: S105 - a variable name
_SETTINGS = {"url", "synchronous"}


def ledger_settings(section: dict[str, Any]) -> dict[str, Any]:
    """Validate the ``[ledger]`` table of trainguard.toml (unknown keys are an error)."""
    unknown = sorted(set(section) - _SETTINGS)
    if unknown:
        raise ConfigError(f"unknown key(s) in [ledger]: {', '.join(unknown)}")
    for key in _SETTINGS & set(section):
        if not isinstance(section[key], str) or not section[key]:
            raise ConfigError(f"[ledger] {key} must be a non-empty string")
    if section.get("synchronous", "normal").lower() not in ("off", "normal", "full"):
        raise ConfigError("[ledger] synchronous must be off, normal or full")
    return dict(section)


def _project_root(start: Path) -> Path | None:
    for d in (start, *start.parents):
        if (d / "trainguard.toml").is_file() or (d / ".git").exists():
            return d
    return None


def default_ledger_url(cwd: Path | None = None) -> str:
    """Where the ledger is when none is named: ``$TRAINGUARD_LEDGER``, else ``[ledger] url`` in
    trainguard.toml, else ``.trainguard/ledger.db`` in the project (the nearest directory with a
    trainguard.toml or .git), else ``$XDG_DATA_HOME/trainguard/ledger.db``."""
    env = os.environ.get(LEDGER_ENV)
    if env:
        return env
    from trainguard.core.config import load_config

    cfg = load_config()
    url = ledger_settings(cfg.section("ledger")).get("url")
    if url:
        if "://" not in url and cfg.source is not None and not Path(url).is_absolute():
            return str(cfg.source.parent / url)  # relative to the config file
        return str(url)
    root = _project_root((cwd or Path.cwd()).absolute())
    if root is not None:
        return str(root / ".trainguard" / "ledger.db")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(data) / "trainguard" / "ledger.db")


def open_ledger(url_or_path: str | os.PathLike[str] | None = None, *,
                create: bool = True, token: str | None = None, **options: Any) -> Ledger:
    """Open a ledger: a SQLite path or ``sqlite:///path``, ``postgresql://...``, or
    ``http(s)://host:port`` (a ``trainguard ledger serve``); None means
    :func:`default_ledger_url`. SQLite options: ``synchronous`` ("normal" or "full")."""
    url = str(url_or_path) if url_or_path is not None else default_ledger_url()
    if url.startswith(("postgresql://", "postgres://")):
        from trainguard.ledger.store_postgres import PostgresLedger

        return PostgresLedger(url, **options)
    if url.startswith(("http://", "https://")):
        from trainguard.ledger.client import HttpLedger

        return HttpLedger(url, token=token if token is not None else os.environ.get(TOKEN_ENV),
                          **options)
    # ``create`` applies to SQLite files; a PostgreSQL database or a service exists or fails.
    if url.startswith("sqlite://"):
        url = url[len("sqlite://"):]
        if not url.startswith("/"):
            raise UsageError("a sqlite URL is sqlite:///absolute/path or sqlite:///./relative")
        url = url[1:] if url.startswith("/./") else url
    elif "://" in url:
        raise UsageError(f"unknown ledger URL scheme in {url!r}",
                         remedy="use a path, sqlite:///path, postgresql://... or http://host:port")
    from trainguard.ledger.store_sqlite import SqliteLedger

    if "synchronous" not in options and url_or_path is None:
        from trainguard.core.config import load_config

        sync = ledger_settings(load_config().section("ledger")).get("synchronous")
        if sync:
            options["synchronous"] = sync
    return SqliteLedger(url, create=create, **options)
