"""Watchdog: dump the stacks of a slow or hung rank, with the rank, to the event sink.

A daemon thread watches the heartbeat that the monitor's ``step()`` gives at the end of each step.
When the current step has run longer than ``max(slow_floor_s, slow_factor x typical step)`` it
emits one TG-GRD-110 event for that step carrying every thread's stack
(``sys._current_frames()``), and when it passes ``hang_timeout_s`` one TG-GRD-111 event. Each
event names the innermost frame of the training thread that lies outside the standard library,
site-packages and trainguard: the code location where the rank is stuck (a payload's
``time.sleep``, a blocking collective's call site).

The Python thread needs the GIL; a hang in native code that holds it would silence it. For that
case ``dump_file`` arms :func:`faulthandler.dump_traceback_later` (a C thread that needs no GIL)
at every heartbeat, writing all stacks to that file after ``hang_timeout_s``.
"""

from __future__ import annotations

import faulthandler
import sys
import sysconfig
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from trainguard.core.findings import Severity
from trainguard.guard.detection import Detection


@dataclass(frozen=True)
class WatchdogConfig:
    #: a step is slow past ``max(slow_floor_s, slow_factor * typical step time)``
    slow_factor: float = 5.0
    slow_floor_s: float = 2.0
    #: a step is hung past this many seconds
    hang_timeout_s: float = 300.0
    #: how often the thread looks
    poll_s: float = 0.25
    #: frames kept per thread stack
    stack_limit: int = 40
    #: also arm faulthandler's C-level dump to this file (see module docstring)
    dump_file: str | None = None


def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    pre = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    pre.add(str(Path(__file__).resolve().parents[1]))  # trainguard itself
    return tuple(sorted(pre))


_LIB = _library_prefixes()


def _is_library(filename: str) -> bool:
    return filename.startswith((*_LIB, "<"))


def thread_stacks(limit: int = 40, skip: int | None = None) -> dict[str, list[str]]:
    """Every thread's stack as ``file:line in function`` strings, innermost last."""
    names = {t.ident: t.name for t in threading.enumerate()}
    out: dict[str, list[str]] = {}
    for ident, frame in sys._current_frames().items():
        if ident == skip:
            continue
        frames = traceback.extract_stack(frame)[-limit:]
        out[f"{names.get(ident, 'thread')}:{ident}"] = [
            f"{f.filename}:{f.lineno} in {f.name}" for f in frames]
    return out


def user_location(frame: Any) -> str | None:
    """Innermost frame outside the standard library, site-packages and trainguard."""
    for f in reversed(traceback.extract_stack(frame)):
        if not _is_library(f.filename):
            return f"{f.filename}:{f.lineno} in {f.name}"
    return None


class Watchdog:
    """The heartbeat watcher. ``beat()`` from the training thread; ``stop()`` at the end."""

    def __init__(self, emit: Callable[[Detection, int], None], config: WatchdogConfig | None = None,
                 ) -> None:
        self.config = config or WatchdogConfig()
        self._emit = emit
        self._lock = threading.Lock()
        self._beat_at: float | None = None
        self._step = 0
        self._typical: float | None = None
        self._reported: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._main_ident: int | None = None
        self._dump_fh: IO[str] | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        if self.config.dump_file:
            self._dump_fh = open(self.config.dump_file, "a", encoding="utf-8")  # noqa: SIM115
        self._thread = threading.Thread(target=self._run, name="trainguard-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._dump_fh is not None:
            faulthandler.cancel_dump_traceback_later()
            self._dump_fh.close()
            self._dump_fh = None

    def beat(self, step: int, typical_step_s: float | None) -> None:
        """A step ended (``step`` just completed); the next one starts now."""
        with self._lock:
            self._beat_at = time.monotonic()
            self._step = step
            self._typical = typical_step_s
            self._reported.clear()
            self._main_ident = threading.get_ident()
        if self._dump_fh is not None:
            faulthandler.dump_traceback_later(self.config.hang_timeout_s, repeat=False,
                                              file=self._dump_fh)

    def pause(self) -> None:
        """Stop judging until the next ``beat()`` (evaluation, checkpointing, end of training)."""
        with self._lock:
            self._beat_at = None

    def _run(self) -> None:
        cfg = self.config
        while not self._stop.wait(cfg.poll_s):
            try:
                self._look()
            except Exception:  # noqa: S112 - the watchdog must never take the job down
                continue

    def _look(self) -> None:
        cfg = self.config
        with self._lock:
            if self._beat_at is None:
                return
            elapsed = time.monotonic() - self._beat_at
            step = self._step + 1
            typical = self._typical
            main = self._main_ident
            slow_at = max(cfg.slow_floor_s, cfg.slow_factor * (typical or 0.0))
            level = None
            if elapsed >= cfg.hang_timeout_s and "hang" not in self._reported:
                level = "hang"
            elif elapsed >= slow_at and "slow" not in self._reported:
                level = "slow"
            if level is None:
                return
            self._reported.add(level)
            if level == "hang":
                self._reported.add("slow")
        frames = sys._current_frames()
        stacks = thread_stacks(cfg.stack_limit, skip=threading.get_ident())
        where = user_location(frames[main]) if main in frames else None
        details: dict[str, Any] = {"elapsed_s": round(elapsed, 3), "location": where,
                                   "stacks": stacks, "source": "watchdog",
                                   "typical_step_s": typical}
        if level == "hang":
            d = Detection("TG-GRD-111", Severity.HIGH,
                          f"step {step} has not finished after {elapsed:.1f}s: rank hung"
                          + (f" at {where}" if where else ""), details)
        else:
            d = Detection("TG-GRD-110", Severity.MEDIUM,
                          f"step {step} is slow ({elapsed:.2f}s, typical "
                          f"{(typical or 0.0):.3f}s)" + (f"; at {where}" if where else ""),
                          details)
        self._emit(d, step)
