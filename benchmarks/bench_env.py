"""``trainguard env verify`` on an environment with torch, beside a plain sha256 of the same bytes.

Measured in one run, on the same files, after one warming pass (page cache warm for all):

- ``sha256 (hashlib, 1 thread)``: ``hashlib.file_digest`` over every regular file the full
  verify hashes, one after the other: the hashing limit of one core, which is what a
  user's own script would cost.
- ``sha256sum (coreutils)``: the same files through ``xargs sha256sum`` (``--sha256sum``).
- ``env verify`` (RECORD hashes only), ``env verify --against SNAP`` (every file), ``env verify
  --quick`` (size + ctime, no hashing), in process; and the ``trainguard env verify --quick``
  command (interpreter start-up included).
- ``env snapshot``.

Each measurement prints one JSON line; ``--out`` gets the Markdown table (default
benchmarks/results/env.md). Usage::

    .venv/bin/python benchmarks/bench_env.py [--python .venv/bin/python] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


CPU: dict[str, float] = {}


def _cpu() -> float:
    import resource

    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def timed(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    """Wall times of ``repeat`` runs; the CPU seconds of the fastest run go to CPU["last"]
    (user + system, all threads and children: robust to other processes loading the machine)."""
    times, out, best_cpu = [], None, 0.0
    for _ in range(repeat):
        c0 = _cpu()
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
        if times[-1] == min(times):
            best_cpu = _cpu() - c0
    CPU["last"] = best_cpu
    return times, out


def plain_sha256(paths: list[str]) -> int:
    n = 0
    for p in paths:
        with open(p, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
        n += 1
    return n


def sha256sum(paths: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", delete=False) as fh:
        fh.write("\0".join(paths))
    try:
        subprocess.run(["xargs", "-0", "-a", fh.name, "sha256sum"], check=True,
                       stdout=subprocess.DEVNULL)
    finally:
        os.unlink(fh.name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python", default=str(REPO / ".venv" / "bin" / "python"))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sha256sum", action="store_true", help="also time coreutils sha256sum")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "env.md"))
    args = ap.parse_args()

    from trainguard import __version__, envcheck

    tmp = Path(tempfile.mkdtemp(prefix="bench-env-"))
    snap_path = tmp / "snap.json"
    t0 = time.perf_counter()
    snap = envcheck.snapshot(args.python, environ={})
    first_snapshot = time.perf_counter() - t0  # also warms the page cache
    envcheck.save_snapshot(snap, snap_path)
    files = [str(snap.path(k)) for k, r in snap.files.items() if r.kind == "file"]
    nbytes = sum(r.size for r in snap.files.values() if r.kind == "file")
    has_torch = any(d["name"] == "torch" for d in snap.distributions)
    meta = {"python": args.python, "files": len(files), "bytes": nbytes, "torch": has_torch,
            "cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
            "platform": platform.platform()}
    print(json.dumps({"meta": meta}), flush=True)

    rows: list[dict[str, object]] = []

    def record(tool: str, times: list[float], nbytes_: int, note: str = "") -> None:
        best = min(times)
        row = {"tool": tool, "version": __version__ if "trainguard" in tool else "",
               "bytes": nbytes_, "seconds": round(best, 4),
               "median_s": round(statistics.median(times), 4),
               "gb_per_s": round(nbytes_ / best / 1e9, 3) if nbytes_ else None,
               "cpu_s": round(CPU.get("last", 0.0), 4), "runs": len(times), "note": note}
        rows.append(row)
        print(json.dumps(row), flush=True)

    env = {"environ": {}}
    CPU["last"] = 0.0
    record("trainguard env snapshot (first, cold-ish)", [first_snapshot], nbytes)
    # one pass; every tool measured back to back on the same warm page cache
    base, _n = timed(lambda: plain_sha256(files), args.repeat)
    record("sha256 (hashlib, 1 thread)", base, nbytes, "same files as verify --against")
    full, rep = timed(lambda: envcheck.verify(args.python, against=snap_path, **env),
                      args.repeat)
    findings = len(rep.findings)  # type: ignore[attr-defined]
    base_cpu = rows[-1]["cpu_s"]
    record("trainguard env verify --against SNAP", full, nbytes,
           f"{findings} findings; wall ratio to 1-thread sha256 {min(full) / min(base):.2f}, "
           f"CPU ratio {CPU['last'] / float(base_cpu or 1):.2f}")  # type: ignore[arg-type]
    rec, rep2 = timed(lambda: envcheck.verify(args.python, **env), args.repeat)
    record("trainguard env verify (RECORD only)", rec,
           sum(f.size for f in rep2.files),  # type: ignore[attr-defined]
           "hashes RECORD-listed files only")
    quick, _ = timed(lambda: envcheck.verify(against=snap_path, quick=True, **env),
                     args.repeat * 3)
    record("trainguard env verify --quick (in process)", quick, 0,
           f"{len(files)} files: quick index + one lstat per file")
    old_path = tmp / "snap-without-index.json"  # as written before the quick index existed
    doc = json.loads(snap_path.read_bytes())
    doc.pop("quick", None)
    old_path.write_text(json.dumps(doc))
    quick_old, _ = timed(lambda: envcheck.verify(against=old_path, quick=True, **env),
                         args.repeat)
    record("trainguard env verify --quick, snapshot without index (in process)", quick_old, 0,
           "decodes the whole JSON snapshot first")
    exe = [sys.executable, "-m", "trainguard.cli.main"]
    cli_env = {k: v for k, v in os.environ.items()
               if not k.startswith("PYTHON") and k not in ("LD_PRELOAD",)}
    cli, _ = timed(lambda: subprocess.run(
        [*exe, "env", "verify", "--against", str(snap_path), "--quick"], env=cli_env,
        stdout=subprocess.DEVNULL, check=False), args.repeat)
    record("trainguard env verify --quick (command)", cli, 0, "includes interpreter start")
    snaps, _ = timed(lambda: envcheck.snapshot(args.python, environ={}), args.repeat)
    record("trainguard env snapshot", snaps, nbytes)
    if args.sha256sum:
        ss, _ = timed(lambda: sha256sum(files), 1)
        record("sha256sum (coreutils, xargs)", ss, nbytes)

    lines = [
        "# `trainguard env` benchmark", "",
        f"Environment: `{args.python}` ({len(files)} files, {nbytes / 1e9:.2f} GB, torch: "
        f"{has_torch}); {os.cpu_count()} CPUs; 1-min load average at start "
        f"{meta['load_avg_1m']:.1f}, at the end {os.getloadavg()[0]:.1f}. Best of "
        f"{args.repeat} (quick: {args.repeat * 3}) after a "
        "warming pass; page cache warm. Produced by `benchmarks/bench_env.py`.", "",
        "| what | seconds (best) | median | CPU s (best run) | GB/s | note |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gbs = f"{r['gb_per_s']:.2f}" if r["gb_per_s"] else ""
        lines.append(f"| {r['tool']} | {r['seconds']:.3f} | {r['median_s']:.3f} | "
                     f"{r['cpu_s']:.2f} | {gbs} | {r['note']} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
