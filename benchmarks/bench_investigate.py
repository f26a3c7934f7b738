"""Investigation time against the size of the record: N events (the sabotage scenario of the
end-to-end test plus N background events from 13 other jobs: metrics, audit events, unknown
kinds), read from memory, from a JSONL file and from the SQLite ledger; HTML rendering.

    .venv/bin/python benchmarks/bench_investigate.py [--sizes 10000,100000] [--repeats 3]

Prints one JSON line per measurement (tool, version, events, seconds = best of the repeats,
events/s). There is no other tool that ranks causes from a training record to compare with; the
useful ratio is to the time to read the record at all (the ``read`` lines), which any tool pays.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import trainguard  # noqa: E402
from investigate.helpers import Clock, ev, synthetic_events, who, write_jsonl  # noqa: E402
from trainguard.core.events import Event, EventKind  # noqa: E402
from trainguard.core.findings import Severity  # noqa: E402
from trainguard.investigate import investigate  # noqa: E402
from trainguard.investigate.html import render_html  # noqa: E402
from trainguard.investigate.sources import read_events_jsonl  # noqa: E402
from trainguard.ledger import open_ledger  # noqa: E402


def record(n: int) -> list[Event]:
    clock = Clock()
    events = synthetic_events(clock=clock)
    b = who("alice", "B")
    kinds = (EventKind.GUARD_METRIC, EventKind.GUARD_AUDIT, "custom.kind")
    for i in range(n - len(events)):
        events.append(ev(kinds[i % 3], f"s{i}", {"step": 100 + i, "loss": 0.5, "message": "m" * 50},
                         identity=b if i % 2 else who(f"u{i % 97}", f"job{i % 13}"), t=clock(),
                         severity=Severity.LOW if i % 1000 == 0 else None))
    return events


def best(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def line(what: str, n: int, seconds: float) -> None:
    print(json.dumps({"tool": f"trainguard investigate ({what})", "version": trainguard.__version__,
                      "events": n, "seconds": round(seconds, 4),
                      "events_per_s": round(n / seconds) if seconds else None}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for n in (int(s) for s in args.sizes.split(",")):
        measure(n, args.repeats)


def measure(n: int, repeats: int) -> None:
    events = record(n)
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = write_jsonl(Path(tmp) / "events.jsonl", events)
        ledger = open_ledger(Path(tmp) / "ledger.db")
        ledger.append_many(events)
        s, _ = best(lambda: read_events_jsonl(jsonl), repeats)
        line("read JSONL only", n, s)
        s, _ = best(lambda: list(ledger.entries()), repeats)
        line("read ledger only", n, s)
        s, inv = best(lambda: investigate(events, "B"), repeats)
        assert inv.causes[0].identities[0].who.startswith("mallory")
        line("in memory", n, s)
        s, _ = best(lambda: investigate(jsonl, "B"), repeats)
        line("JSONL", n, s)
        s, _ = best(lambda: investigate(ledger, "B"), repeats)
        line("SQLite ledger", n, s)
        s, _ = best(lambda: render_html(inv), repeats)
        line("render HTML", n, s)
        ledger.close()


if __name__ == "__main__":
    main()
