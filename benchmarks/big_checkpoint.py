"""Scan time on a 1 GiB torch checkpoint, per tool: best of 3 wall times, warm page cache.

The checkpoint is a ``torch.save`` state_dict of 128 float32 tensors (2048x1024, 1 GiB of tensor
bytes) written once into benchmarks/.corpus/big/ by corpus.py and reused. Caches cannot be dropped
here (no root over the host's page cache), so every run reads from a warm cache: the numbers are
parsing and hashing cost, not disk speed. One warm-up read precedes the runs.

    benchmarks/.bench-venv/bin/python benchmarks/big_checkpoint.py [--tools a,b] [--repeats 3]

Prints one JSON line per tool (tool, version, bytes, seconds = best, runs, GB/s, verdict) and
writes them to benchmarks/results/big_checkpoint.jsonl. compare_scanners.py calls
:func:`measure_big` too, so results/latest.jsonl holds the same lines.
Target (issue 2): trainguard at or below picklescan, and >= 50x faster than modelaudit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scanners import TOOLS, run_tool  # noqa: E402

BIG = HERE / ".corpus" / "big" / "state_dict_1GiB.pt"
MAIN_PYTHON = HERE.parent / ".venv" / "bin" / "python"


def ensure_big() -> Path:
    """The checkpoint, built by corpus.py in the project venv if it is not there yet."""
    if not BIG.exists():
        subprocess.run([str(MAIN_PYTHON), str(HERE / "corpus.py"), "--big-only"], check=True)
    return BIG


def _warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(1 << 24):
            pass


def measure_big(tools: list[str], repeats: int = 3, timeout: float = 900.0
                ) -> list[dict[str, Any]]:
    """Best-of-``repeats`` wall time of each tool on the 1 GiB checkpoint."""
    path = ensure_big()
    size = path.stat().st_size
    _warm(path)
    out = []
    for name in tools:
        tool = TOOLS[name]
        runs: list[float] = []
        verdict, note, rc = "clean", "", 0
        for _ in range(repeats):
            seconds, rc, v = run_tool(tool, path, timeout)
            runs.append(round(seconds, 3))
            verdict, note = v.label, v.note
            if rc == -1 and v.error:  # a timeout: do not wait for it again
                break
        best = min(runs)
        rec = {"bench": "big", "tool": name, "version": tool.version, "case": path.name,
               "bytes": size, "seconds": best, "runs": runs,
               "gb_per_s": round(size / best / 1e9, 2), "verdict": verdict, "rc": rc,
               "note": note[:200]}
        out.append(rec)
        print(f"[big] {name}: best {best:.3f} s of {runs} ({verdict})", file=sys.stderr,
              flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    records = measure_big(tools, args.repeats)
    base = next((r["seconds"] for r in records if r["tool"] == "trainguard"), None)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with (results / "big_checkpoint.jsonl").open("w") as f:
        for r in records:
            if base:
                r["vs_trainguard"] = round(r["seconds"] / base, 1)
            print(json.dumps(r))
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
