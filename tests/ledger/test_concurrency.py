"""Several writer processes, and a writer killed with SIGKILL mid-append, on every store."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from ledger_helpers import make_event

from trainguard.ledger import open_ledger

WRITERS = 4
PER_WRITER = 150


def _writer(url: str, wid: int, batch: bool, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    led = open_ledger(url)
    got: list[int] = []
    events = [make_event(wid * 100_000 + i, job=f"writer-{wid}") for i in range(PER_WRITER)]
    if batch:
        for k in range(0, PER_WRITER, 10):
            got += led.append_many(events[k:k + 10])
    else:
        for e in events:
            got.append(led.append(e))
    led.close()
    out.put((wid, got))


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batched"])
def test_concurrent_writers_lose_nothing_and_leave_no_gaps(ledger_url: str, batch: bool) -> None:
    open_ledger(ledger_url).close()  # create first: the writers race only on appends
    ctx = multiprocessing.get_context("fork")
    out: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [ctx.Process(target=_writer, args=(ledger_url, w, batch, out))
             for w in range(WRITERS)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    total = WRITERS * PER_WRITER
    all_indices = sorted(i for got in results.values() for i in got)
    assert all_indices == list(range(total))  # unique, gap-free
    with open_ledger(ledger_url) as led:
        assert led.size == total
        assert led.verify().size == total
        jobs = Counter(e.event.identity.job for e in led.entries())  # type: ignore[union-attr]
        assert jobs == {f"writer-{w}": PER_WRITER for w in range(WRITERS)}
        for wid, got in results.items():
            # each index a writer was told belongs to that writer's event
            for k, idx in enumerate(got):
                ev = led.entry(idx).event
                assert ev == make_event(wid * 100_000 + k, job=f"writer-{wid}")


CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from ledger_helpers import make_event
    from trainguard.ledger import open_ledger
    led = open_ledger({url!r})
    i = 0
    while True:
        batch = [make_event(i + k) for k in range(3)]
        idx = led.append_many(batch)
        for k, j in enumerate(idx):
            print(j, i + k, flush=True)   # reported only after the commit returned
        i += 3
""")


@pytest.mark.slow
def test_kill_9_during_appends_loses_no_committed_entry(ledger_url: str) -> None:
    open_ledger(ledger_url).close()
    tests = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, "-c", CHILD.format(tests=tests, url=ledger_url)],
                            stdout=subprocess.PIPE, text=True)
    committed: list[tuple[int, int]] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        committed.append(tuple(int(x) for x in line.split()))  # type: ignore[arg-type]
        if len(committed) >= 300:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # whatever else it printed before dying was committed too
    committed += [tuple(int(x) for x in line.split()) for line in proc.stdout.read().splitlines()
                  if len(line.split()) == 2]  # type: ignore[misc]
    assert proc.returncode == -signal.SIGKILL
    with open_ledger(ledger_url) as led:
        result = led.verify()  # the ledger is intact (no torn entry, no gap)
        assert result.size >= len(committed)
        for idx, i in committed:
            assert led.entry(idx).event == make_event(i)
        # and it keeps working
        assert led.append(make_event(-1)) == result.size
