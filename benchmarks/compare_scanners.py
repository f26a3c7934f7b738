"""trainguard scan side by side with the scanners users pick today, on the same corpus.

Run from the repository root with the bench venv (see benchmarks/README.md)::

    bash benchmarks/setup_bench_env.sh
    .venv/bin/python benchmarks/corpus.py
    benchmarks/.bench-venv/bin/python benchmarks/compare_scanners.py

What it does:

1. Every case of benchmarks/.corpus/manifest.json (malicious and benign) through every tool, one
   subprocess per case, the command a user types (see scanners.py for the commands and how each
   answer is read), with a timeout per case. One JSON line per measurement on stdout:
   ``{"tool", "version", "case", "kind", "bytes", "seconds", "verdict", "rc", "note"}``.
2. The whole corpus in one process per tool that takes a folder (``trainguard scan corpus/ -j 2``,
   ``picklescan -p corpus/``...), the way users run them on a model folder.
3. The 1 GiB checkpoint (big_checkpoint.py), best of 3 per tool.
4. A summary: per tool, malicious detected, benign flagged (false positives), errors, median and
   total seconds per case, and each ratio to trainguard (tool time / trainguard time: 10x means
   ten times slower than trainguard). Then every case trainguard missed or flagged wrongly.

Everything is written to benchmarks/results/latest.jsonl and the tables to
benchmarks/results/latest.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from scanners import (  # noqa: E402
    TOOLS,
    Verdict,
    environment,
    run_batch_fickling_lib,
    run_tool,
)

CORPUS = HERE / ".corpus"
RESULTS = HERE / "results"


def emit(record: dict[str, Any], sink: list[dict[str, Any]]) -> None:
    """Print one measurement as a JSON line and keep it."""
    sink.append(record)
    print(json.dumps(record), flush=True)


def per_case(tools: list[str], cases: list[dict[str, Any]], timeout: float,
             sink: list[dict[str, Any]]) -> None:
    """Each case through each tool (tools interleaved per case, so load drifts hit all alike).

    A ``batch`` tool (fickling-lib) takes all cases in one process instead; its seconds are the
    in-process time per case, start-up excluded.
    """
    batch: dict[str, tuple[float, Verdict]] = {}
    if any(TOOLS[t].batch for t in tools):
        t0 = time.perf_counter()
        batch = run_batch_fickling_lib([CORPUS / c["path"] for c in cases], timeout * len(cases))
        print(f"[bench] fickling-lib batch: {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    for n, case in enumerate(cases, 1):
        path = CORPUS / case["path"]
        for name in tools:
            tool = TOOLS[name]
            if tool.batch:
                got = batch.get(str(path.resolve()))
                seconds, rc, v = (got[0], 0, got[1]) if got else (
                    0.0, -1, Verdict(False, error=True, note="no result (batch crashed)"))
            else:
                seconds, rc, v = run_tool(tool, path, timeout)
            emit({
                "bench": "case", "tool": name, "version": tool.version, "case": case["case"],
                "kind": case["kind"], "bytes": case["bytes"],
                "seconds": round(seconds, 4) if rc != -1 or v.error else None,
                "verdict": v.label, "flagged": v.flagged, "error": v.error,
                "skipped": v.skipped, "rc": rc, "note": v.note,
            }, sink)
        print(f"[bench] {n}/{len(cases)} {case['case']}", file=sys.stderr, flush=True)


def whole_corpus(tools: list[str], timeout: float, jobs: int,
                 sink: list[dict[str, Any]]) -> None:
    """Each folder-capable tool once over .corpus/cases/ (one process, as users scan a folder)."""
    target = CORPUS / "cases"
    files = [p for p in target.rglob("*") if p.is_file()]
    nbytes = sum(p.stat().st_size for p in files)
    for name in tools:
        tool = TOOLS[name]
        if not tool.dirs or name == "fickling-lib":
            continue
        extra: tuple[str, ...] = ("-j", str(jobs)) if name == "trainguard" else ()
        seconds, rc, v = run_tool(tool, target, timeout, extra)
        emit({
            "bench": "corpus", "tool": name, "version": tool.version, "case": "cases/",
            "files": len(files), "bytes": nbytes, "seconds": round(seconds, 3), "rc": rc,
            "args": " ".join(extra), "verdict": v.label, "note": v.note[:200],
        }, sink)
        print(f"[bench] cases/ {name}: {seconds:.2f} s", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ summary
def _fmt_s(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _ratio(x: float | None, base: float | None) -> str:
    if x is None or not base:
        return "-"
    r = x / base
    return f"{r:.1f}x" if r < 100 else f"{r:.0f}x"


def summarise(records: list[dict[str, Any]], tools: list[str]) -> str:
    """The markdown tables: detection/FP/errors/time per tool, corpus runs, big file, misses."""
    cases = [r for r in records if r.get("bench") == "case"]
    n_mal = len({r["case"] for r in cases if r["kind"] == "malicious"})
    n_ben = len({r["case"] for r in cases if r["kind"] == "benign"})
    stats: dict[str, dict[str, Any]] = {}
    for name in tools:
        rs = [r for r in cases if r["tool"] == name]
        secs = [r["seconds"] for r in rs if r["seconds"] is not None]
        stats[name] = {
            "version": rs[0]["version"] if rs else TOOLS[name].version,
            "det": sum(r["flagged"] for r in rs if r["kind"] == "malicious"),
            "fp": sum(r["flagged"] for r in rs if r["kind"] == "benign"),
            "err_mal": sum(r["error"] for r in rs if r["kind"] == "malicious"),
            "err_ben": sum(r["error"] for r in rs if r["kind"] == "benign"),
            "skip": sum(r["skipped"] and not r["flagged"] for r in rs),
            "median": statistics.median(secs) if secs else None,
            "total": sum(secs) if secs else None,
        }
    base = stats.get("trainguard", {})
    out = [
        f"Corpus: {n_mal} malicious, {n_ben} benign cases. Detected = flagged unsafe (an error "
        "alone is not a detection); FP = benign case flagged unsafe; errors = crash, timeout or "
        "the tool's own 'could not finish' (malicious/benign); skipped = the tool saw nothing it "
        "scans. Time: wall seconds per case, one process per case (start-up included). Ratio = "
        "tool time / trainguard time.",
        "",
        "| tool | version | detected (malicious) | false positives (benign) | errors (mal/ben) "
        "| skipped | median s/case | total s | median vs trainguard | total vs trainguard |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in tools:
        s = stats[name]
        det = f"{s['det']}/{n_mal} ({100 * s['det'] / n_mal:.0f}%)" if n_mal else "-"
        fp = f"{s['fp']}/{n_ben} ({100 * s['fp'] / n_ben:.0f}%)" if n_ben else "-"
        if TOOLS[name].batch:  # one process for all cases: not comparable per case
            times = f"{_fmt_s(s['median'])} (in-process) | {_fmt_s(s['total'])} | n/a | n/a"
        else:
            times = (f"{_fmt_s(s['median'])} | {_fmt_s(s['total'])} "
                     f"| {_ratio(s['median'], base.get('median'))} "
                     f"| {_ratio(s['total'], base.get('total'))}")
        out.append(
            f"| {name} | {s['version']} | {det} | {fp} | {s['err_mal']}/{s['err_ben']} "
            f"| {s['skip']} | {times} |"
        )
    order = {t: i for i, t in enumerate(TOOLS)}
    corpus = sorted((r for r in records if r.get("bench") == "corpus"),
                    key=lambda r: order[r["tool"]])
    if corpus:
        tg = next((r["seconds"] for r in corpus if r["tool"] == "trainguard"), None)
        out += ["", "Whole corpus in one process per tool (as users scan a folder):", "",
                "| tool | args | files | seconds | vs trainguard |", "|---|---|---|---|---|"]
        for r in corpus:
            secs = _fmt_s(r["seconds"])
            if str(r.get("note", "")).startswith("timeout"):
                secs = f"> {secs} (timed out)"
            out.append(f"| {r['tool']} | {r.get('args', '')} | {r['files']} | "
                       f"{secs} | {_ratio(r['seconds'], tg)} |")
    big = sorted((r for r in records if r.get("bench") == "big"), key=lambda r: order[r["tool"]])
    if big:
        tg = next((r["seconds"] for r in big if r["tool"] == "trainguard"), None)
        out += ["", f"1 GiB torch checkpoint ({big[0]['bytes']:,} bytes, 128 float32 tensors), "
                "best of 3, warm page cache:", "",
                "| tool | seconds (best) | all runs | verdict | GB/s | vs trainguard |",
                "|---|---|---|---|---|---|"]
        for r in big:
            gbs = r["bytes"] / r["seconds"] / 1e9 if r["seconds"] else 0
            runs = ", ".join(_fmt_s(x) for x in r["runs"])
            out.append(f"| {r['tool']} | {_fmt_s(r['seconds'])} | {runs} | {r['verdict']} | "
                       f"{gbs:.1f} | {_ratio(r['seconds'], tg)} |")
    out += ["", *misses(cases)]
    return "\n".join(out) + "\n"


def misses(cases: list[dict[str, Any]]) -> Iterable[str]:
    """Lines naming every case trainguard missed or flagged wrongly, and who caught the misses."""
    by_case: dict[str, dict[str, dict[str, Any]]] = {}
    for r in cases:
        by_case.setdefault(r["case"], {})[r["tool"]] = r
    missed = [(c, t) for c, t in by_case.items()
              if "trainguard" in t and t["trainguard"]["kind"] == "malicious"
              and not t["trainguard"]["flagged"]]
    false = [(c, t) for c, t in by_case.items()
             if "trainguard" in t and t["trainguard"]["kind"] == "benign"
             and (t["trainguard"]["flagged"] or t["trainguard"]["error"])]
    yield f"trainguard missed {len(missed)} malicious case(s):"
    for c, t in missed:
        others = [n for n, r in t.items() if n != "trainguard" and r["flagged"]]
        yield (f"- `{c}` ({t['trainguard']['verdict']}: {t['trainguard']['note'] or '-'}); "
               f"caught by: {', '.join(others) or 'none'}")
    yield ""
    yield f"trainguard flagged (or errored on) {len(false)} benign case(s):"
    for c, t in false:
        yield f"- `{c}`: {t['trainguard']['note'] or t['trainguard']['verdict']}"
    others_only = [(c, t) for c, t in by_case.items()
                   if t.get("trainguard", {}).get("kind") == "malicious"
                   and t["trainguard"]["flagged"]
                   and not any(r["flagged"] for n, r in t.items() if n != "trainguard")]
    yield ""
    yield f"Malicious cases only trainguard detected: {len(others_only)}"


# --------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tools", default=",".join(TOOLS),
                    help="comma-separated subset of: " + ", ".join(TOOLS))
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case (120)")
    ap.add_argument("--jobs", type=int, default=2, help="trainguard -j on the whole corpus (2)")
    ap.add_argument("--cases", default="", help="only cases whose id contains this text")
    ap.add_argument("--no-big", action="store_true", help="skip the 1 GiB checkpoint")
    ap.add_argument("--no-corpus-run", action="store_true", help="skip the whole-corpus runs")
    ap.add_argument("--update", action="store_true",
                    help="replace only what this run measured in results/latest.jsonl (e.g. "
                         "re-run trainguard alone after a fix: --tools trainguard --update)")
    ap.add_argument("--summary-only", action="store_true",
                    help="re-print the tables from results/latest.jsonl, run nothing")
    args = ap.parse_args(argv)
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        ap.error(f"unknown tools: {', '.join(sorted(unknown))}")
    if "trainguard" not in tools:
        tools.insert(0, "trainguard")
    RESULTS.mkdir(exist_ok=True)
    latest = RESULTS / "latest.jsonl"

    if args.summary_only:
        records = [json.loads(ln) for ln in latest.read_text().splitlines() if ln.strip()]
        tools = [t for t in TOOLS if any(r.get("tool") == t for r in records)]
        print(summarise(records, tools))
        return 0

    manifest = CORPUS / "manifest.json"
    if not manifest.exists():
        print("no corpus: run `.venv/bin/python benchmarks/corpus.py` first", file=sys.stderr)
        return 2
    cases = [c for c in json.loads(manifest.read_text()) if args.cases in c["case"]]
    records: list[dict[str, Any]] = []
    started = dt.datetime.now(dt.timezone.utc)
    emit({"bench": "env", "date": started.isoformat(timespec="seconds"), **environment(),
          "timeout_s": args.timeout, "cases": len(cases)}, records)
    t0 = time.perf_counter()
    per_case(tools, cases, args.timeout, records)
    if not args.no_corpus_run and not args.cases:
        whole_corpus(tools, max(args.timeout, 600.0), args.jobs, records)
    if not args.no_big:
        from big_checkpoint import measure_big

        for r in measure_big(tools):
            emit(r, records)
    print(f"[bench] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    if args.update and latest.exists():
        old = [json.loads(ln) for ln in latest.read_text().splitlines() if ln.strip()]
        ran = {(r["bench"], r.get("tool"), r.get("case")) for r in records if "tool" in r}
        records = [r for r in old if (r.get("bench"), r.get("tool"), r.get("case")) not in ran
                   ] + records
        tools = [t for t in TOOLS if any(r.get("tool") == t for r in records)]
    tmp = latest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(latest)
    table = summarise(records, tools)
    md = RESULTS / "latest.md"
    md.write_text(f"Measured {started:%Y-%m-%d} on {records[0]['cpus']} cores "
                  f"(Python {records[0]['python']}).\n\n{table}")
    print("\n" + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
