"""Cost of the runtime guard's audit hook, load gate wrappers and tripwires (issue 5).

Each measurement runs in a fresh interpreter, once without and once with the guard installed
(``trainguard.guard.install``), and prints one JSON line:

- ``audit-ignored``: events the hook does not watch (``sys.audit`` of an unknown name), per s
- ``audit-open-read``: ``open(f).close()`` of a small file (a watched event: read modes only
  update the thread's last-read file), per s
- ``import-torch``: seconds to ``import torch`` (~17k audit events, the post-import snapshot)
- ``tripwire-check``: seconds for one full tripwire check after torch is imported
- ``step-no-monitors``: seconds per ``guard.step()`` with a tripwire check every step and every
  10 steps (monitors off: their cost is in bench_guard_overhead.py)

Usage: python benchmarks/bench_guard_audit.py [--events N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, sys, time, tempfile
guarded = sys.argv[1] == "1"
what = sys.argv[2]
n = int(sys.argv[3])
if guarded:
    from trainguard import guard
    from trainguard.guard.config import GuardConfig
    guard.install(config=GuardConfig(check_every=int(sys.argv[4]) if len(sys.argv) > 4 else 100),
                  events=os.path.join(tempfile.mkdtemp(), "e.jsonl"), stderr=False)
out = {}
if what == "audit-ignored":
    t = time.perf_counter()
    for _ in range(n):
        sys.audit("trainguard.bench.ignored", 1)
    out["seconds"] = time.perf_counter() - t
elif what == "audit-open-read":
    p = os.path.join(tempfile.mkdtemp(), "f")
    open(p, "w").close()
    t = time.perf_counter()
    for _ in range(n):
        open(p).close()
    out["seconds"] = time.perf_counter() - t
elif what == "import-torch":
    t = time.perf_counter()
    import torch
    out["seconds"] = time.perf_counter() - t
elif what == "tripwire-check":
    import torch
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    if guarded:
        from trainguard.guard import _PARTS
        _PARTS.tripwires.check("bench")
        t = time.perf_counter()
        for _ in range(n):
            _PARTS.tripwires.check("bench")
        out["seconds"] = (time.perf_counter() - t) / n
    else:
        out["seconds"] = 0.0
elif what == "step-no-monitors":
    import torch
    from trainguard import guard as g
    if guarded:
        from trainguard.guard import _PARTS
        _PARTS.monitor_failed = True  # monitors off: measured elsewhere
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters())
    t = time.perf_counter()
    for _ in range(n):
        g.step(None, opt, None)
    out["seconds"] = (time.perf_counter() - t) / n
print(json.dumps(out))
"""


def measure(what: str, guarded: bool, n: int, extra: list[str] | None = None) -> float:
    proc = subprocess.run([sys.executable, "-c", CHILD, "1" if guarded else "0", what, str(n),
                           *(extra or [])], capture_output=True, text=True, check=True)
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    args = ap.parse_args()
    import trainguard

    base = {"tool": "trainguard-guard", "version": trainguard.__version__,
            "python": sys.version.split()[0]}
    for what in ("audit-ignored", "audit-open-read"):
        n = args.events if what == "audit-ignored" else args.events // 10
        off, on = measure(what, False, n), measure(what, True, n)
        print(json.dumps(base | {"measure": what, "events": n,
                                 "events_per_s_without": round(n / off),
                                 "events_per_s_with": round(n / on),
                                 "ns_per_event_added": round((on - off) / n * 1e9, 1)}))
    off, on = measure("import-torch", False, 1), measure("import-torch", True, 1)
    print(json.dumps(base | {"measure": "import-torch", "seconds_without": round(off, 3),
                             "seconds_with": round(on, 3),
                             "overhead_pct": round((on - off) / off * 100, 1)}))
    t = measure("tripwire-check", True, 200)
    print(json.dumps(base | {"measure": "tripwire-check", "seconds": round(t, 6)}))
    for k in ("1", "10"):
        on = measure("step-no-monitors", True, 2000, [k])
        print(json.dumps(base | {"measure": "step-no-monitors", "check_every": int(k),
                                 "seconds_per_step": round(on, 7)}))


if __name__ == "__main__":
    main()
