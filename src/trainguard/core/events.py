"""Events: what happened, when, to what, and who did it; and the sinks that receive them.

Every capability reports actions in this one shape (ARCHITECTURE.md): signing, verification,
loading, scans, environment checks, guard detections, job start and end. Sinks are the ledger, a
JSONL file and stderr. The JSON form is a public interface (schema ``trainguard.event``, version
below): add fields, never change or remove them.

Example::

    from trainguard.core.events import Event, EventKind, JsonlSink
    sink = JsonlSink("events.jsonl")
    sink.emit(Event.now(EventKind.ARTIFACT_LOADED, "sha256:ab12...", {"path": "ckpt.pt"}))
    sink.close()
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from trainguard.core.findings import Severity
from trainguard.core.identity import Identity

EVENT_SCHEMA = "trainguard.event"
EVENT_SCHEMA_VERSION = "1.0"


class EventKind:
    """Event kinds: dotted ``area.verb`` names. New kinds may be added; existing ones never change
    meaning. Capabilities may emit kinds not listed here, but list the ones they rely on."""

    # artifacts (integrity, scan)
    ARTIFACT_SAVED = "artifact.saved"
    ARTIFACT_SIGNED = "artifact.signed"
    ARTIFACT_COSIGNED = "artifact.cosigned"
    ARTIFACT_VERIFIED = "artifact.verified"
    ARTIFACT_VERIFY_FAILED = "artifact.verify_failed"
    ARTIFACT_LOADED = "artifact.loaded"
    ARTIFACT_LOAD_REFUSED = "artifact.load_refused"
    SCAN_COMPLETED = "scan.completed"
    # environments
    ENV_SNAPSHOT = "env.snapshot"
    ENV_VERIFIED = "env.verified"
    # jobs and the runtime guard
    RUN_STARTED = "run.started"
    RUN_FINISHED = "run.finished"
    GUARD_AUDIT = "guard.audit"
    GUARD_LOAD = "guard.load"
    GUARD_TRIPWIRE = "guard.tripwire"
    GUARD_MONITOR = "guard.monitor"
    GUARD_METRIC = "guard.metric"
    GUARD_ERROR = "guard.error"
    GUARD_STARTED = "guard.started"
    GUARD_SEED = "guard.seed"
    GUARD_SUMMARY = "guard.summary"
    ENV_CHECK = "env.check"
    # the ledger itself
    LEDGER_WITNESS = "ledger.witness"


def _check_json_value(value: Any, where: str, depth: int = 0) -> None:
    """Details must be plain JSON (no NaN: canonical JSON has no spelling for it)."""
    if depth > 64:
        raise ValueError(f"{where}: nested too deeply")
    if value is None or isinstance(value, (str, bool, int)):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: non-finite number {value!r}")
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{where}[{i}]", depth + 1)
        return
    if isinstance(value, dict):
        for k, item in value.items():
            if not isinstance(k, str):
                raise ValueError(f"{where}: non-string key {k!r}")
            _check_json_value(item, f"{where}.{k}", depth + 1)
        return
    raise ValueError(f"{where}: {type(value).__name__} is not a JSON value")


#: (identity, its to_dict()) of the last identity encoded: a process emits thousands of events
#: under one Identity, and dataclasses.asdict (deep copies, recursion) is most of to_dict's cost
_LAST_IDENTITY: tuple[Identity, dict[str, Any]] | None = None
_SCALARS = (str, int, float, bool, type(None))


def _identity_dict(identity: Identity) -> dict[str, Any]:
    """``identity.to_dict()``, from a one-entry cache keyed by object identity (a fresh copy
    each call, so callers may still modify it). Only plain Identity objects whose values are
    all scalars are cached: for those a shallow copy equals the deep copy asdict makes."""
    global _LAST_IDENTITY  # noqa: PLW0603 - a one-slot cache, replaced atomically
    last = _LAST_IDENTITY
    if last is not None and last[0] is identity:
        return dict(last[1])
    value = identity.to_dict()
    if type(identity) is Identity and all(type(v) in _SCALARS for v in value.values()):
        _LAST_IDENTITY = (identity, value)
        return dict(value)
    return value


@dataclass(frozen=True)
class Event:
    """One thing that happened."""

    kind: str
    #: what it happened to: an artifact digest (``sha256:<hex>``), a path, a run id
    subject: str
    details: Mapping[str, Any] = field(default_factory=dict, hash=False)
    identity: Identity | None = None
    #: seconds since the epoch (UTC)
    time: float = 0.0
    #: set for detections (guard, verify failures); None for plain records
    severity: Severity | None = None
    #: the rule id behind a detection, if any
    rule_id: str | None = None

    def __post_init__(self) -> None:
        if not self.kind or not isinstance(self.kind, str):
            raise ValueError("event kind must be a non-empty string")
        _check_json_value(dict(self.details), "details")

    @classmethod
    def now(cls, kind: str, subject: str, details: Mapping[str, Any] | None = None, *,
            identity: Identity | None = None, severity: Severity | None = None,
            rule_id: str | None = None) -> Event:
        """An event stamped with the current time and (by default) this process's identity."""
        return cls(kind=kind, subject=subject, details=dict(details or {}),
                   identity=identity if identity is not None else _process_identity(),
                   time=time.time(), severity=severity, rule_id=rule_id)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": EVENT_SCHEMA,
            "schema_version": EVENT_SCHEMA_VERSION,
            "kind": self.kind,
            "time": self.time,
            "subject": self.subject,
            "severity": self.severity.label if self.severity is not None else None,
            "rule_id": self.rule_id,
            "identity": _identity_dict(self.identity) if self.identity is not None else None,
            "details": dict(self.details),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`; raises ValueError on a malformed record."""
        if not isinstance(data, Mapping):
            raise ValueError("event must be a JSON object")
        if data.get("schema", EVENT_SCHEMA) != EVENT_SCHEMA:
            raise ValueError(f"not a trainguard event: schema {data.get('schema')!r}")
        kind, subject = data.get("kind"), data.get("subject")
        if not isinstance(kind, str) or not isinstance(subject, str):
            raise ValueError("event kind and subject must be strings")
        t = data.get("time", 0.0)
        if not isinstance(t, (int, float)) or isinstance(t, bool):
            raise ValueError("event time must be a number")
        details = data.get("details", {})
        if details is None:
            details = {}
        if not isinstance(details, dict):
            raise ValueError("event details must be an object")
        ident = data.get("identity")
        sev = data.get("severity")
        rule_id = data.get("rule_id")
        if rule_id is not None and not isinstance(rule_id, str):
            raise ValueError("event rule_id must be a string")
        try:
            severity = Severity.parse(sev) if isinstance(sev, str) else None
        except Exception:
            raise ValueError(f"unknown severity {sev!r}") from None
        return cls(kind=kind, subject=subject, details=details,
                   identity=Identity.from_dict(ident) if isinstance(ident, dict) else None,
                   time=float(t), severity=severity, rule_id=rule_id)

    def to_json(self) -> str:
        """One line of JSON (keys sorted, no whitespace): the JSONL and ledger form."""
        return canonical_json(self.to_dict()).decode("utf-8")


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON: sorted keys, no insignificant whitespace, no NaN/Infinity.

    Equal values give equal bytes, so hashes over entries are stable (the ledger hashes these
    bytes as RFC 9162 leaves). Floats use Python's shortest round-trip repr.
    """
    # json.dumps builds a JSONEncoder and a C encoder per call; this calls one C encoder, built
    # once with the arguments json.dumps passes it (json.encoder.JSONEncoder.iterencode, one-shot
    # path), so bytes and errors are identical (tests/ledger/test_encoding_speed.py compares them).
    # It has no cycle markers (shared markers would be wrong across threads and after an error):
    # a cycle then ends in RecursionError, and json.dumps, called again, reports it as it always
    # did (ValueError "Circular reference detected"; a merely deep value re-raises RecursionError).
    try:
        return "".join(_ENCODE(value, 0)).encode("utf-8")
    except RecursionError:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")


def _make_encoder() -> Any:
    enc = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    c_make_encoder = getattr(json.encoder, "c_make_encoder", None)
    if c_make_encoder is None:  # pragma: no cover - CPython always has _json
        return lambda value, _level: (enc.encode(value),)
    encode_basestring = json.encoder.encode_basestring  # type: ignore[attr-defined]
    return c_make_encoder(None, enc.default, encode_basestring, None, ":", ",", True, False, False)


_ENCODE = _make_encoder()


_IDENTITY: dict[int, Identity] = {}


def _process_identity() -> Identity:
    # Cached per process id (a forked child computes its own: the pid differs).
    pid = os.getpid()
    ident = _IDENTITY.get(pid)
    if ident is None:
        _IDENTITY.clear()
        ident = _IDENTITY[pid] = Identity.current()
    return ident


class EventSink(Protocol):
    """Where events go. ``emit`` must not raise for a well-formed event in normal operation:
    sinks report their own failures through their return value or a later ``close``."""

    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """Append events to a JSONL file, one canonical JSON object per line, flushed per event."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._fh: IO[str] | None = None

    def emit(self, event: Event) -> None:
        line = event.to_json() + "\n"
        with self._lock:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


class StderrSink:
    """Human-readable one-line events on stderr (detections only, unless ``all_events``)."""

    def __init__(self, *, all_events: bool = False, stream: IO[str] | None = None) -> None:
        self.all_events = all_events
        self.stream = stream

    def emit(self, event: Event) -> None:
        if event.severity is None and not self.all_events:
            return
        sev = event.severity.label.upper() if event.severity is not None else "INFO"
        who = f" [{event.identity.short()}]" if event.identity is not None else ""
        rule = f" {event.rule_id}" if event.rule_id else ""
        summary = event.details.get("message") or event.details.get("summary") or ""
        out = self.stream or sys.stderr
        out.write(f"trainguard: {sev}{rule} {event.kind} {event.subject}{who}"
                  f"{': ' + str(summary) if summary else ''}\n")
        out.flush()

    def close(self) -> None:
        pass


class MultiSink:
    """Fan one event out to several sinks; a failing sink does not stop the others."""

    def __init__(self, sinks: list[EventSink]) -> None:
        self.sinks = list(sinks)
        self.errors: list[str] = []

    def emit(self, event: Event) -> None:
        for sink in self.sinks:
            try:
                sink.emit(event)
            except Exception as exc:  # a broken sink must not break the job it observes
                self.errors.append(f"{type(sink).__name__}: {exc}")

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                self.errors.append(f"{type(sink).__name__}: {exc}")


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[Event]:
    """Events from a JSONL file written by :class:`JsonlSink`; ValueError names a bad line."""
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield Event.from_dict(json.loads(line))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{path}:{n}: {exc}") from None
