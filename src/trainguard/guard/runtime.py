"""The guard inside one process: mode, sinks, detections, and surviving its own failures.

:class:`GuardRuntime` is what the audit hook, the load gate, the tripwires and the training
monitors report to. It turns a detection into an :class:`~trainguard.core.events.Event` with the
code location that caused it, writes it to the sinks (a JSONL file per process, detections also
to stderr), and in enforce mode stops the action by raising :class:`GuardStopped`.

Two promises hold whatever happens (issue 5, "the guard survives its own failure"):

- an exception inside the guard (a hook, a sink, a check) is caught, reported once per place as
  a ``guard.error`` event (TG-GRD-015) and the job continues; only :class:`GuardStopped`, the
  deliberate enforce-mode refusal, ever leaves a hook;
- a flood of events stays bounded: identical detections (rule, code location) are written
  ``max_repeats`` times and then only counted, and a process writes at most ``max_events``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainguard.core.errors import TrainguardError
from trainguard.core.events import Event, EventKind, EventSink, JsonlSink, MultiSink, StderrSink
from trainguard.core.findings import Severity
from trainguard.guard.config import GuardConfig
from trainguard.guard.frames import UNKNOWN, CodeLocation

#: event kinds of the guard (docs/guard.md)
GUARD_SUMMARY = EventKind.GUARD_SUMMARY
GUARD_SEED = EventKind.GUARD_SEED
GUARD_STARTED = EventKind.GUARD_STARTED
#: most loaded digests remembered per process (the inputs of a checkpoint it saves)
MAX_INPUTS = 1024


class GuardStopped(TrainguardError):
    """Enforce mode refused an action (a load, a process start, a replaced optimizer step...)."""

    def __init__(self, message: str, *, rule_id: str) -> None:
        super().__init__(message, remedy="see the guard event for the code location; "
                         "docs/guard.md explains each TG-GRD rule")
        self.rule_id = rule_id


def _rule_severity(rule_id: str) -> Severity:
    from trainguard.core.rules import RULES

    found = RULES.get(rule_id)
    return found.severity if found is not None else Severity.HIGH


class GuardRuntime:
    """The guard of one process (see the module docstring)."""

    def __init__(self, config: GuardConfig, *, run_dir: Path | None = None,
                 events_path: Path | None = None, stderr: bool = True,
                 extra_sinks: list[EventSink] | None = None,
                 sink_factories: list[Callable[[], EventSink]] | None = None) -> None:
        self.config = config
        self.run_dir = run_dir
        self._events_path = events_path
        self._stderr = stderr
        self._extra = list(extra_sinks or [])
        #: sinks made per process (a ledger connection and its writer thread must not cross a
        #: fork): called again in a forked child
        self._factories = list(sink_factories or [])
        self._factory_errors: list[str] = []
        self._lock = threading.RLock()
        self.local = threading.local()
        self.active = True
        self._make_sinks()
        self._reset_counters()
        self.training_started = False
        self.steps = 0
        self.pending_stop: GuardStopped | None = None
        #: digests of the files this process loaded through the load gate, first-seen order
        #: (``artifact.saved`` names them as a checkpoint's ``inputs``); at most MAX_INPUTS
        self.loaded: dict[str, str] = {}
        self._digests: dict[tuple[int, ...], str] = {}
        self._report_factory_errors()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._after_fork)

    # ------------------------------------------------------------------ state
    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def enforce(self) -> bool:
        return self.config.enforce

    def _process_file(self) -> Path | None:
        if self.run_dir is not None:
            host = os.environ.get("TRAINGUARD_HOST") or os.uname().nodename
            return self.run_dir / "proc" / f"{host}-{os.getpid()}.jsonl"
        return self._events_path

    def _make_sinks(self) -> None:
        sinks: list[EventSink] = []
        path = self._process_file()
        self.events_file = path
        if path is not None:
            sinks.append(JsonlSink(path))
        if self._stderr:
            sinks.append(StderrSink())
        sinks.extend(self._extra)
        for factory in self._factories:
            try:
                sinks.append(factory())
            except Exception as exc:  # no ledger: the JSONL record still exists
                self._factory_errors.append(f"{type(exc).__name__}: {exc}")
        self.sink = MultiSink(sinks)
        self._sink_errors_seen = 0

    def _reset_counters(self) -> None:
        self.written = 0
        self.dropped = 0
        self.repeats: Counter[tuple[str, str]] = Counter()
        self.suppressed: Counter[tuple[str, str]] = Counter()
        self.detections: Counter[str] = Counter()
        self.blocked = 0
        self.errors_reported: set[str] = set()
        self.error_count = 0

    def _after_fork(self) -> None:
        # A forked child (DataLoader worker, fork start method) writes its own file, starts in
        # its set-up phase (its seeding is legitimate) and counts from zero.
        try:
            self._lock = threading.RLock()
            self.local = threading.local()
            self._make_sinks()
            self._reset_counters()
            self.training_started = False
            self.steps = 0
            self._report_factory_errors()
        except Exception:  # the child must run even if its guard cannot write
            self.active = False

    def _report_factory_errors(self) -> None:
        for msg in self._factory_errors:
            self.error("sink-setup", RuntimeError(msg))
        self._factory_errors.clear()

    # ------------------------------------------------------------------ digests of files
    def file_digest(self, path: str) -> str | None:
        """``sha256:<hex>`` of a regular file (None for anything else), hashed with the guard's
        busy flag set (its own reads are not audited and do not name the next bare unpickling).
        Memoised per process on (device, inode, size, mtime, ctime): loading the same unchanged
        file again costs one ``stat``."""
        import stat as stat_mod

        from trainguard.integrity.hashing import file_digest

        try:
            st = os.stat(path)
        except OSError:
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = self._digests.get(key)
        if hit is not None:
            return hit
        prev = getattr(self.local, "busy", False)
        self.local.busy = True
        try:
            digest = "sha256:" + file_digest(Path(path)).hex()
        except OSError:
            return None
        finally:
            self.local.busy = prev
        if len(self._digests) < 4096:
            self._digests[key] = digest
        return digest

    def record_load(self, digest: str, path: str) -> None:
        """Remember a loaded file (a checkpoint saved later names it as an input)."""
        if digest not in self.loaded and len(self.loaded) < MAX_INPUTS:
            self.loaded[digest] = path

    # ------------------------------------------------------------------ busy flag
    def busy(self) -> bool:
        """True while this thread is inside the guard (its own file writes are not audited)."""
        return bool(getattr(self.local, "busy", False))

    # ------------------------------------------------------------------ emitting
    def emit(self, kind: str, subject: str, details: Mapping[str, Any] | None = None, *,
             severity: Severity | None = None, rule_id: str | None = None) -> Event | None:
        """Build and write an event; never raises (failures become one guard.error)."""
        try:
            event = Event.now(kind, subject, details or {}, severity=severity, rule_id=rule_id)
        except Exception as exc:
            self.error("event", exc)
            return None
        self.write(event)
        return event

    def write(self, event: Event) -> None:
        """Write a ready event to the sinks, within the process's event budget."""
        prev = getattr(self.local, "busy", False)
        self.local.busy = True
        try:
            with self._lock:
                if self.written >= self.config.max_events:
                    self.dropped += 1
                    return
                self.written += 1
            self.sink.emit(event)
            if len(self.sink.errors) > self._sink_errors_seen:
                self._sink_errors_seen = len(self.sink.errors)
                if self._sink_errors_seen == 1:
                    # stderr directly: the failing sink may be the only file we have
                    sys.stderr.write(f"trainguard: cannot write guard events "
                                     f"({self.sink.errors[0]}); the job continues\n")
        except Exception as exc:
            self.error("sink", exc)
        finally:
            self.local.busy = prev

    def emit_event(self, event: Event) -> None:
        """Entry point for the training monitors (``TrainingMonitor(emit, ...)``): in enforce
        mode a detection at or above ``enforce_at`` stops the job at the end of the step."""
        if event.severity is not None:
            self.detections[event.rule_id or event.kind] += 1
            if self.enforce and event.severity >= self.config.enforce_at:
                details = dict(event.details)
                details["action"] = "blocked"
                try:
                    event = Event(event.kind, event.subject, details, event.identity,
                                  event.time, event.severity, event.rule_id)
                except Exception as exc:
                    self.error("monitor-event", exc)
                self.blocked += 1
                msg = str(details.get("message") or event.kind)
                # the monitors raise their own MonitorViolation in enforce mode; this is the
                # backstop for a monitor that only reports
                if self.pending_stop is None:
                    self.pending_stop = GuardStopped(f"{event.rule_id or event.kind}: {msg}",
                                                     rule_id=event.rule_id or event.kind)
        self.write(event)

    def detect(self, rule_id: str, subject: str, message: str, *,
               location: CodeLocation = UNKNOWN, kind: str = EventKind.GUARD_AUDIT,
               severity: Severity | None = None, details: Mapping[str, Any] | None = None,
               can_block: bool = True, force_block: bool = False) -> None:
        """Record a detection; in enforce mode, raise :class:`GuardStopped` when it is at or
        above ``enforce_at`` (or ``force_block``: the load gate refuses every disallowed
        global). Identical detections beyond ``max_repeats`` are only counted."""
        sev = severity if severity is not None else _rule_severity(rule_id)
        block = self.enforce and can_block and (force_block or sev >= self.config.enforce_at)
        self.detections[rule_id] += 1
        if block:
            self.blocked += 1
        key = (rule_id, f"{location.file}:{location.line}:{subject}")
        with self._lock:
            self.repeats[key] += 1
            n = self.repeats[key]
            if n > self.config.max_repeats:
                self.suppressed[key] += 1
        if n <= self.config.max_repeats:
            body: dict[str, Any] = {"message": message, "location": location.to_dict(),
                                    "action": "blocked" if block else "recorded",
                                    "mode": self.mode}
            if n == self.config.max_repeats:
                body["note"] = "further identical detections are only counted"
            body.update(details or {})
            self.emit(kind, subject, body, severity=sev, rule_id=rule_id)
        if block:
            raise GuardStopped(f"{rule_id}: {message} [{location}]", rule_id=rule_id)

    def error(self, where: str, exc: BaseException) -> None:
        """An internal failure: reported once per place, never raised."""
        self.error_count += 1
        if where in self.errors_reported or len(self.errors_reported) > 100:
            return
        self.errors_reported.add(where)
        try:
            tb = traceback.format_exception(type(exc), exc, exc.__traceback__)[-3:]
            event = Event.now(EventKind.GUARD_ERROR, where,
                              {"message": f"guard error in {where}: {type(exc).__name__}: "
                                          f"{exc}"[:500],
                               "traceback": "".join(tb)[-2000:]},
                              severity=Severity.LOW, rule_id="TG-GRD-015")
            self.write(event)
        except Exception:  # noqa: S110 - the last line of defence must not raise either
            pass

    def protect(self, where: str, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``func``; an exception (other than GuardStopped) becomes a guard.error."""
        try:
            return func(*args, **kwargs)
        except GuardStopped:
            raise
        except Exception as exc:
            self.error(where, exc)
            return None

    # ------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        """Counts for this process (the ``guard.summary`` event and ``guard.report()``)."""
        return {
            "mode": self.mode, "steps": self.steps, "events_written": self.written,
            "events_dropped": self.dropped,
            "detections": dict(self.detections), "blocked": self.blocked,
            "suppressed_repeats": sum(self.suppressed.values()),
            "guard_errors": self.error_count, "sink_errors": list(self.sink.errors[:5]),
            "events_file": str(self.events_file) if self.events_file else None,
        }

    def close(self) -> None:
        """Write the process summary and close the sinks (idempotent)."""
        if not self.active:
            return
        summary = self.summary()
        # the summary is always written, even past the event budget
        try:
            event = Event.now(GUARD_SUMMARY, f"pid:{os.getpid()}", summary)
            self.local.busy = True
            self.sink.emit(event)
        except Exception:  # noqa: S110 - exiting; nothing left to report to
            pass
        self.active = False
        with contextlib.suppress(Exception):
            self.sink.close()
