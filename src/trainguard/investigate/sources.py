"""Where investigations read events: a ledger, JSONL files, or events in memory.

JSONL files are written by the jobs under investigation, so a reader that stops at the first bad
line would let an attacker hide everything after it by writing one. :func:`read_events_jsonl`
skips bad lines and says which (they become warnings in the report); non-finite numbers, which
canonical JSON cannot spell but a hand-written line may hold, are kept as the strings ``"nan"`` /
``"inf"`` so a NaN loss is still seen as one.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from trainguard.core.errors import InputError
from trainguard.core.events import Event
from trainguard.ledger.lineage import EntrySource, indexed_events

#: a longer line is skipped (and reported): no event is that large (the ledger refuses 1 MiB)
MAX_LINE = 16 << 20
#: warnings kept per source (the count of the rest is reported)
MAX_WARNINGS = 20


def _finite(value: Any, depth: int = 0) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if depth > 64:
        return None
    if isinstance(value, list):
        return [_finite(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v, depth + 1) for k, v in value.items()}
    return value


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while many small acyclic objects (events) are built: the
    collector's passes over a growing heap made reading 100k events several times slower."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def read_events_jsonl(path: str | os.PathLike[str]) -> tuple[list[Event], list[str]]:
    """Events of a JSONL file (:class:`trainguard.core.events.JsonlSink` format) and warnings for
    the lines skipped. InputError when the file cannot be read at all."""
    events: list[Event] = []
    warnings: list[str] = []
    skipped = 0
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise InputError(f"cannot read events file {path}: {exc.strerror or exc}",
                         remedy="pass a JSONL file written by `trainguard run` or a JsonlSink"
                         ) from None
    with fh, gc_paused():
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                if len(raw) > MAX_LINE:
                    raise ValueError(f"line of {len(raw)} bytes is longer than {MAX_LINE}")
                data = json.loads(raw.decode("utf-8"))
                try:
                    events.append(Event.from_dict(data))
                except ValueError:  # a bare NaN/Infinity somewhere: keep it, spelled out
                    events.append(Event.from_dict(_finite(data)))
            except (ValueError, TypeError, RecursionError, UnicodeDecodeError) as exc:
                skipped += 1
                if len(warnings) < MAX_WARNINGS:
                    warnings.append(f"{path}:{n}: skipped: {str(exc)[:200]}")
    if skipped > len(warnings):
        warnings.append(f"{path}: {skipped - len(warnings)} more bad lines skipped")
    return events, warnings


def collect(source: EntrySource | Iterable[Event] | str | os.PathLike[str]
            ) -> tuple[list[tuple[int, Event]], list[str]]:
    """``(seq, event)`` pairs and warnings from a ledger, a JSONL path or events."""
    if isinstance(source, (str, os.PathLike)):
        events, warnings = read_events_jsonl(Path(source))
        return list(enumerate(events)), warnings
    with gc_paused():
        return list(indexed_events(source)), []


def merge(sources: Iterable[Iterable[Event]]) -> list[Event]:
    """Events of several sources in one list, without duplicates (the same event read from the
    ledger and from a JSONL file counts once), in first-seen order."""
    seen: set[str] = set()
    out: list[Event] = []
    for src in sources:
        for ev in src:
            key = ev.to_json()
            if key not in seen:
                seen.add(key)
                out.append(ev)
    return out
