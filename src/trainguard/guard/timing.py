"""Per-rank step time split: the user's own work, phases it marks, and the guard's own time.

The monitor's ``step()`` call is the heartbeat: the time between the end of one call and the
start of the next is the rank's *work* (data, forward, backward, optimizer and any collective the
framework runs); the time inside ``step()`` is the guard's (including the wait in the cross-rank
gather, where fast ranks wait for a slow one, which is why it is kept apart). Optional phases
(``with timer.phase("data"): ...``) split the work further for the metric events.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import deque
from collections.abc import Iterator


class StepTimer:
    """Measures work and guard time per step; keeps a bounded window of recent work times."""

    def __init__(self, window: int = 64) -> None:
        self.recent: deque[float] = deque(maxlen=window)
        self._arrivals: list[float] = []
        self._step_started: float | None = None
        #: bound the arrival list when no gather ever takes it (single process)
        self._max_arrivals = 4096
        self._guard_started: float | None = None
        self.last_work_s: float | None = None
        self.last_guard_s: float = 0.0
        self.phases: dict[str, float] = {}

    @property
    def step_started(self) -> float | None:
        """Monotonic time the current step's work began (None before the first step)."""
        return self._step_started

    def begin_guard(self) -> None:
        """Called on entry to the monitor's ``step()``: the rank's work for this step ended."""
        now = time.monotonic()
        self._guard_started = now
        # Wall clock, not monotonic: arrivals are compared across ranks (crossrank.py).
        self._arrivals.append(time.time())
        if len(self._arrivals) > self._max_arrivals:
            del self._arrivals[: -self._max_arrivals]
        if self._step_started is not None:
            work = now - self._step_started
            self.last_work_s = work
            self.recent.append(work)

    def end_guard(self) -> None:
        """Called on exit from ``step()``: the next step's work begins now."""
        now = time.monotonic()
        if self._guard_started is not None:
            self.last_guard_s = now - self._guard_started
        self._step_started = now

    def typical_work_s(self) -> float | None:
        """Median work time over the recent window (None until a step was measured)."""
        return statistics.median(self.recent) if self.recent else None

    def take_arrivals(self) -> list[float]:
        """Wall-clock times this rank finished each step since the last call."""
        out, self._arrivals = self._arrivals, []
        return out

    def take_phases(self) -> dict[str, float]:
        out, self.phases = self.phases, {}
        return out

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time a named part of the step (accumulated until the next metric event)."""
        t0 = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.monotonic() - t0
