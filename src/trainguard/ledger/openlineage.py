"""Export ledger entries as OpenLineage RunEvents (spec 2-0-2), for Marquez, DataHub, etc.

Mapping: a run is ``Identity.job`` (``runId`` is a UUIDv5 of the ledger id and the job, so one
job always maps to one run); ``run.started`` -> START, ``run.finished`` -> COMPLETE (FAIL when its
details say ``status`` failed), ``artifact.saved`` / ``artifact.signed`` -> RUNNING with the
artifact as an *output* dataset, ``artifact.loaded`` -> RUNNING with it as an *input*. Datasets
are named by digest (the event subject) in namespace ``trainguard``; the path, if any, is a
facet. Every event carries a ``trainguard`` run facet with the ledger index and leaf hash, so a
lineage tool's record can be traced back to a provable ledger entry. Other kinds are skipped.

Example::

    from trainguard.ledger import open_ledger
    from trainguard.ledger.openlineage import to_openlineage
    for run_event in to_openlineage(open_ledger("ledger.db").entries()):
        print(run_event["eventType"], run_event["job"]["name"])
"""

from __future__ import annotations

import datetime as _dt
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from trainguard import __version__
from trainguard.core.events import EventKind
from trainguard.ledger.entry import LedgerEntry

SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
PRODUCER = f"https://github.com/trainguard/trainguard/tree/v{__version__}"
FACET_SCHEMA = "https://trainguard.dev/openlineage/ledger-entry-facet/v1.json"
NAMESPACE = "trainguard"

_OUTPUT_KINDS = {EventKind.ARTIFACT_SAVED, EventKind.ARTIFACT_SIGNED}
_INPUT_KINDS = {EventKind.ARTIFACT_LOADED}
_KINDS = _OUTPUT_KINDS | _INPUT_KINDS | {EventKind.RUN_STARTED, EventKind.RUN_FINISHED}


def _iso(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def _dataset(entry: LedgerEntry) -> dict[str, Any]:
    ds: dict[str, Any] = {"namespace": NAMESPACE, "name": entry.event.subject, "facets": {}}
    path = entry.event.details.get("path")
    if isinstance(path, str):
        ds["facets"]["trainguard_path"] = {"_producer": PRODUCER, "_schemaURL": FACET_SCHEMA,
                                           "path": path}
    return ds


def to_openlineage(entries: Iterable[LedgerEntry], *, origin: str = "trainguard",
                   job_namespace: str = NAMESPACE) -> Iterator[dict[str, Any]]:
    """RunEvents for the lineage-relevant entries, in ledger order."""
    for entry in entries:
        ev = entry.event
        if ev.kind not in _KINDS:
            continue
        ident = ev.identity
        job = (ident.job if ident is not None and ident.job else None) or \
            (f"pid-{ident.host}-{ident.pid}" if ident is not None else "unknown")
        if ev.kind == EventKind.RUN_STARTED:
            event_type = "START"
        elif ev.kind == EventKind.RUN_FINISHED:
            status = str(ev.details.get("status", "")).lower()
            event_type = "FAIL" if status in ("failed", "fail", "error") else "COMPLETE"
        else:
            event_type = "RUNNING"
        facet: dict[str, Any] = {"_producer": PRODUCER, "_schemaURL": FACET_SCHEMA,
                                 "ledger": origin, "index": entry.index,
                                 "leaf_hash": entry.leaf_hash.hex(), "kind": ev.kind}
        if ident is not None:
            facet["identity"] = ident.to_dict()
        yield {
            "eventType": event_type,
            "eventTime": _iso(ev.time or entry.appended_at),
            "run": {"runId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{origin}/{job}")),
                    "facets": {"trainguard": facet}},
            "job": {"namespace": job_namespace, "name": job, "facets": {}},
            "inputs": [_dataset(entry)] if ev.kind in _INPUT_KINDS else [],
            "outputs": [_dataset(entry)] if ev.kind in _OUTPUT_KINDS else [],
            "producer": PRODUCER,
            "schemaURL": SCHEMA_URL,
        }
