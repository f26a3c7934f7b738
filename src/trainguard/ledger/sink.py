"""Event sinks that write to a ledger: batched, in a background thread, never raising in emit.

Example::

    from trainguard.core.events import Event, EventKind
    from trainguard.ledger import open_ledger
    from trainguard.ledger.sink import LedgerSink
    sink = LedgerSink(open_ledger("ledger.db"))
    sink.emit(Event.now(EventKind.RUN_STARTED, "run-42"))
    sink.close()                       # flushes; sink.errors lists what could not be written
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from trainguard.core.events import Event
from trainguard.ledger.store import Ledger


class BatchingSink:
    """Buffers events and hands them to ``send`` in batches (from a background thread).

    ``send`` failures are retried with exponential backoff (``retries`` times); a batch that
    still fails is kept for the next flush while the buffer has room (``max_buffer`` events),
    else counted in ``dropped``. A training job must never block or die on its audit trail, so
    ``emit`` only appends to a list; ``close`` flushes what it can within ``close_timeout``.
    """

    def __init__(self, send: Callable[[list[Event]], object], *, batch_size: int = 500,
                 flush_interval: float = 0.5, retries: int = 5, backoff: float = 0.2,
                 max_buffer: int = 100_000, close_timeout: float = 30.0) -> None:
        self._send = send
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.retries = retries
        self.backoff = backoff
        self.max_buffer = max_buffer
        self.close_timeout = close_timeout
        self.errors: list[str] = []
        self.dropped = 0
        self.sent = 0
        self._buf: list[Event] = []
        self._cond = threading.Condition()
        self._closed = False
        self._send_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="trainguard-ledger-sink",
                                        daemon=True)
        self._thread.start()

    def emit(self, event: Event) -> None:
        with self._cond:
            if self._closed:
                self.dropped += 1
                return
            if len(self._buf) >= self.max_buffer:
                self.dropped += 1
                return
            self._buf.append(event)
            if len(self._buf) >= self.batch_size:
                self._cond.notify()

    def _take(self) -> list[Event]:
        with self._cond:
            batch, self._buf = self._buf[:self.batch_size], self._buf[self.batch_size:]
            return batch

    def _putback(self, batch: list[Event]) -> None:
        with self._cond:
            room = self.max_buffer - len(self._buf)
            keep = batch[:max(0, room)]
            self.dropped += len(batch) - len(keep)
            self._buf[:0] = keep

    def _deliver(self, batch: list[Event], deadline: float | None = None) -> bool:
        delay = self.backoff
        for attempt in range(self.retries + 1):
            try:
                self._send(batch)
                self.sent += len(batch)
                return True
            except Exception as exc:  # the sink reports, never raises into the job
                msg = f"{type(exc).__name__}: {exc}"
                if attempt == self.retries or (deadline is not None
                                               and time.monotonic() + delay > deadline):
                    self.errors.append(msg)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
        return False

    def flush(self, deadline: float | None = None) -> bool:
        """Send everything buffered now; False if some batch could not be sent."""
        with self._send_lock:
            while True:
                batch = self._take()
                if not batch:
                    return True
                if not self._deliver(batch, deadline):
                    self._putback(batch)
                    return False

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed and len(self._buf) < self.batch_size:
                    self._cond.wait(self.flush_interval)
                if self._closed:
                    return
            self.flush()

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        self._thread.join(self.close_timeout)
        self.flush(time.monotonic() + self.close_timeout)
        with self._cond:
            if self._buf:
                self.errors.append(f"{len(self._buf)} event(s) could not be written")
                self.dropped += len(self._buf)
                self._buf.clear()


class LedgerSink(BatchingSink):
    """Events to a local ledger (SQLite or PostgreSQL), one transaction per batch."""

    def __init__(self, ledger: Ledger, **options: float) -> None:
        self.ledger = ledger
        super().__init__(ledger.append_many, **options)  # type: ignore[arg-type]
